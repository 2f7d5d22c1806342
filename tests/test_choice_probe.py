"""The swarm probe that feeds the source choice, on a real loopback swarm (libtorrent)."""

from __future__ import annotations

from pathlib import Path

from support.torrent_swarm import (
    Seeder,
    Tracker,
    loopback_settings,
    make_torrent,
    running_engine,
    write_files,
)

from acquired.sources.choice import Evidence, MirrorEvidence, choose_source
from acquired.sources.torrent import TorrentFile

A = "http://a.example/data.tar"


def test_probe_counts_seeds_reported_by_the_tracker(tmp_path: Path) -> None:
    tracker = Tracker()
    seeder = Seeder()
    try:
        write_files(tmp_path / "seed", {"p.bin": 200_000})
        torrent = make_torrent(tmp_path / "seed" / "p.bin", trackers=(tracker.announce_url,))
        handle = seeder.seed(torrent, tmp_path / "seed")
        ih = str(handle.info_hashes().v1)
        tracker.add_peer(ih, "127.0.0.1", seeder.port, seed=True)
        tracker.add_peer(ih, "127.0.0.1", 9, seed=False)  # a leecher that never answers
        (tmp_path / "p.torrent").write_bytes(torrent)
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, _):
            ev = engine.probe(TorrentFile(tmp_path / "p.torrent"), window=2.0)
            assert ev.seeds >= 1
            assert ev.peers >= 1
            assert ev.metadata and ev.rate is not None and ev.rate > 0  # it fetched meanwhile
            assert engine.keys() == []  # the probe leaves nothing behind
            assert not any((tmp_path / "state" / "probe").iterdir())
            d = choose_source(Evidence(ev, (MirrorEvidence(A, 1e6),)))
            assert d.source in ("torrent", "both")
        assert any(r.startswith("/announce") for r in tracker.requests)
    finally:
        seeder.close()
        tracker.close()

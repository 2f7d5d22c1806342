"""The swarm probe against a real libtorrent seeder known only from a peer hint (no
tracker, no DHT): it counts the seed, measures its rate, and the transfer that follows
adopts what the probe fetched."""

from __future__ import annotations

from pathlib import Path

from support.torrent_swarm import (
    Seeder,
    loopback_settings,
    make_torrent,
    running_engine,
    write_files,
)

from acquired.sources.torrent import TorrentFile, TorrentFinished, TorrentRequest

SIZE = 3_000_000


def _setup(tmp_path: Path, seeder: Seeder) -> tuple[TorrentFile, bytes]:
    data = write_files(tmp_path / "seed", {"h.bin": SIZE})["h.bin"]
    torrent = make_torrent(tmp_path / "seed" / "h.bin")
    seeder.seed(torrent, tmp_path / "seed")
    (tmp_path / "h.torrent").write_bytes(torrent)
    return TorrentFile(tmp_path / "h.torrent"), data


def test_probe_sees_a_seeder_given_only_as_a_peer_hint(tmp_path: Path) -> None:
    seeder = Seeder(upload_rate_limit=1_000_000)
    try:
        source, _ = _setup(tmp_path, seeder)
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, _):
            ev = engine.probe(source, window=8.0, peers=(seeder.endpoint,))
            assert ev.seeds == 1, ev
            assert ev.rate is not None and ev.rate > 0, ev
            assert engine.keys() == []
        # Nothing of the probe is left for the next start.
        assert not any((tmp_path / "state" / "probe").iterdir())
    finally:
        seeder.close()


def test_a_kept_probe_is_adopted_by_the_transfer(tmp_path: Path) -> None:
    seeder = Seeder()
    try:
        source, data = _setup(tmp_path, seeder)
        out = tmp_path / "out"
        request = TorrentRequest("job/h", source, out, files={"h.bin": out / "final.bin"})
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
            ev = engine.probe(source, window=8.0, peers=(seeder.endpoint,), keep=30.0)
            assert ev.seeds == 1, ev
            engine.add(request)  # no peer hint: only the probe's connection has the seed
            done = events.wait_for(TorrentFinished, timeout=30)
            assert done.files["h.bin"] == out / "final.bin"
            assert (out / "final.bin").read_bytes() == data
            assert engine.keys() == ["job/h"]
        assert not (out / "final.bin.part").exists()
        assert not any((tmp_path / "state" / "probe").iterdir())
    finally:
        seeder.close()


def test_a_dropped_probe_leaves_nothing(tmp_path: Path) -> None:
    seeder = Seeder(upload_rate_limit=500_000)
    try:
        source, _ = _setup(tmp_path, seeder)
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, _):
            engine.probe(source, window=3.0, peers=(seeder.endpoint,), keep=30.0)
            engine.drop_probe(source)
            assert engine.facts().torrents == 0
            assert engine.session.get_torrents() == []
    finally:
        seeder.close()

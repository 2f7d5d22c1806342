"""The source-choice policy (pure) and the swarm probe that feeds it (real libtorrent)."""

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

from acquired.sources.choice import (
    Evidence,
    MirrorEvidence,
    Policy,
    RunningState,
    SwarmEvidence,
    choose_source,
    format_rate,
    reevaluate,
)
from acquired.sources.torrent import TorrentFile

A = "http://a.example/data.tar"
B = "http://b.example/data.tar"


def test_strong_swarm_and_a_mirror_use_both() -> None:
    d = choose_source(
        Evidence(
            SwarmEvidence(seeds=14, peers=20, rate=38e6),
            (MirrorEvidence(A, 9e6, label="mirror A"),),
        )
    )
    assert d.source == "both"
    assert d.web_seeds == (A,)
    assert (
        d.reason
        == "torrent: 14 seeds, 20 peers, 38 MB/s; mirror A 9.0 MB/s; chose torrent+web seed"
    )
    assert d.expected_rate > 38e6


def test_both_needs_a_single_file_torrent() -> None:
    d = choose_source(
        Evidence(
            SwarmEvidence(seeds=14, peers=0, rate=38e6),
            (MirrorEvidence(A, 9e6),),
            web_seed_capable=False,
        )
    )
    assert d.source == "torrent"
    assert d.web_seeds == ()
    assert d.reason.endswith("chose torrent")


def test_fast_mirrors_beat_a_thin_swarm() -> None:
    d = choose_source(
        Evidence(
            SwarmEvidence(seeds=1, peers=0, rate=200e3),
            (MirrorEvidence(A, 50e6), MirrorEvidence(B, 40e6)),
        )
    )
    assert d.source == "http"
    assert "mirror a.example 50 MB/s" in d.reason and d.reason.endswith("chose http")


def test_empty_swarm_goes_to_mirrors_and_no_mirror_goes_to_torrent() -> None:
    empty = SwarmEvidence(seeds=0, peers=0)
    assert choose_source(Evidence(empty, (MirrorEvidence(A, 1e6),))).source == "http"
    assert choose_source(Evidence(empty, ())).source == "torrent"
    failed = (MirrorEvidence(A, None, ok=False),)
    d = choose_source(Evidence(SwarmEvidence(seeds=3, peers=0), failed))
    assert d.source == "torrent" and "failed" in d.reason


def test_no_torrent_means_http() -> None:
    d = choose_source(Evidence(None, (MirrorEvidence(A, 2e6),)))
    assert d.source == "http" and "no torrent" in d.reason


def test_unmeasured_swarm_uses_the_policy_assumptions() -> None:
    policy = Policy(assumed_seed_rate=1e6, assumed_peer_rate=0.0, both_gain=10.0)
    d = choose_source(Evidence(SwarmEvidence(seeds=30, peers=5), (MirrorEvidence(A, 5e6),)), policy)
    assert d.source == "torrent"
    assert "~30 MB/s expected" in d.reason


def test_magnet_without_metadata_is_not_a_source() -> None:
    d = choose_source(
        Evidence(
            SwarmEvidence(seeds=0, peers=0, metadata=False, window=10), (MirrorEvidence(A, 1e6),)
        )
    )
    assert d.source == "http" and "no metadata after 10 s" in d.reason


def test_stalled_torrent_falls_back_to_mirrors() -> None:
    state = RunningState(
        current="torrent",
        torrent_available=True,
        mirrors=(MirrorEvidence(A, 3e6),),
        swarm=SwarmEvidence(seeds=0, peers=2),
        seconds_without_data=125.0,
        stall_window=120.0,
    )
    d = reevaluate(state)
    assert d is not None and d.source == "http"
    assert d.reason.startswith("torrent: no data for 125 s (0 seeds, 2 peers)")
    assert d.reason.endswith("falling back to http")
    # Within the window nothing changes; without a working mirror neither.
    assert (
        reevaluate(
            RunningState("torrent", True, (MirrorEvidence(A, 3e6),), seconds_without_data=30)
        )
        is None
    )
    assert (
        reevaluate(
            RunningState("both", True, (MirrorEvidence(A, ok=False),), seconds_without_data=500)
        )
        is None
    )


def test_failed_torrent_falls_back_and_failed_mirrors_fall_back_to_torrent() -> None:
    d = reevaluate(
        RunningState("both", True, (MirrorEvidence(A),), torrent_error="torrent.metadata_timeout")
    )
    assert d is not None and d.source == "http" and "torrent.metadata_timeout" in d.reason
    d = reevaluate(
        RunningState(
            "http",
            True,
            (MirrorEvidence(A, ok=False),),
            swarm=SwarmEvidence(4, 1),
            mirrors_failed=True,
        )
    )
    assert d is not None and d.source == "torrent" and d.reason.startswith("all mirrors failed")
    assert reevaluate(RunningState("http", False, (), mirrors_failed=True)) is None
    assert reevaluate(RunningState("http", True, (MirrorEvidence(A),))) is None


def test_format_rate() -> None:
    assert format_rate(38e6) == "38 MB/s"
    assert format_rate(9e6) == "9.0 MB/s"
    assert format_rate(20e3) == "20 kB/s"


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

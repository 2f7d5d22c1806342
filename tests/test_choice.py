"""The source-choice policy: pure functions over measured evidence; no libtorrent needed.

The swarm probe that feeds it runs real libtorrent in test_choice_probe.py.
"""

from __future__ import annotations

import pytest

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

A = "http://a.example/data.tar"
B = "http://b.example/data.tar"


EMPTY = SwarmEvidence(seeds=0, peers=0)

# name, evidence, policy (None: default), source chosen, web seeds, what the reason shows
CHOICES: list[tuple[str, Evidence, Policy | None, str, tuple[str, ...], tuple[str, ...]]] = [
    (
        "strong swarm and a mirror: both",
        Evidence(
            SwarmEvidence(seeds=14, peers=20, rate=38e6),
            (MirrorEvidence(A, 9e6, label="mirror A"),),
        ),
        None,
        "both",
        (A,),
        ("torrent: 14 seeds, 20 peers, 38 MB/s; mirror A 9.0 MB/s; chose torrent+web seed",),
    ),
    (
        "both needs a single-file torrent",
        Evidence(
            SwarmEvidence(seeds=14, peers=0, rate=38e6),
            (MirrorEvidence(A, 9e6),),
            web_seed_capable=False,
        ),
        None,
        "torrent",
        (),
        ("chose torrent",),
    ),
    (
        "fast mirrors beat a thin swarm",
        Evidence(
            SwarmEvidence(seeds=1, peers=0, rate=200e3),
            (MirrorEvidence(A, 50e6), MirrorEvidence(B, 40e6)),
        ),
        None,
        "http",
        (),
        ("mirror a.example 50 MB/s", "chose http"),
    ),
    ("empty swarm: mirrors", Evidence(EMPTY, (MirrorEvidence(A, 1e6),)), None, "http", (), ()),
    ("no mirror: the torrent", Evidence(EMPTY, ()), None, "torrent", (), ()),
    (
        "failed mirrors: the torrent",
        Evidence(SwarmEvidence(seeds=3, peers=0), (MirrorEvidence(A, None, ok=False),)),
        None,
        "torrent",
        (),
        ("failed",),
    ),
    (
        "no torrent: http",
        Evidence(None, (MirrorEvidence(A, 2e6),)),
        None,
        "http",
        (),
        ("no torrent",),
    ),
    (
        "an unmeasured swarm is judged by the policy's assumptions",
        Evidence(SwarmEvidence(seeds=30, peers=5), (MirrorEvidence(A, 5e6),)),
        Policy(assumed_seed_rate=1e6, assumed_peer_rate=0.0, both_gain=10.0),
        "torrent",
        (),
        ("~30 MB/s expected",),
    ),
    (
        "a magnet without metadata is not a source",
        Evidence(
            SwarmEvidence(seeds=0, peers=0, metadata=False, window=10), (MirrorEvidence(A, 1e6),)
        ),
        None,
        "http",
        (),
        ("no metadata after 10 s",),
    ),
]


@pytest.mark.parametrize(
    ("evidence", "policy", "source", "web_seeds", "shown"),
    [pytest.param(*row[1:], id=row[0]) for row in CHOICES],
)
def test_choose_source(
    evidence: Evidence,
    policy: Policy | None,
    source: str,
    web_seeds: tuple[str, ...],
    shown: tuple[str, ...],
) -> None:
    d = choose_source(evidence, policy)
    assert d.source == source
    assert d.reason.endswith({"both": "chose torrent+web seed"}.get(source, f"chose {source}"))
    assert d.web_seeds == web_seeds
    for text in shown:
        assert text in d.reason


def test_both_expects_more_than_the_swarm_alone() -> None:
    d = choose_source(CHOICES[0][1])
    assert d.expected_rate > 38e6
    assert d.reason.endswith("chose torrent+web seed")


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

"""Seeding records across engine restarts: the policy travels with the resume data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.torrent_swarm import (
    Seeder,
    loopback_settings,
    make_torrent,
    running_engine,
    wait_until,
    write_files,
)

from acquired.sources.torrent import TorrentFile, TorrentFinished, TorrentRequest
from acquired.sources.torrent.seeding import policy_met, record_path


@pytest.mark.parametrize(
    ("ratio", "seconds", "seed_ratio", "seed_time", "met"),
    [
        (0.5, 10, 1.0, None, False),
        (1.0, 10, 1.0, None, True),
        (0.0, 3599, None, 3600, False),
        (0.0, 3600, None, 3600, True),
        (0.2, 4000, 1.0, 3600, True),  # whichever comes first
        (9.0, 9e9, None, None, False),  # no limit: seed for ever
        (0.0, 0, 0.0, None, True),  # 0 = do not seed
    ],
)
def test_policy_met(
    ratio: float, seconds: float, seed_ratio: float | None, seed_time: float | None, met: bool
) -> None:
    assert policy_met(ratio, seconds, seed_ratio, seed_time) is met


def _finished(tmp_path: Path, settings_kw: dict[str, object]) -> Path:
    """Fetch one file with a first engine; returns its state dir (engine stopped)."""
    write_files(tmp_path / "seed", {"s.bin": 300_000})
    torrent = make_torrent(tmp_path / "seed" / "s.bin")
    (tmp_path / "s.torrent").write_bytes(torrent)
    seeder = Seeder()
    state = tmp_path / "state"
    try:
        seeder.seed(torrent, tmp_path / "seed")
        request = TorrentRequest(
            "job/s", TorrentFile(tmp_path / "s.torrent"), tmp_path / "out", peers=(seeder.endpoint,)
        )
        with running_engine(loopback_settings(**settings_kw), state) as (engine, events):
            engine.add(request)
            events.wait_for(TorrentFinished)
    finally:
        seeder.close()
    return state


def test_restored_under_the_recorded_policy(tmp_path: Path) -> None:
    state = _finished(tmp_path, {"seed_ratio": 3.0, "seed_time": None})
    record = json.loads(record_path(state, "job/s").read_text())
    assert (record["seed_ratio"], record["seed_time"]) == (3.0, None)
    # The next start runs with another default; the torrent keeps the policy it had.
    with running_engine(loopback_settings(seed_ratio=0.0), state) as (engine, _):
        assert engine.restore_seeding() == ["job/s"]
        wait_until(lambda: engine.status("job/s").phase == "seeding")
        assert engine.facts().torrents == 1


def test_not_restored_when_the_policy_is_met_or_the_job_is_gone(tmp_path: Path) -> None:
    state = _finished(tmp_path, {"seed_ratio": None, "seed_time": 3600.0})
    path = record_path(state, "job/s")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "seeded": 3600.0}))
    with running_engine(loopback_settings(), state) as (engine, _):
        assert engine.restore_seeding() == []
    assert not path.exists()

    state = _finished(tmp_path / "again", {"seed_ratio": None, "seed_time": None})
    with running_engine(loopback_settings(), state) as (engine, _):
        assert engine.restore_seeding(accept=lambda key: False) == []
        assert engine.facts().torrents == 0
    assert not record_path(state, "job/s").exists()

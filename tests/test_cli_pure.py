"""acquirectl's decisions without a daemon: what a do-nothing command says, how `add`
reads its arguments, and the lock and nesting helpers."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from acquired.daemon.commands.add import BadAddArgument, build_manifest, classify, job_name
from acquired.daemon.commands.jobs import explain
from acquired.daemon.control import nesting_depth
from acquired.daemon.lock import StateDirLocked, StateLock


@pytest.mark.parametrize(
    ("cmd", "state", "message", "hint"),
    [
        ("resume", "cancelled", "nothing to resume: job 'j' is cancelled", "acquirectl retry j"),
        ("resume", "failed", "is failed", "acquirectl retry j"),
        ("resume", "fetching", "is fetching, not paused", "acquirectl show j"),
        ("pause", "paused", "already paused", "acquirectl resume j"),
        ("pause", "done", "nothing to pause: job 'j' is done", "acquirectl show j"),
        ("cancel", "done", "is done already", "acquirectl forget j"),
        ("retry", "paused", "is paused, not failed", "acquirectl resume j"),
        ("retry", "done", "no failed or cancelled file", "acquirectl show j"),
    ],
)
def test_a_command_that_does_nothing_says_why(
    cmd: str, state: str, message: str, hint: str
) -> None:
    said, points_to = explain(cmd, "j", state)
    assert message in said
    assert hint in points_to


def _options(**values: object) -> argparse.Namespace:
    base = {k: None for k in ("dest", "path", "name", "sha256", "md5", "unpack")}
    return argparse.Namespace(**{**base, **values})


def test_add_sorts_its_arguments() -> None:
    found = classify(["https://a/x/data.tar.gz", "http://b/data.tar.gz", "ab" * 20])
    assert found.mirrors == ["https://a/x/data.tar.gz", "http://b/data.tar.gz"]
    assert found.torrent == {"academic_torrents": "ab" * 20}
    manifest = build_manifest(found, _options(md5="F" * 32))
    assert manifest["name"] == "data" and manifest["destination"] == "data"
    assert manifest["files"] == [
        {
            "path": "data.tar.gz",
            "mirrors": found.mirrors,
            "torrent": {"academic_torrents": "ab" * 20},
            "md5": "f" * 32,
        }
    ]
    page = classify(["https://academictorrents.com/details/" + "CD" * 20])
    assert page.torrent == {"academic_torrents": "CD" * 20}
    assert classify(["https://h/x.torrent"]).torrent == {"url": "https://h/x.torrent"}


@pytest.mark.parametrize(
    "args",
    [["ftp://h/x"], ["magnet:?xt=urn:btih:" + "a" * 40, "ab" * 20], ["/no/such/file"]],
)
def test_add_refuses_what_it_cannot_fetch(args: list[str]) -> None:
    with pytest.raises(BadAddArgument):
        classify(args)


@pytest.mark.parametrize(
    ("name", "job"),
    [("cifar-10-python.tar.gz", "cifar-10-python"), ("a b(1).zip", "a-b-1"), ("..", "download")],
)
def test_job_names_from_file_names(name: str, job: str) -> None:
    assert job_name(name) == job


def test_nesting_depth_is_counted_without_recursion() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert nesting_depth(deep) == 100_001
    assert nesting_depth({"cmd": "x", "a": [1, {"b": []}]}) == 4


def test_the_state_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    lock = StateLock.acquire(tmp_path)
    with pytest.raises(StateDirLocked, match=r"in use by another acquired \(pid \d+\)"):
        StateLock.acquire(tmp_path)
    lock.release()
    StateLock.acquire(tmp_path).release()

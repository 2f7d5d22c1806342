"""``SmallFiles`` (the CurlMulti small-file engine) against the loopback server, and its
pure parts: which files go to it, what a status or a curl error means."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from support.http_server import Fault, HttpTestServer

from acquired.common.safepath import PathEscapes
from acquired.daemon.batchlane import BATCH_FILE, batchable
from acquired.sources.http import HttpOptions
from acquired.sources.http.batch import (
    BatchItem,
    BatchOutcome,
    SmallFiles,
    curl_error,
    status_error,
)


@pytest.mark.parametrize(
    ("size", "mirrors", "resume", "expected"),
    [
        (1000, 1, None, True),
        (BATCH_FILE, 2, None, True),
        (BATCH_FILE + 1, 1, None, False),  # larger: progress and resume on its own path
        (None, 1, None, False),  # unknown size: it may be large
        (1000, 0, None, False),  # no mirror (a torrent-only file)
        (1000, 1, {"offset": 10}, False),  # a checkpoint to resume from
    ],
)
def test_which_files_go_to_the_small_file_runner(
    size: int | None, mirrors: int, resume: dict[str, int] | None, expected: bool
) -> None:
    assert batchable(size, mirrors, resume) is expected


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (404, "http.not_found", False),
        (410, "http.not_found", False),
        (403, "http.forbidden", False),
        (401, "http.forbidden", False),
        (429, "http.server_busy", True),
        (503, "http.server_busy", True),
        (500, "http.server_error", True),
        (502, "http.server_error", True),
        (206, "http.status", False),
        (304, "http.status", False),
    ],
)
def test_what_a_status_means(status: int, code: str, retryable: bool) -> None:
    err = status_error(status, "http://h/x")
    assert (err.code, err.retryable) == (code, retryable)
    assert err.details["url"] == "http://h/x"


@pytest.mark.parametrize(
    ("errno", "code", "words"),
    [
        (7, "http.connection_failed", "h: connection refused"),
        (56, "http.connection_failed", "h: connection reset"),
        (18, "http.connection_failed", "h: connection reset"),
        (6, "http.connection_failed", "h: name not found"),
        (28, "http.stalled", "h: timed out"),
        (47, "http.unsupported_url", "redirect refused"),
    ],
)
def test_what_a_curl_error_means(errno: int, code: str, words: str) -> None:
    err = curl_error(errno, "library text", "http://h/x", "h")
    assert err.code == code
    assert words in str(err)
    assert err.details["library"] == "library text"


def fetch_all(items: list[BatchItem], cancel: set[int] = frozenset()) -> dict[int, BatchOutcome]:  # type: ignore[assignment]
    got: dict[int, BatchOutcome] = {}
    finished = threading.Event()

    def on_done(outcomes: list[BatchOutcome]) -> None:
        got.update((o.key, o) for o in outcomes)
        if len(got) == len(items):
            finished.set()

    engine = SmallFiles(HttpOptions(backoff_base=0.05), on_done)
    engine.submit(items)
    for key in cancel:
        engine.cancel(key)
    thread = threading.Thread(target=engine.run)
    thread.start()
    try:
        assert finished.wait(60)
    finally:
        engine.close()
        thread.join(30)
    return got


def item(key: int, url: str, dest: Path, data: bytes, **kw: object) -> BatchItem:
    values: dict[str, object] = {
        "key": key,
        "urls": (url,),
        "dest": dest,
        "root": dest.parent,
        "size": len(data),
        "digests": {"sha256": hashlib.sha256(data).hexdigest()},
    }
    values.update(kw)
    return BatchItem(**values)  # type: ignore[arg-type]


def test_mirrors_in_turn_oversize_and_a_planted_link(tmp_path: Path) -> None:
    data = {i: bytes([i]) * (1000 + i) for i in range(6)}
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    with HttpTestServer() as server:
        urls = {i: server.add(f"/f{i}", body) for i, body in data.items()}
        server.add("/long", data[2] + b"extra")
        items = [
            item(0, urls[0], root / "f0", data[0]),
            # The first mirror is gone: the second serves it.
            item(1, server.url("/gone"), root / "f1", data[1], urls=(server.url("/gone"), urls[1])),
            # More bytes than the manifest's size: refused, nothing in place.
            item(2, server.url("/long"), root / "f2", data[2]),
            # A folder on the way is a link out of the root: this file alone is refused.
            item(3, urls[3], root / "linked" / "f3", data[3], root=root),
            item(4, urls[4], root / "sub" / "f4", data[4], root=root),
        ]
        server.fault("/f4", Fault(status=500), times=1)  # tried again on the same mirror
        got = fetch_all(items)
    assert got[0].error is None and (root / "f0").read_bytes() == data[0]
    assert got[1].error is None and (root / "f1").read_bytes() == data[1]
    assert got[2].error is not None and got[2].error.code == "http.size_mismatch"  # type: ignore[attr-defined]
    assert not (root / "f2").exists()
    assert isinstance(got[3].error, PathEscapes)
    assert list(outside.iterdir()) == []
    assert got[4].error is None and (root / "sub" / "f4").read_bytes() == data[4]
    assert got[4].result is not None
    assert got[4].result.digests["sha256"] == hashlib.sha256(data[4]).hexdigest()
    assert [p for p in root.rglob("*.part")] == []


def test_a_cancelled_file_ends_alone(tmp_path: Path) -> None:
    data = {i: bytes([i]) * 3000 for i in range(4)}
    with HttpTestServer() as server:
        items = [item(i, server.add(f"/c{i}", b), tmp_path / f"c{i}", b) for i, b in data.items()]
        got = fetch_all(items, cancel={2})
    assert got[2].error is not None and got[2].error.code == "http.cancelled"  # type: ignore[attr-defined]
    assert not (tmp_path / "c2").exists()
    for i in (0, 1, 3):
        assert (tmp_path / f"c{i}").read_bytes() == data[i]


def test_an_unknown_digest_algorithm_fails_that_file_alone(tmp_path: Path) -> None:
    good, odd = b"g" * 2000, b"o" * 2000
    with HttpTestServer() as server:
        items = [
            item(0, server.add("/g", good), tmp_path / "g", good),
            item(1, server.add("/o", odd), tmp_path / "o", odd, digests={"crc99": "00"}),
        ]
        got = fetch_all(items)
    assert got[0].error is None and (tmp_path / "g").read_bytes() == good
    assert got[1].error is not None and "crc99" in str(got[1].error)
    assert not (tmp_path / "o").exists()


def test_a_stale_part_is_written_over_and_a_link_at_the_part_refused(tmp_path: Path) -> None:
    data = {i: bytes([65 + i]) * (2000 + i) for i in range(2)}
    outside = tmp_path / "outside"
    outside.write_bytes(b"not ours")
    root = tmp_path / "root"
    root.mkdir()
    # Left by an earlier try, longer than the file: nothing of it may remain.
    (root / "f0.part").write_bytes(b"x" * 10_000)
    (root / "f1.part").symlink_to(outside)
    with HttpTestServer() as server:
        urls = {i: server.add(f"/f{i}", body) for i, body in data.items()}
        got = fetch_all([item(i, urls[i], root / f"f{i}", data[i], root=root) for i in data])
    assert got[0].error is None and (root / "f0").read_bytes() == data[0]
    assert isinstance(got[1].error, PathEscapes)
    assert outside.read_bytes() == b"not ours"
    assert not (root / "f1").exists()

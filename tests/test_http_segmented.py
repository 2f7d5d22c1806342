"""Segmented HttpDownload: several connections and mirrors, faults, resume, SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http_engine import Background, Events, download, fast_options, request_for, sha256
from support.http_server import Blob, Fault, HttpTestServer, ServerPool, payload, server_pool

from acquired.sources.http import (
    Checkpoint,
    DigestMismatch,
    DiskFull,
    DownloadCancelled,
    HttpDownload,
    HttpOptions,
    MirrorDropped,
    RateLimiter,
    Restarted,
    Retrying,
)

MiB = 1 << 20
SIZE = 12 * MiB + 12345
DATA = payload(SIZE, seed=1)
OTHER = payload(SIZE, seed=2)  # another version, same size
ROOT = Path(__file__).resolve().parents[1]


def seg(**overrides: object) -> HttpOptions:
    values: dict[str, object] = {"connections": 4}
    values.update(overrides)
    return fast_options(**values)


@pytest.fixture
def pool() -> Iterator[ServerPool]:
    with server_pool() as p:
        yield p


def mirrors(pool: ServerPool, count: int, data: bytes = DATA) -> list[HttpTestServer]:
    return pool.mirrors(count, "/f", Blob.of(data, mtime=1_700_000_000))


def test_segmented_download_uses_several_connections(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(rate=6 * MiB), times=None)
    events = Events()
    result = download(request_for(s.url("/f"), tmp_path / "f", DATA), seg(), events)
    assert (tmp_path / "f").read_bytes() == DATA
    assert not (tmp_path / "f.part").exists()
    assert result.digests == {"sha256": sha256(DATA)}
    reqs = s.requests_for("/f")
    assert reqs[0].range == "bytes=0-4194303"  # the probe: one chunk
    assert all(r.range and r.range.startswith("bytes=") and "-" in r.range for r in reqs)
    assert all(not r.range.endswith("-") for r in reqs if r.range)  # always closed ranges
    assert s.max_concurrent > 1
    assert s.bytes_served("/f") <= SIZE * 1.1


def test_faster_mirror_serves_more(pool: ServerPool, tmp_path: Path) -> None:
    slow, fast = mirrors(pool, 2)
    slow.fault("/f", Fault(rate=1 * MiB), times=None)
    fast.fault("/f", Fault(rate=8 * MiB), times=None)
    size = 24 * MiB
    data = payload(size, seed=5)
    for s in (slow, fast):
        s.add("/f", Blob.of(data, mtime=1_700_000_000))
    download(request_for([slow.url("/f"), fast.url("/f")], tmp_path / "f", data), seg())
    assert (tmp_path / "f").read_bytes() == data
    assert slow.bytes_served("/f") > 0
    assert fast.bytes_served("/f") > 2 * slow.bytes_served("/f")


def test_stalling_mirror_loses_its_ranges(pool: ServerPool, tmp_path: Path) -> None:
    stalling, good = mirrors(pool, 2)
    stalling.fault("/f", Fault(stall_after=256 * 1024), times=None)
    good.fault("/f", Fault(rate=4 * MiB), times=None)
    events = Events()
    download(
        request_for([stalling.url("/f"), good.url("/f")], tmp_path / "f", DATA),
        seg(min_speed=64 * 1024, min_speed_window=1.0),
        events,
    )
    assert (tmp_path / "f").read_bytes() == DATA
    stalled = [r for r in events.of(Retrying) if r.url == stalling.url("/f")]
    assert stalled and all("below" in r.reason for r in stalled)


def test_mirror_with_another_version_is_dropped(pool: ServerPool, tmp_path: Path) -> None:
    good, other = mirrors(pool, 2)
    other.add("/f", OTHER)  # other bytes, other ETag and Last-Modified
    events = Events()
    download(request_for([good.url("/f"), other.url("/f")], tmp_path / "f", DATA), seg(), events)
    assert (tmp_path / "f").read_bytes() == DATA  # not one byte of the other version
    dropped = events.of(MirrorDropped)
    assert [(d.url, d.code) for d in dropped] == [(other.url("/f"), "http.version_mismatch")]


def test_wrong_reference_version_is_found_by_the_digest(pool: ServerPool, tmp_path: Path) -> None:
    other, good = mirrors(pool, 2)
    other.add("/f", OTHER)
    events = Events()
    download(request_for([other.url("/f"), good.url("/f")], tmp_path / "f", DATA), seg(), events)
    assert (tmp_path / "f").read_bytes() == DATA
    codes = {(d.url, d.code) for d in events.of(MirrorDropped)}
    assert (other.url("/f"), "verify.digest_mismatch") in codes


@pytest.mark.parametrize("order", ["no-range-first", "no-range-second"])
def test_mirror_answering_200_to_ranges_is_dropped(
    pool: ServerPool, tmp_path: Path, order: str
) -> None:
    no_range, good = mirrors(pool, 2)
    no_range.fault("/f", Fault(no_range=True), times=None)
    urls = [no_range.url("/f"), good.url("/f")]
    if order == "no-range-second":
        urls.reverse()
    events = Events()
    download(request_for(urls, tmp_path / "f", DATA), seg(), events)
    assert (tmp_path / "f").read_bytes() == DATA
    assert [(d.url, d.code) for d in events.of(MirrorDropped)] == [
        (no_range.url("/f"), "http.no_range_support")
    ]
    assert good.max_concurrent > 1 or len(good.requests_for("/f")) > 1


def test_single_server_without_ranges_falls_back_to_one_stream(
    pool: ServerPool, tmp_path: Path
) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(no_range=True), times=None)
    events = Events()
    download(request_for(s.url("/f"), tmp_path / "f", DATA), seg(), events)
    assert (tmp_path / "f").read_bytes() == DATA
    assert len(s.requests_for("/f")) == 1  # the probe's answer became the stream
    assert not events.of(MirrorDropped)


def test_wrong_content_range_is_never_written(pool: ServerPool, tmp_path: Path) -> None:
    shifted, good = mirrors(pool, 2)
    shifted.fault("/f", Fault(range_shift=4096), times=None)
    good.fault("/f", Fault(rate=3 * MiB), times=None)
    events = Events()
    download(
        request_for([shifted.url("/f"), good.url("/f")], tmp_path / "f", DATA),
        seg(max_tries=2),
        events,
    )
    assert (tmp_path / "f").read_bytes() == DATA
    bad = [r.reason for r in events.of(Retrying) if r.url == shifted.url("/f")]
    assert bad and all("Content-Range" in reason for reason in bad)
    # After failing, the mirror is dropped or demoted: the good one served the file.
    assert good.bytes_served("/f") >= SIZE - 4 * MiB
    assert all(d.code == "http.content_range_mismatch" for d in events.of(MirrorDropped))


def test_503_with_retry_after(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(status=503, retry_after="1"), times=2)
    events = Events()
    download(request_for(s.url("/f"), tmp_path / "f", DATA), seg(), events)
    assert (tmp_path / "f").read_bytes() == DATA
    assert [r.delay for r in events.of(Retrying)] == [1.0, 1.0]


def test_resets_mid_range_are_resumed_not_refetched(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(reset_after=700_000), times=6)
    download(request_for(s.url("/f"), tmp_path / "f", DATA), seg())
    assert (tmp_path / "f").read_bytes() == DATA
    # Cut connections lose at most what was in flight; written bytes are kept.
    assert s.bytes_served("/f") <= SIZE + 6 * 700_000


def test_reference_mirror_changing_mid_download_restarts(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(), times=2)  # the first two requests see the old version
    s.fault("/f", Fault(version=Blob.of(OTHER)), times=None)
    events = Events()
    download(request_for(s.url("/f"), tmp_path / "f", OTHER), seg(), events)
    assert (tmp_path / "f").read_bytes() == OTHER
    (restart,) = events.of(Restarted)
    assert "ETag changed" in restart.reason


def test_several_mirrors_with_corrupt_data_finds_the_culprit(
    pool: ServerPool, tmp_path: Path
) -> None:
    good, corrupt = mirrors(pool, 2)
    blob = good.blob("/f")
    bad = bytearray(DATA)
    bad[SIZE // 2] ^= 0xFF
    corrupt.fault(
        "/f",
        Fault(version=Blob(bytes(bad), etag=blob.etag, last_modified=blob.last_modified)),
        times=None,
    )
    events = Events()
    download(request_for([good.url("/f"), corrupt.url("/f")], tmp_path / "f", DATA), seg(), events)
    assert (tmp_path / "f").read_bytes() == DATA
    assert {d.url for d in events.of(MirrorDropped)} <= {corrupt.url("/f")}


def test_all_mirrors_corrupt_raises_digest_mismatch(pool: ServerPool, tmp_path: Path) -> None:
    a, b = mirrors(pool, 2, data=OTHER)
    events = Events()
    with pytest.raises(DigestMismatch) as info:
        download(request_for([a.url("/f"), b.url("/f")], tmp_path / "f", DATA), seg(), events)
    assert info.value.details["expected"] == sha256(DATA)
    assert info.value.details["actual"] == sha256(OTHER)
    assert not (tmp_path / "f.part").exists()
    state = events.last_state()
    assert state is not None and state["done"] == []


def test_per_host_connection_cap(pool: ServerPool, tmp_path: Path) -> None:
    s = pool.new()
    blob = Blob.of(DATA)
    s.add("/a", blob)
    s.add("/b", blob)
    s.fault("/a", Fault(rate=4 * MiB), times=None)
    s.fault("/b", Fault(rate=4 * MiB), times=None)
    download(
        request_for([s.url("/a"), s.url("/b")], tmp_path / "f", DATA),
        seg(connections=8, per_host_connections=2),
    )
    assert (tmp_path / "f").read_bytes() == DATA
    assert s.max_concurrent <= 2


def test_rate_limiters_see_every_byte(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)

    class Counting(RateLimiter):
        def __init__(self) -> None:
            super().__init__(None)
            self.seen = 0
            self.lock = threading.Lock()

        def reserve(self, amount: int) -> float:
            with self.lock:
                self.seen += amount
            return super().reserve(amount)

    global_limit, job_limit = Counting(), Counting()
    download(
        request_for(s.url("/f"), tmp_path / "f", DATA), seg(limiters=(global_limit, job_limit))
    )
    assert global_limit.seen == job_limit.seen == SIZE


def test_changed_file_on_resume_restarts(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(rate=4 * MiB), times=None)
    events = Events()
    dest = tmp_path / "f"
    dl = HttpDownload(request_for(s.url("/f"), dest, DATA), seg(checkpoint_bytes=MiB), events)
    bg = Background(dl)
    _wait_for(lambda: any(c.state["done"] for c in events.of(Checkpoint)))
    dl.cancel()
    bg.join()
    assert isinstance(bg.error, DownloadCancelled)
    state = events.last_state()
    assert state is not None and state["done"]
    s.clear_faults()
    s.add("/f", OTHER)
    events2 = Events()
    download(request_for(s.url("/f"), dest, OTHER, resume=state), seg(), events2)
    assert dest.read_bytes() == OTHER
    assert events2.of(Restarted)


def _wait_for(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    assert cond(), "condition not reached (deadlock guard)"  # type: ignore[operator]


def test_cancel_then_resume_refetches_little(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(rate=3 * MiB), times=None)
    events = Events()
    dest = tmp_path / "f"
    dl = HttpDownload(request_for(s.url("/f"), dest, DATA), seg(checkpoint_bytes=MiB), events)
    bg = Background(dl)
    _wait_for(lambda: sum(e - b for b, e in (events.last_state() or {"done": []})["done"]) > MiB)
    dl.cancel()
    bg.join()
    assert isinstance(bg.error, DownloadCancelled)
    state = events.last_state()
    assert state is not None
    done = sum(e - b for b, e in state["done"])
    assert 0 < done < SIZE
    s.clear_faults()
    s.reset_stats()
    download(request_for(s.url("/f"), dest, DATA, resume=state), seg())
    assert dest.read_bytes() == DATA
    # Only what the state did not vouch for comes again (plus the tail of closed
    # connections: at most one read per connection).
    assert s.bytes_served("/f") <= SIZE - done + 4 * MiB


@pytest.mark.parametrize(
    "fault",
    [Fault(stall_headers=True), Fault(stall_after=300_000)],
    ids=["no-headers", "mid-body"],
)
def test_cancel_is_prompt_with_silent_servers(
    pool: ServerPool, tmp_path: Path, fault: Fault
) -> None:
    a, b = mirrors(pool, 2)
    for s in (a, b):
        s.fault("/f", fault, times=None)
    events = Events()
    dl = HttpDownload(
        request_for([a.url("/f"), b.url("/f")], tmp_path / "f", DATA),
        seg(read_timeout=120, min_speed=0),
        events,
    )
    bg = Background(dl)
    _wait_for(lambda: a.requests_for("/f") or b.requests_for("/f"))
    time.sleep(0.3)
    dl.cancel()
    bg.join(timeout=10)  # read_timeout is 120 s: only the abort ends it this soon
    assert isinstance(bg.error, DownloadCancelled)
    assert events.last_state() is not None


def test_checkpoints_claim_only_correct_flushed_bytes(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(rate=4 * MiB), times=None)
    part = tmp_path / "f.part"
    checked: list[int] = []

    def on_event(event: object) -> None:
        if isinstance(event, Checkpoint) and event.state["done"]:
            with part.open("rb") as f:
                for start, end in event.state["done"]:
                    f.seek(start)
                    assert f.read(end - start) == DATA[start:end]
            checked.append(len(event.state["done"]))

    HttpDownload(
        request_for(s.url("/f"), tmp_path / "f", DATA), seg(checkpoint_bytes=512 * 1024), on_event
    ).run()
    assert len(checked) >= 2


def test_disk_full_when_preallocating(pool: ServerPool, tmp_path: Path) -> None:
    (s,) = mirrors(pool, 1)
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a small tmpfs (needs root)")
    try:
        events = Events()
        with pytest.raises(DiskFull) as info:
            download(request_for(s.url("/f"), mount / "f", DATA), seg(), events)
        assert info.value.code == "disk.full"
        assert events.last_state() is not None
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _child_spec(tmp_path: Path, url: str, **options: object) -> Path:
    spec = {
        "urls": [url],
        "dest": str(tmp_path / "f"),
        "state": str(tmp_path / "state.json"),
        "progress": str(tmp_path / "progress"),
        "digests": {"sha256": sha256(DATA)},
        "options": {"connections": 4, "checkpoint_bytes": MiB, **options},
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("run", range(3))
def test_sigkill_at_a_random_moment_then_resume(pool: ServerPool, tmp_path: Path, run: int) -> None:
    (s,) = mirrors(pool, 1)
    s.fault("/f", Fault(rate=3 * MiB), times=None)
    spec = _child_spec(tmp_path, s.url("/f"))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "http_child.py"), str(spec)], env=env
    )
    try:
        progress = tmp_path / "progress"
        # Kill somewhere between a fifth and four fifths of the file.
        at = random.Random(run).uniform(0.2, 0.8) * SIZE
        _wait_for(lambda: progress.exists() and int(progress.read_text() or 0) >= at)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    served_before = s.bytes_served("/f")
    state_file = tmp_path / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    done = sum(e - b for b, e in state["done"]) if state else 0
    s.clear_faults()
    s.reset_stats()
    download(request_for(s.url("/f"), tmp_path / "f", DATA, resume=state), seg())
    assert (tmp_path / "f").read_bytes() == DATA
    refetched = served_before + s.bytes_served("/f") - SIZE
    # Fetched twice: what arrived after the last checkpoint, at most about
    # checkpoint_bytes per connection plus a read in flight on each.
    assert refetched <= 4 * (2 * MiB) + MiB, (refetched, done)

"""Single-connection HttpDownload against the loopback server and its faults."""

from __future__ import annotations

import email.utils
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from support.http_engine import Background, Events, download, fast_options, request_for, sha256
from support.http_server import Blob, Fault, HttpTestServer, payload, serving

from acquired.sources.http import (
    BadUrl,
    Checkpoint,
    ContentRangeMismatch,
    DigestMismatch,
    DiskFull,
    DownloadCancelled,
    FileRequest,
    Forbidden,
    HttpDownload,
    MirrorDropped,
    NotFound,
    Progress,
    Restarted,
    Retrying,
    ServerBusy,
    SizeMismatch,
    UnsupportedDigest,
    UnsupportedUrl,
)
from acquired.sources.http.conn import make_session, shared_session

SIZE = 3_000_000
DATA = payload(SIZE)
OTHER = payload(SIZE, seed=7)  # another version of the same file, same size


@pytest.fixture
def server() -> Iterator[HttpTestServer]:
    with serving(("/f", DATA)) as s:
        yield s


def test_plain_download(server: HttpTestServer, tmp_path: Path) -> None:
    events = Events()
    dest = tmp_path / "out" / "f.bin"
    result = download(request_for(server.url("/f"), dest, DATA), events=events)
    assert dest.read_bytes() == DATA
    assert not dest.with_name("f.bin.part").exists()
    assert result.size == SIZE
    assert result.digests == {"sha256": sha256(DATA)}
    assert result.validator == server.blob("/f").etag
    assert server.bytes_served("/f") == SIZE
    progress = events.of(Progress)
    assert progress and progress[-1].done == progress[-1].total == SIZE
    req = server.requests_for("/f")[0]
    assert req.range is None
    assert req.headers["Accept-Encoding"] == "identity"
    assert req.headers["User-Agent"].startswith("acquired/")


def test_every_named_digest_is_verified_and_returned(
    server: HttpTestServer, tmp_path: Path
) -> None:
    import hashlib

    digests = {"SHA-256": sha256(DATA), "md5": hashlib.md5(DATA).hexdigest()}
    result = download(request_for(server.url("/f"), tmp_path / "f", digests=digests))
    assert result.digests == {"sha256": sha256(DATA), "md5": hashlib.md5(DATA).hexdigest()}


def test_reset_mid_body_resumes_with_range_and_if_range(
    server: HttpTestServer, tmp_path: Path
) -> None:
    server.fault("/f", Fault(reset_after=1_000_000), times=2)
    events = Events()
    download(request_for(server.url("/f"), tmp_path / "f", DATA), events=events)
    assert (tmp_path / "f").read_bytes() == DATA
    reqs = server.requests_for("/f")
    assert [r.range for r in reqs] == [None, "bytes=1000000-", "bytes=2000000-"]
    assert all(r.if_range == server.blob("/f").etag for r in reqs[1:])
    assert server.bytes_served("/f") == SIZE  # nothing fetched twice
    assert len(events.of(Retrying)) == 2
    assert not events.of(Restarted)


def test_last_modified_validates_when_there_is_no_etag(tmp_path: Path) -> None:
    with serving() as s:
        s.add("/f", DATA, etag=False)
        s.fault("/f", Fault(reset_after=500_000))
        result = download(request_for(s.url("/f"), tmp_path / "f", DATA))
        lm = s.blob("/f").last_modified
        assert s.requests_for("/f")[1].if_range == lm
        assert result.validator == lm
        assert s.bytes_served("/f") == SIZE


def test_weak_etag_is_never_used_for_if_range(tmp_path: Path) -> None:
    with serving() as s:
        s.add("/f", Blob.of(DATA, etag='W/"weak"'))
        s.fault("/f", Fault(reset_after=500_000))
        download(request_for(s.url("/f"), tmp_path / "f", DATA))
        assert s.requests_for("/f")[1].if_range == s.blob("/f").last_modified


def test_500_then_success(server: HttpTestServer, tmp_path: Path) -> None:
    server.fault("/f", Fault(status=500), times=2)
    events = Events()
    download(request_for(server.url("/f"), tmp_path / "f", DATA), events=events)
    assert (tmp_path / "f").read_bytes() == DATA
    retries = events.of(Retrying)
    assert [r.attempt for r in retries] == [1, 2]
    assert all("500" in r.reason for r in retries)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(
    server: HttpTestServer, tmp_path: Path, status: int
) -> None:
    server.fault("/f", Fault(status=status, retry_after="1"))
    events = Events()
    download(request_for(server.url("/f"), tmp_path / "f", DATA), events=events)
    assert [r.delay for r in events.of(Retrying)] == [1.0]
    assert (tmp_path / "f").read_bytes() == DATA


def test_retry_after_http_date_is_honoured(server: HttpTestServer, tmp_path: Path) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    server.fault("/f", Fault(status=429, retry_after=when))
    events = Events()
    download(request_for(server.url("/f"), tmp_path / "f", DATA), events=events)
    (retry,) = events.of(Retrying)
    assert 0.0 <= retry.delay <= 2.0
    assert retry.delay > 0.05  # not the backoff of fast_options: the date was used


def test_busy_server_is_dropped_after_max_tries(server: HttpTestServer, tmp_path: Path) -> None:
    server.fault("/f", Fault(status=503, retry_after="0"), times=None)
    events = Events()
    with pytest.raises(ServerBusy) as info:
        download(
            request_for(server.url("/f"), tmp_path / "f", DATA),
            fast_options(max_tries=3),
            events,
        )
    assert server.url("/f") in str(info.value)
    assert info.value.retryable
    assert len(server.requests_for("/f")) == 3
    assert [e.code for e in events.of(MirrorDropped)] == ["http.server_busy"]


def test_next_mirror_when_one_keeps_failing(tmp_path: Path) -> None:
    with serving(("/f", DATA)) as bad, serving(("/f", DATA)) as good:
        bad.fault("/f", Fault(status=500), times=None)
        events = Events()
        download(
            request_for([bad.url("/f"), good.url("/f")], tmp_path / "f", DATA),
            fast_options(max_tries=2),
            events,
        )
        assert (tmp_path / "f").read_bytes() == DATA
        assert [d.url for d in events.of(MirrorDropped)] == [bad.url("/f")]
        assert len(bad.requests_for("/f")) == 2


def test_refused_connection_moves_to_next_mirror(tmp_path: Path) -> None:
    dead = HttpTestServer()
    dead_url = dead.url("/f")
    dead.stop()  # the port is closed: connections are refused
    with serving(("/f", DATA)) as good:
        events = Events()
        download(
            request_for([dead_url, good.url("/f")], tmp_path / "f", DATA),
            fast_options(max_tries=2),
            events,
        )
        assert (tmp_path / "f").read_bytes() == DATA
        (dropped,) = events.of(MirrorDropped)
        assert dropped.code == "http.connection_failed"


def test_200_to_a_range_request_restarts_from_zero(server: HttpTestServer, tmp_path: Path) -> None:
    server.fault("/f", Fault(reset_after=1_000_000))
    server.fault("/f", Fault(no_range=True))
    events = Events()
    download(request_for(server.url("/f"), tmp_path / "f", DATA), events=events)
    assert (tmp_path / "f").read_bytes() == DATA
    (restart,) = events.of(Restarted)
    assert "200" in restart.reason
    # After the restart, a checkpoint says nothing is done any more.
    after = events.all[events.all.index(restart) + 1]
    assert isinstance(after, Checkpoint)
    assert after.state["done"] == []


def _interrupted_state(server: HttpTestServer, dest: Path, cut: int) -> dict[str, object]:
    """Run a download that the server cuts at ``cut`` bytes and never finishes."""
    server.fault("/f", Fault(reset_after=cut), times=None)
    events = Events()
    with pytest.raises(Exception) as info:
        download(request_for(server.url("/f"), dest, DATA), fast_options(max_tries=1), events)
    assert info.value.code == "http.truncated"  # type: ignore[attr-defined]
    server.clear_faults("/f")
    state = events.last_state()
    assert state is not None
    assert state["done"] == [[0, cut]]
    assert dest.with_name(dest.name + ".part").stat().st_size == cut
    return state


def test_resume_after_restart_fetches_only_the_rest(server: HttpTestServer, tmp_path: Path) -> None:
    dest = tmp_path / "f"
    state = json.loads(json.dumps(_interrupted_state(server, dest, 1_200_000)))
    server.reset_stats()
    download(request_for(server.url("/f"), dest, DATA, resume=state))
    assert dest.read_bytes() == DATA
    (req,) = server.requests_for("/f")
    assert req.range == "bytes=1200000-"
    assert req.if_range == server.blob("/f").etag
    assert server.bytes_served() == SIZE - 1_200_000


def test_changed_file_between_runs_restarts_instead_of_splicing(
    server: HttpTestServer, tmp_path: Path
) -> None:
    dest = tmp_path / "f"
    state = _interrupted_state(server, dest, 1_200_000)
    server.add("/f", OTHER)  # a new version: new ETag and Last-Modified
    events = Events()
    result = download(request_for(server.url("/f"), dest, OTHER, resume=state), events=events)
    assert dest.read_bytes() == OTHER
    assert result.validator == server.blob("/f").etag
    (restart,) = events.of(Restarted)
    assert "200" in restart.reason or "ETag" in restart.reason


def test_changed_etag_on_206_restarts(server: HttpTestServer, tmp_path: Path) -> None:
    # A broken cache ignores If-Range and serves a range of a newer version.
    dest = tmp_path / "f"
    state = _interrupted_state(server, dest, 1_200_000)
    server.add("/f", OTHER)
    server.fault("/f", Fault(ignore_if_range=True))
    events = Events()
    download(request_for(server.url("/f"), dest, OTHER, resume=state), events=events)
    assert dest.read_bytes() == OTHER
    (restart,) = events.of(Restarted)
    assert "ETag changed" in restart.reason
    # Not a single byte of the 206 was written: the next request started from zero.
    assert [r.range for r in server.requests_for("/f")][-2:] == ["bytes=1200000-", None]


def test_inconsistent_state_never_splices(server: HttpTestServer, tmp_path: Path) -> None:
    dest = tmp_path / "f"
    state = _interrupted_state(server, dest, 1_200_000)
    os.truncate(dest.with_name("f.part"), 1000)  # less than the state claims
    events = Events()
    download(request_for(server.url("/f"), dest, DATA, resume=state), events=events)
    assert dest.read_bytes() == DATA
    assert "partial file" in events.of(Restarted)[0].reason
    assert server.requests_for("/f")[-1].range is None


def test_part_without_state_restarts(server: HttpTestServer, tmp_path: Path) -> None:
    dest = tmp_path / "f"
    dest.with_name("f.part").write_bytes(OTHER[:5000])
    events = Events()
    download(request_for(server.url("/f"), dest, DATA), events=events)
    assert dest.read_bytes() == DATA
    assert events.of(Restarted)


def test_wrong_content_length_is_a_truncation(server: HttpTestServer, tmp_path: Path) -> None:
    server.fault("/f", Fault(content_length=SIZE + 1000))
    events = Events()
    download(request_for(server.url("/f"), tmp_path / "f", DATA), events=events)
    assert (tmp_path / "f").read_bytes() == DATA
    assert "truncat" in events.of(Retrying)[0].reason or "closed" in events.of(Retrying)[0].reason


def test_wrong_content_range_is_never_written(server: HttpTestServer, tmp_path: Path) -> None:
    dest = tmp_path / "f"
    state = _interrupted_state(server, dest, 1_000_000)
    server.fault("/f", Fault(range_shift=4096), times=2)
    events = Events()
    download(request_for(server.url("/f"), dest, DATA, resume=state), events=events)
    assert dest.read_bytes() == DATA
    retries = events.of(Retrying)
    assert len(retries) == 2
    assert all("Content-Range" in r.reason for r in retries)


def test_wrong_content_range_error_code(server: HttpTestServer, tmp_path: Path) -> None:
    dest = tmp_path / "f"
    state = _interrupted_state(server, dest, 1_000_000)
    server.fault("/f", Fault(range_shift=-10), times=None)
    with pytest.raises(ContentRangeMismatch) as info:
        download(request_for(server.url("/f"), dest, DATA, resume=state), fast_options(max_tries=2))
    assert info.value.details["asked"] == "bytes=1000000-"


def test_slow_drip_below_min_speed_is_dropped(server: HttpTestServer, tmp_path: Path) -> None:
    server.fault("/f", Fault(rate=2000))
    events = Events()
    download(
        request_for(server.url("/f"), tmp_path / "f", DATA),
        fast_options(min_speed=100_000, min_speed_window=1.0),
        events,
    )
    assert (tmp_path / "f").read_bytes() == DATA
    (retry,) = events.of(Retrying)
    assert "below 100000 B/s" in retry.reason
    # The bytes the slow attempt delivered were kept.
    assert server.requests_for("/f")[1].range is not None


def test_silent_server_never_hangs(server: HttpTestServer, tmp_path: Path) -> None:
    server.fault("/f", Fault(stall_headers=True))
    server.fault("/f", Fault(stall_after=100_000))
    events = Events()
    download(
        request_for(server.url("/f"), tmp_path / "f", DATA),
        fast_options(read_timeout=0.5),
        events,
    )
    assert (tmp_path / "f").read_bytes() == DATA
    assert len(events.of(Retrying)) == 2
    assert server.requests_for("/f")[2].range == "bytes=100000-"


def test_silent_server_is_caught_by_min_speed_too(server: HttpTestServer, tmp_path: Path) -> None:
    server.fault("/f", Fault(stall_headers=True))
    events = Events()
    download(
        request_for(server.url("/f"), tmp_path / "f", DATA),
        fast_options(read_timeout=60, min_speed_window=0.5),
        events,
    )
    assert "below" in events.of(Retrying)[0].reason


@pytest.mark.parametrize(
    "fault",
    [Fault(stall_headers=True), Fault(stall_after=200_000), Fault(rate=50_000)],
    ids=["no-headers", "mid-body", "drip"],
)
def test_cancel_is_prompt_even_when_the_server_is_silent(
    server: HttpTestServer, tmp_path: Path, fault: Fault
) -> None:
    server.fault("/f", fault, times=None)
    events = Events()
    dl = HttpDownload(
        request_for(server.url("/f"), tmp_path / "f", DATA),
        fast_options(read_timeout=120, min_speed=0),
        events,
    )
    bg = Background(dl)
    deadline = time.monotonic() + 10
    while not server.requests_for("/f") and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    dl.cancel()
    bg.join(timeout=10)  # read_timeout is 120 s: only the abort can end it this soon
    assert isinstance(bg.error, DownloadCancelled)
    assert bg.error.code == "http.cancelled"
    state = events.last_state()
    assert state is not None
    part = tmp_path / "f.part"
    done = state["done"][0][1] if state["done"] else 0
    assert part.stat().st_size >= done
    assert part.read_bytes()[:done] == DATA[:done]


def test_cancel_then_resume_completes(server: HttpTestServer, tmp_path: Path) -> None:
    server.fault("/f", Fault(rate=400_000), times=1)
    events = Events()
    dest = tmp_path / "f"
    dl = HttpDownload(request_for(server.url("/f"), dest, DATA), fast_options(), events)
    bg = Background(dl)
    deadline = time.monotonic() + 20
    while not events.of(Checkpoint) and time.monotonic() < deadline:
        time.sleep(0.02)
    dl.cancel()
    bg.join()
    assert isinstance(bg.error, DownloadCancelled)
    state = events.last_state()
    assert state is not None and state["done"][0][1] > 0
    done = state["done"][0][1]
    served_before = server.bytes_served("/f")
    download(request_for(server.url("/f"), dest, DATA, resume=state))
    assert dest.read_bytes() == DATA
    assert server.bytes_served("/f") - served_before == SIZE - done


def test_cancel_before_run(server: HttpTestServer, tmp_path: Path) -> None:
    dl = HttpDownload(request_for(server.url("/f"), tmp_path / "f", DATA), fast_options())
    dl.cancel()
    with pytest.raises(DownloadCancelled):
        dl.run()
    assert server.requests_for("/f") == []


def test_digest_mismatch_discards_data(tmp_path: Path) -> None:
    with serving(("/f", OTHER)) as s:
        events = Events()
        with pytest.raises(DigestMismatch) as info:
            download(request_for(s.url("/f"), tmp_path / "f", DATA), events=events)
        err = info.value
        assert err.code == "verify.digest_mismatch"
        assert err.details["algorithm"] == "sha256"
        assert err.details["expected"] == sha256(DATA)
        assert err.details["actual"] == sha256(OTHER)
        assert err.details["url"] == s.url("/f")
        assert not (tmp_path / "f.part").exists()
        assert not (tmp_path / "f").exists()
        state = events.last_state()
        assert state is not None and state["done"] == []


def test_digest_mismatch_retries_from_another_mirror(tmp_path: Path) -> None:
    with serving(("/f", OTHER)) as bad, serving(("/f", DATA)) as good:
        events = Events()
        download(request_for([bad.url("/f"), good.url("/f")], tmp_path / "f", DATA), events=events)
        assert (tmp_path / "f").read_bytes() == DATA
        (dropped,) = events.of(MirrorDropped)
        assert (dropped.url, dropped.code) == (bad.url("/f"), "verify.digest_mismatch")


def test_size_mismatch_with_manifest(server: HttpTestServer, tmp_path: Path) -> None:
    with pytest.raises(SizeMismatch) as info:
        download(request_for(server.url("/f"), tmp_path / "f", size=SIZE + 1))
    assert info.value.details == {
        "url": server.url("/f"),
        "expected": SIZE + 1,
        "actual": SIZE,
    }


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://example.org/f", UnsupportedUrl),
        ("file:///etc/passwd", UnsupportedUrl),
        ("http://", BadUrl),
        ("http://host:notaport/f", BadUrl),
        ("http://exa mple.org/f", BadUrl),
        ("", BadUrl),
    ],
)
def test_bad_urls_are_clear_errors(tmp_path: Path, url: str, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        download(request_for(url, tmp_path / "f"))
    assert repr(url) in str(info.value)
    assert not info.value.retryable  # type: ignore[attr-defined]


def test_bad_url_among_good_ones_is_dropped(server: HttpTestServer, tmp_path: Path) -> None:
    events = Events()
    download(request_for(["gopher://x/f", server.url("/f")], tmp_path / "f", DATA), events=events)
    assert [d.code for d in events.of(MirrorDropped)] == ["http.unsupported_url"]


@pytest.mark.parametrize(
    ("status", "error"), [(404, NotFound), (410, NotFound), (403, Forbidden), (401, Forbidden)]
)
def test_client_errors_are_not_retried(
    server: HttpTestServer, tmp_path: Path, status: int, error: type[Exception]
) -> None:
    server.fault("/f", Fault(status=status), times=None)
    with pytest.raises(error) as info:
        download(request_for(server.url("/f"), tmp_path / "f", DATA))
    assert server.url("/f") in str(info.value)
    assert str(status) in str(info.value)
    assert len(server.requests_for("/f")) == 1


def test_unknown_digest_algorithm(server: HttpTestServer, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDigest) as info:
        download(request_for(server.url("/f"), tmp_path / "f", digests={"crc99": "00"}))
    assert "crc99" in str(info.value)
    assert server.requests == []


def test_resume_state_that_is_already_complete(server: HttpTestServer, tmp_path: Path) -> None:
    dest = tmp_path / "f"
    dest.with_name("f.part").write_bytes(DATA)
    etag = server.blob("/f").etag
    state = {
        "format": 1,
        "size": SIZE,
        "validator": {"etag": etag, "last_modified": None},
        "url": server.url("/f"),
        "done": [[0, SIZE]],
    }
    download(request_for(server.url("/f"), dest, DATA, resume=state))
    assert dest.read_bytes() == DATA
    assert server.requests_for("/f") == []


def test_empty_file(tmp_path: Path) -> None:
    with serving(("/e", b"")) as s:
        result = download(request_for(s.url("/e"), tmp_path / "e", b""))
        assert result.size == 0
        assert (tmp_path / "e").read_bytes() == b""


def test_checkpoints_only_claim_flushed_matching_bytes(
    server: HttpTestServer, tmp_path: Path
) -> None:
    server.fault("/f", Fault(rate=3_000_000))
    seen: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    part = tmp_path / "f.part"

    def on_event(event: object) -> None:
        if isinstance(event, Checkpoint) and event.state["done"]:
            done = event.state["done"][0][1]
            with lock, part.open("rb") as f:
                seen.append((done, f.read(done)))

    HttpDownload(
        request_for(server.url("/f"), tmp_path / "f", DATA),
        fast_options(checkpoint_bytes=256 * 1024),
        on_event,
    ).run()
    assert len(seen) >= 2
    for done, content in seen:
        assert content == DATA[:done]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_keeps_part_and_checkpoint(
    server: HttpTestServer, tmp_path: Path, tiny_fs: Path
) -> None:
    events = Events()
    dest = tiny_fs / "f"
    with pytest.raises(DiskFull) as info:
        download(request_for(server.url("/f"), dest, DATA), events=events)
    assert info.value.code == "disk.full"
    part = tiny_fs / "f.part"
    assert part.exists()
    state = events.last_state()
    assert state is not None
    done = state["done"][0][1]
    assert 0 < done <= part.stat().st_size
    kept = part.read_bytes()[:done]
    assert kept == DATA[:done]
    # Space comes back (here: the file moves to a bigger disk) and the download resumes.
    big = tmp_path / "big"
    big.mkdir()
    (big / "f.part").write_bytes(kept)
    server.reset_stats()
    download(request_for(server.url("/f"), big / "f", DATA, resume=state))
    assert (big / "f").read_bytes() == DATA
    assert server.bytes_served("/f") == SIZE - done


def test_request_dest_part_name() -> None:
    assert FileRequest(urls=[], dest=Path("/x/a.tar")).part == Path("/x/a.tar.part")


def _connections_opened(session: requests.Session, url: str) -> int:
    """Connections the session's pools have opened to the host and port of ``url``."""
    parts = urlsplit(url)
    manager = session.get_adapter(url).poolmanager  # type: ignore[attr-defined]
    total = 0
    for key in manager.pools.keys():  # noqa: SIM118 - the container cannot be iterated
        pool = manager.pools[key]
        if (pool.host, pool.port) == (parts.hostname, parts.port):
            total += pool.num_connections
    return total


def test_small_files_reuse_one_keep_alive_connection(
    server: HttpTestServer, tmp_path: Path
) -> None:
    data = payload(40_000, seed=21)
    server.add("/small", Blob.of(data))
    url = server.url("/small")
    session = make_session("acquired-test", 4)
    for i in range(5):
        download(
            request_for(url, tmp_path / f"s{i}", data, size=len(data)),
            fast_options(connections=8, session=session),
        )
    assert _connections_opened(session, url) == 1
    # Known to be small: one plain GET each, no ranged first request.
    assert [r.range for r in server.requests_for("/small")] == [None] * 5


def test_downloads_share_the_process_session_by_default(
    server: HttpTestServer, tmp_path: Path
) -> None:
    data = payload(30_000, seed=22)
    server.add("/shared", Blob.of(data))
    url = server.url("/shared")
    shared = shared_session(fast_options().user_agent)
    before = _connections_opened(shared, url)
    for i in range(3):
        download(request_for(url, tmp_path / f"t{i}", data), fast_options())
    assert _connections_opened(shared, url) - before == 1

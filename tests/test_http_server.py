"""The loopback test server itself: ranges, validators, faults and byte counts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import requests
import urllib3
from support.http_server import Blob, Fault, HttpTestServer, parse_range, payload, serving

DATA = payload(300_000)


@pytest.fixture
def server() -> Iterator[HttpTestServer]:
    with serving(("/f", DATA)) as s:
        yield s


def test_parse_range() -> None:
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=50-500", 100) == (50, 99)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=0-1,5-6", 100) is None
    assert parse_range("items=0-1", 100) is None


def test_full_get_and_head(server: HttpTestServer) -> None:
    r = requests.get(server.url("/f"), timeout=10)
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["ETag"] == server.blob("/f").etag
    assert "Last-Modified" in r.headers
    h = requests.head(server.url("/f"), timeout=10)
    assert h.status_code == 200
    assert int(h.headers["Content-Length"]) == len(DATA)
    assert server.bytes_served("/f") == len(DATA)
    assert [r.method for r in server.requests_for("/f", None)] == ["GET", "HEAD"]


def test_range_and_if_range(server: HttpTestServer) -> None:
    etag = server.blob("/f").etag
    assert etag is not None
    r = requests.get(server.url("/f"), headers={"Range": "bytes=100-199"}, timeout=10)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    assert r.content == DATA[100:200]
    r = requests.get(
        server.url("/f"), headers={"Range": "bytes=100-", "If-Range": etag}, timeout=10
    )
    assert r.status_code == 206
    assert r.content == DATA[100:]
    r = requests.get(
        server.url("/f"), headers={"Range": "bytes=100-", "If-Range": '"other"'}, timeout=10
    )
    assert r.status_code == 200
    assert r.content == DATA
    lm = server.blob("/f").last_modified
    assert lm is not None
    r = requests.get(server.url("/f"), headers={"Range": "bytes=5-9", "If-Range": lm}, timeout=10)
    assert r.status_code == 206
    r = requests.get(server.url("/f"), headers={"Range": f"bytes={len(DATA)}-"}, timeout=10)
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert server.requests_for("/f")[0].range == "bytes=100-199"


def test_status_faults_for_k_requests(server: HttpTestServer) -> None:
    server.fault("/f", Fault(status=503, retry_after="3"), times=2)
    for _ in range(2):
        r = requests.get(server.url("/f"), timeout=10)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "3"
    assert requests.get(server.url("/f"), timeout=10).status_code == 200


def test_permanent_fault_and_clear(server: HttpTestServer) -> None:
    server.fault("/f", Fault(no_range=True), times=None)
    for _ in range(3):
        r = requests.get(server.url("/f"), headers={"Range": "bytes=0-9"}, timeout=10)
        assert r.status_code == 200
        assert len(r.content) == len(DATA)
    server.clear_faults("/f")
    r = requests.get(server.url("/f"), headers={"Range": "bytes=0-9"}, timeout=10)
    assert r.status_code == 206


def test_reset_after_counts_only_sent_bytes(server: HttpTestServer) -> None:
    server.fault("/f", Fault(reset_after=1000))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(server.url("/f"), timeout=10).content  # noqa: B018
    assert server.bytes_served("/f") == 1000


def test_wrong_content_length_truncates(server: HttpTestServer) -> None:
    server.fault("/f", Fault(content_length=len(DATA) + 10))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(server.url("/f"), timeout=10).content  # noqa: B018


def test_range_shift_is_labelled(server: HttpTestServer) -> None:
    server.fault("/f", Fault(range_shift=50))
    r = requests.get(server.url("/f"), headers={"Range": "bytes=100-199"}, timeout=10)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 150-249/{len(DATA)}"
    assert r.content == DATA[150:250]


def test_other_version(server: HttpTestServer) -> None:
    other = Blob.of(payload(1000, seed=9))
    server.fault("/f", Fault(version=other))
    r = requests.get(server.url("/f"), timeout=10)
    assert r.content == other.data
    assert r.headers["ETag"] == other.etag != server.blob("/f").etag


def test_stall_keeps_connection_silent(server: HttpTestServer) -> None:
    server.fault("/f", Fault(stall_after=100))
    r = requests.get(server.url("/f"), stream=True, timeout=(5, 0.5))
    assert r.raw.read(100) == DATA[:100]
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        r.raw.read(100)
    server.fault("/f", Fault(stall_headers=True))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(server.url("/f"), timeout=(5, 0.5))


def test_drip(server: HttpTestServer) -> None:
    server.fault("/f", Fault(rate=20_000))
    r = requests.get(server.url("/f"), headers={"Range": "bytes=0-2999"}, timeout=10)
    assert r.content == DATA[:3000]


def test_stop_wakes_stalled_handlers() -> None:
    s = HttpTestServer().start()
    s.add("/x", b"abc")
    s.fault("/x", Fault(stall_headers=True), times=None)
    conn = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    conn.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 10
    while not s.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    conn.settimeout(5)
    assert conn.recv(10) == b""
    conn.close()


def test_big_blob_is_served_fast_enough_to_be_useful() -> None:
    # Not a timing assertion: a 64 MiB body must simply arrive whole and be counted.
    data = payload(64 << 20, seed=3)
    with serving(("/big", data)) as s:
        r = requests.get(s.url("/big"), stream=True, timeout=30)
        got = 0
        for chunk in r.iter_content(1 << 20):
            got += len(chunk)
        assert got == len(data)
        assert s.bytes_served() == len(data)

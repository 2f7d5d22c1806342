"""Servers that misbehave on purpose: endless bodies, bodies longer than announced,
mirrors whose validator changes with every answer, and hosts that cannot be reached."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http_engine import Events, download, fast_options, request_for, sha256
from support.http_server import Blob, HttpTestServer, payload, serving
from support.raw_http import RawServer

from acquired.sources.http import (
    ConnectionFailed,
    MirrorDropped,
    Retrying,
    SizeMismatch,
)

MiB = 1 << 20


@pytest.mark.parametrize(("size", "connections"), [(256 << 10, 1), (5 * MiB, 4)])
def test_endless_body_stops_one_byte_past_the_manifest_size(
    tmp_path: Path, size: int, connections: int
) -> None:
    data = payload(size, seed=11)
    with RawServer(data, endless=True, length=False, ranges=False) as server:
        events = Events()
        with pytest.raises(SizeMismatch) as info:
            download(
                request_for(server.url(), tmp_path / "f", data, size=size),
                fast_options(connections=connections),
                events,
            )
        sent = server.sent
    assert f"stopped at byte {size + 1}" in str(info.value)
    assert info.value.code == "http.size_mismatch"
    # What the server could push into the socket buffers before the engine stopped
    # reading, not the 64 MiB it would send to a reader that never stops.
    assert sent < size + 16 * MiB
    part = tmp_path / "f.part"
    assert not part.exists() or part.stat().st_size <= size
    assert not (tmp_path / "f").exists()


def test_body_longer_than_its_content_length_is_cut_at_the_length(tmp_path: Path) -> None:
    data = payload(300 << 10, seed=12)
    with RawServer(data, endless=True, length=True, ranges=False) as server:
        result = download(request_for(server.url(), tmp_path / "f", data), fast_options())
    assert result.size == len(data)
    assert (tmp_path / "f").read_bytes() == data


@pytest.fixture
def good() -> Iterator[HttpTestServer]:
    with serving() as server:
        yield server


@pytest.mark.parametrize("flipping_first", [True, False])
def test_mirror_whose_etag_keeps_changing_is_dropped_and_the_good_one_finishes(
    tmp_path: Path, good: HttpTestServer, flipping_first: bool
) -> None:
    data = payload(6 * MiB + 123, seed=13)
    good.add("/f", Blob.of(data, mtime=1_700_000_000))
    with RawServer(data, flipping_etag=True) as flipping:
        urls = [flipping.url(), good.url("/f")]
        if not flipping_first:
            urls.reverse()
        events = Events()
        result = download(
            request_for(urls, tmp_path / "f", data),
            fast_options(connections=4, chunk_size=256 << 10),
            events,
        )
    assert result.digests == {"sha256": sha256(data)}
    assert (tmp_path / "f").read_bytes() == data
    dropped = {e.url: e.code for e in events.of(MirrorDropped)}
    assert dropped.get(flipping.url()) == "http.version_mismatch"


def test_refused_port_says_connection_refused_with_the_host(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = s.getsockname()[1]
        events = Events()
        with pytest.raises(ConnectionFailed) as info:
            download(
                request_for(f"http://127.0.0.1:{port}/f", tmp_path / "f"),
                fast_options(max_tries=2),
                events,
            )
    assert str(info.value) == f"127.0.0.1:{port}: connection refused"
    assert info.value.details["kind"] == "refused"
    assert "Connection refused" in str(info.value.details["library"])
    for retry in events.of(Retrying):
        assert retry.reason == f"127.0.0.1:{port}: connection refused"


def test_unresolvable_name_says_name_not_found(tmp_path: Path) -> None:
    events = Events()
    with pytest.raises(ConnectionFailed) as info:
        download(
            request_for("http://dl.acquired-test.invalid/f", tmp_path / "f"),
            fast_options(max_tries=2),
            events,
        )
    assert str(info.value) == "dl.acquired-test.invalid: name not found"
    assert info.value.details["kind"] == "dns"
    assert "Max retries" not in str(info.value)
    assert all("Max retries" not in e.reason for e in events.of(Retrying))
    assert all("_TrackedHTTPPool" not in e.reason for e in events.of(MirrorDropped))

"""The CurlMulti fetcher against a real loopback server with injected faults."""

from __future__ import annotations

import socket

import pytest
from support.image_server import ImageServer, Route

from acquired.sources.urllist import outcome
from acquired.sources.urllist.fetch import (
    Fetcher,
    FetchItem,
    classify,
    host_of,
    parse_retry_after,
)
from acquired.sources.urllist.settings import FetchSettings

FAST = FetchSettings(
    timeout=1.5,
    retries=2,
    per_host_connections=4,
    max_bytes=10_000,
    concurrency=16,
    backoff_base=0.05,
    backoff_max=0.2,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_fault_gets_its_class() -> None:
    body = b"x" * 1000
    with ImageServer() as server:
        urls = {
            "ok": server.add("/ok", body),
            "404": server.url("/missing"),
            "500-then-ok": server.status("/flaky", 500, times=1, then=body),
            "503-always": server.status("/down", 503),
            "429": server.status("/busy", 429, {"Retry-After": "1"}, times=1, then=body),
            "429-long": server.status("/later", 429, {"Retry-After": "100000"}),
            "reset": server.route("/reset", Route(body=body, reset_after=100)),
            "stall": server.route("/stall", Route(stall=True)),
            "drip": server.route("/drip", Route(body=b"y" * 5000, rate=1000)),
            "evil": server.redirect("/evil", "file:///etc/passwd"),
            "redirect": server.redirect("/moved", server.url("/ok")),
            "loop": server.redirect("/loop", server.url("/loop")),
            "big": server.add("/big", b"z" * 20_000),
            "big-nolength": server.route("/bignl", Route(body=b"z" * 20_000, no_length=True)),
            "refused": f"http://127.0.0.1:{closed_port()}/x",
        }
        tags = list(urls)
        items = [FetchItem(i, urls[name]) for i, name in enumerate(tags)]
        with Fetcher(FAST, seed=1) as fetcher:
            results = {tags[r.tag]: r for r in fetcher.fetch(items)}
        assert set(results) == set(tags)
        got = {name: r.error_class for name, r in results.items()}
        assert got == {
            "ok": None,
            "404": outcome.HTTP_4XX,
            "500-then-ok": None,
            "503-always": outcome.HTTP_5XX,
            "429": None,
            "429-long": outcome.HTTP_429,
            "reset": outcome.CONNECT,
            "stall": outcome.TIMEOUT,
            "drip": outcome.TIMEOUT,
            "evil": outcome.HTTP_4XX,
            "redirect": None,
            "loop": outcome.HTTP_4XX,
            "big": outcome.TOO_LARGE,
            "big-nolength": outcome.TOO_LARGE,
            "refused": outcome.CONNECT,
        }
        assert results["ok"].body == body and results["redirect"].body == body
        assert results["500-then-ok"].attempts == 2 and results["500-then-ok"].body == body
        assert results["429"].attempts == 2
        assert results["429-long"].attempts == 1  # a Retry-After past the limit is not waited
        assert results["503-always"].attempts == 3 and server.hits("/down") == 3
        assert results["404"].attempts == 1 and results["404"].http_status == 404
        assert results["reset"].attempts == 3
        assert results["stall"].attempts == 3
        assert results["evil"].attempts == 1 and "redirect" in (results["evil"].message or "")
        assert server.hits("/loop") == FAST.max_redirects + 1
        assert server.agents == {FAST.user_agent}
        assert "acquired" in FAST.user_agent


def test_per_host_cap_and_many_items() -> None:
    with ImageServer() as server:
        for i in range(60):
            server.route(f"/{i}", Route(body=b"a" * 100, delay=0.02))
        items = [FetchItem(i, server.url(f"/{i}")) for i in range(60)]
        with Fetcher(FAST) as fetcher:
            results = list(fetcher.fetch(items))
        assert sorted(r.tag for r in results) == list(range(60))
        assert all(r.ok for r in results)
        assert 1 < server.max_in_flight <= FAST.per_host_connections


@pytest.mark.parametrize(
    ("errno", "status", "expected", "retryable"),
    [
        (0, 200, None, False),
        (0, 204, None, False),
        (0, 404, outcome.HTTP_4XX, False),
        (0, 403, outcome.HTTP_4XX, False),
        (0, 500, outcome.HTTP_5XX, True),
        (0, 429, outcome.HTTP_429, True),
        (6, 0, outcome.DNS, False),
        (7, 0, outcome.CONNECT, False),
        (28, 0, outcome.TIMEOUT, True),
        (56, 200, outcome.CONNECT, True),
        (18, 200, outcome.CONNECT, True),
        (1, 302, outcome.HTTP_4XX, False),
        (47, 302, outcome.HTTP_4XX, False),
        (63, 200, outcome.TOO_LARGE, False),
    ],
)
def test_classify_table(errno: int, status: int, expected: str | None, retryable: bool) -> None:
    verdict = classify(errno, "msg", status)
    assert verdict.error_class == expected
    assert verdict.retryable is retryable


def test_helpers() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0
    assert parse_retry_after("soon") is None
    assert host_of("https://user:pw@Example.org:8080/a?b") == "example.org:8080"

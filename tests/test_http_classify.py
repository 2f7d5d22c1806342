"""The pure decisions of the HTTP engine: what an answer means (``classify``) and what a
failed request was (``network_cause``), table-driven."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field

import pytest
import requests
import urllib3.exceptions

from acquired.sources.http.classify import Expected, Kind, classify
from acquired.sources.http.neterrors import network_cause, network_error
from acquired.sources.http.protocol import Validator

URL = "http://m.example/f"
V1 = Validator(etag='"one"')
V2 = Validator(etag='"two"')
LM = Validator(last_modified="Tue, 14 Nov 2023 22:13:20 GMT")


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def hdr(cr: str | None = None, etag: str | None = None, length: int | None = None) -> dict:
    out = {}
    if cr is not None:
        out["Content-Range"] = cr
    if etag is not None:
        out["ETag"] = etag
    if length is not None:
        out["Content-Length"] = str(length)
    return out


# (name, answer, expected, kind, error code or reason fragment or None)
CASES = [
    # 206: the range asked for
    ("206 exact", Answer(206, hdr("bytes 0-9/100")), Expected(URL, 0, 9), Kind.RANGE, None),
    ("206 shorter", Answer(206, hdr("bytes 0-4/100")), Expected(URL, 0, 9), Kind.RANGE, None),
    ("206 open", Answer(206, hdr("bytes 50-99/100")), Expected(URL, 50), Kind.RANGE, None),
    ("206 unknown total", Answer(206, hdr("bytes 0-9/*")), Expected(URL, 0, 9), Kind.RANGE, None),
    (
        "206 other start",
        Answer(206, hdr("bytes 1-10/100")),
        Expected(URL, 0, 9),
        Kind.ERROR,
        "http.content_range_mismatch",
    ),
    (
        "206 longer",
        Answer(206, hdr("bytes 0-19/100")),
        Expected(URL, 0, 9),
        Kind.ERROR,
        "http.content_range_mismatch",
    ),
    (
        "206 without Content-Range",
        Answer(206),
        Expected(URL, 0, 9),
        Kind.ERROR,
        "http.content_range_mismatch",
    ),
    (
        "206 other ETag",
        Answer(206, hdr("bytes 0-9/100", '"two"')),
        Expected(URL, 0, 9, V1),
        Kind.CHANGED,
        "ETag changed",
    ),
    (
        "206 same ETag",
        Answer(206, hdr("bytes 0-9/100", '"one"')),
        Expected(URL, 0, 9, V1),
        Kind.RANGE,
        None,
    ),
    (
        "206 weak form of the same ETag",
        Answer(206, hdr("bytes 0-9/100", 'W/"one"')),
        Expected(URL, 0, 9, V1),
        Kind.RANGE,
        None,
    ),
    (
        "206 no validator cannot prove a change",
        Answer(206, hdr("bytes 0-9/100")),
        Expected(URL, 0, 9, V1),
        Kind.RANGE,
        None,
    ),
    (
        "206 size changed",
        Answer(206, hdr("bytes 0-9/200")),
        Expected(URL, 0, 9, size=100),
        Kind.CHANGED,
        "size changed",
    ),
    (
        "206 size against the manifest",
        Answer(206, hdr("bytes 0-9/200")),
        Expected(URL, 0, 9, manifest_size=100),
        Kind.ERROR,
        "http.size_mismatch",
    ),
    # 200: the whole file
    ("200 no range asked", Answer(200, hdr(length=100)), Expected(URL), Kind.WHOLE, None),
    ("200 to a range", Answer(200, hdr(length=100)), Expected(URL, 0, 9), Kind.WHOLE, None),
    (
        "200 to a range, other version",
        Answer(200, hdr(etag='"two"')),
        Expected(URL, 10, validator=V1),
        Kind.CHANGED,
        "ETag changed",
    ),
    (
        "200 without a range: validators not compared",
        Answer(200, hdr(etag='"two"')),
        Expected(URL, validator=V1),
        Kind.WHOLE,
        None,
    ),
    (
        "200 longer than the manifest",
        Answer(200, hdr(length=200)),
        Expected(URL, manifest_size=100),
        Kind.ERROR,
        "http.size_mismatch",
    ),
    ("200 without length", Answer(200), Expected(URL, manifest_size=100), Kind.WHOLE, None),
    # 416
    (
        "416 at the end: complete",
        Answer(416, {"Content-Range": "bytes */100"}),
        Expected(URL, 100, validator=V1),
        Kind.COMPLETE,
        None,
    ),
    (
        "416 mid-file",
        Answer(416, {"Content-Range": "bytes */50"}),
        Expected(URL, 100),
        Kind.CHANGED,
        "416",
    ),
    (
        "416 at the end of another version",
        Answer(416, {"Content-Range": "bytes */100", "ETag": '"two"'}),
        Expected(URL, 100, validator=V1),
        Kind.CHANGED,
        "416",
    ),
    (
        "416 at the end, manifest disagrees",
        Answer(416, {"Content-Range": "bytes */100"}),
        Expected(URL, 100, manifest_size=120),
        Kind.CHANGED,
        "416",
    ),
    ("416 from zero", Answer(416), Expected(URL, 0, 9), Kind.CHANGED, "416"),
    # other statuses
    ("404", Answer(404, reason="Not Found"), Expected(URL), Kind.ERROR, "http.not_found"),
    ("410", Answer(410), Expected(URL), Kind.ERROR, "http.not_found"),
    ("403", Answer(403), Expected(URL), Kind.ERROR, "http.forbidden"),
    ("401", Answer(401), Expected(URL), Kind.ERROR, "http.forbidden"),
    ("429", Answer(429), Expected(URL), Kind.ERROR, "http.server_busy"),
    ("503", Answer(503), Expected(URL), Kind.ERROR, "http.server_busy"),
    ("500", Answer(500), Expected(URL), Kind.ERROR, "http.server_error"),
    ("502", Answer(502), Expected(URL), Kind.ERROR, "http.server_error"),
    ("408", Answer(408), Expected(URL), Kind.ERROR, "http.server_error"),
    ("400", Answer(400), Expected(URL), Kind.ERROR, "http.status"),
    ("304", Answer(304), Expected(URL), Kind.ERROR, "http.status"),
]


@pytest.mark.parametrize(
    ("answer", "expected", "kind", "what"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify(answer: Answer, expected: Expected, kind: Kind, what: str | None) -> None:
    outcome = classify(answer, expected, now=1_700_000_000.0)
    assert outcome.kind is kind
    if kind is Kind.ERROR:
        assert outcome.error is not None and outcome.error.code == what
    elif kind is Kind.CHANGED:
        assert what in outcome.reason
    else:
        assert outcome.error is None


def test_range_outcome_carries_length_and_total() -> None:
    out = classify(Answer(206, hdr("bytes 10-19/100", '"one"')), Expected(URL, 10, 19))
    assert (out.first, out.length, out.total, out.validator) == (10, 10, 100, V1)


def test_whole_outcome_carries_content_length() -> None:
    out = classify(Answer(200, hdr(length=42)), Expected(URL))
    assert (out.first, out.length, out.total) == (0, 42, 42)


def test_last_modified_only_is_compared_with_last_modified() -> None:
    later = {"Content-Range": "bytes 0-9/100", "Last-Modified": "Wed, 15 Nov 2023 00:00:00 GMT"}
    assert classify(Answer(206, later), Expected(URL, 0, 9, LM)).kind is Kind.CHANGED
    etag_only = hdr("bytes 0-9/100", '"one"')
    assert classify(Answer(206, etag_only), Expected(URL, 0, 9, LM)).kind is Kind.RANGE


@pytest.mark.parametrize(
    ("value", "seconds"), [("7", 7.0), ("Tue, 14 Nov 2023 22:13:30 GMT", 10.0), ("soon", None)]
)
def test_retry_after_is_kept_on_the_error(value: str, seconds: float | None) -> None:
    out = classify(Answer(503, {"Retry-After": value}), Expected(URL), now=1_700_000_000.0)
    assert out.error is not None
    assert out.error.details.get("retry_after") == seconds


def _wrapped(cause: BaseException) -> requests.ConnectionError:
    """The way requests reports a failed connection: three layers around the cause."""
    inner = urllib3.exceptions.NewConnectionError(None, f"Failed to establish: {cause}")  # type: ignore[arg-type]
    inner.__cause__ = cause
    outer = urllib3.exceptions.MaxRetryError(None, "/f", inner)  # type: ignore[arg-type]
    return requests.ConnectionError(outer)


NET_CASES = [
    ("dns", _wrapped(socket.gaierror(-2, "Name or service not known")), "dns", "name not found"),
    (
        "refused",
        _wrapped(ConnectionRefusedError(111, "Connection refused")),
        "refused",
        "connection refused",
    ),
    ("reset", ConnectionResetError(104, "Connection reset by peer"), "reset", "connection reset"),
    ("timeout", requests.ConnectTimeout("connect timed out"), "timeout", "timed out"),
    ("read timeout", TimeoutError("timed out"), "timeout", "timed out"),
    ("tls", requests.exceptions.SSLError(ssl.SSLError(1, "WRONG_VERSION_NUMBER")), "tls", "TLS"),
    ("unreachable", OSError(113, "No route to host"), "unreachable", "host unreachable"),
    (
        "closed",
        urllib3.exceptions.ProtocolError("Connection aborted."),
        "closed",
        "connection closed",
    ),
    ("other", ValueError("odd"), "other", "connection failed"),
]


@pytest.mark.parametrize(
    ("exc", "kind", "words"), [c[1:] for c in NET_CASES], ids=[c[0] for c in NET_CASES]
)
def test_network_cause(exc: BaseException, kind: str, words: str) -> None:
    got_kind, got_words = network_cause(exc)
    assert got_kind == kind
    assert words in got_words


def test_network_error_names_the_host_and_keeps_the_library_text() -> None:
    exc = network_error(_wrapped(socket.gaierror(-2, "nope")), "https://dl.example.org/a/b.tar")
    assert str(exc) == "dl.example.org: name not found"
    assert exc.code == "http.connection_failed"
    assert exc.details["host"] == "dl.example.org"
    assert "Max retries exceeded" in str(exc.details["library"])
    assert "nope" in str(exc.details["library"])

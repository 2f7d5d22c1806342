"""A wrong checksum in the manifest: stopped after the second identical result, with
the expected and the actual digest; and what a retrying file shows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.daemon import DaemonProcess
from support.http_server import HttpTestServer

from acquired.daemon.errors import ErrorInfo
from acquired.daemon.outcomes import ordinal, retry_reason, same_wrong_digest


def test_same_wrong_digest_twice_fails_as_a_manifest_problem(tmp_path: Path) -> None:
    data = b"the data the server has" * 1000
    wrong = hashlib.sha256(b"something else").hexdigest()
    with HttpTestServer() as server:
        url = server.add("/f.bin", data)
        text = (
            'manifest_version = 1\nname = "bad"\ndestination = "bad"\n\n[[files]]\n'
            f'path = "f.bin"\nsha256 = "{wrong}"\nsources.mirrors = ["{url}"]\n'
        )
        with DaemonProcess(tmp_path) as d:
            d.drop("bad.toml", text)
            d.wait_job("bad", "failed", timeout=60)
            shown = d.call({"cmd": "show", "job": "bad"})
            f = shown["files"][0]
            assert f["error"]["code"] == "manifest.checksum_likely_wrong"
            assert f["attempts"] == 2
            assert wrong in f["error"]["message"]
            assert hashlib.sha256(data).hexdigest() in f["error"]["message"]
            assert "likely wrong" in f["error"]["message"]
            assert "mirror" not in f["error"]["hint"]
            assert f["bytes_done"] == 0
            assert not (d.data / "bad/f.bin").exists()


def _mismatch(actual: str, url: str = "http://h.example/f") -> ErrorInfo:
    return ErrorInfo(
        "verify.digest_mismatch",
        "differs",
        "",
        True,
        {"algorithm": "sha256", "expected": "e" * 64, "actual": actual, "url": url},
    )


@pytest.mark.parametrize(
    ("previous", "now", "same"),
    [
        (None, _mismatch("a" * 64), False),
        (_mismatch("a" * 64).as_dict(), _mismatch("a" * 64), True),
        (_mismatch("a" * 64).as_dict(), _mismatch("a" * 64, "http://other/f"), True),
        (_mismatch("a" * 64).as_dict(), _mismatch("b" * 64), False),
        ({"code": "http.status", "details": {}}, _mismatch("a" * 64), False),
    ],
)
def test_same_wrong_digest(previous: dict[str, object] | None, now: ErrorInfo, same: bool) -> None:
    assert (same_wrong_digest(previous, now) is not None) == same


@pytest.mark.parametrize(
    ("n", "text"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"),
     (21, "21st"), (22, "22nd"), (101, "101st"), (111, "111th")],
)  # fmt: skip
def test_ordinal(n: int, text: str) -> None:
    assert ordinal(n) == text


def test_retry_reason_names_host_cause_and_try() -> None:
    info = ErrorInfo(
        "http.status",
        "503 Service Unavailable",
        "",
        True,
        {"url": "http://u:p@h.example:8080/f?token=T"},
    )
    assert (
        retry_reason(info, 40.2, 2)
        == "retrying h.example in 40 s: 503 Service Unavailable (3rd try)"
    )
    bare = ErrorInfo("os.error", "boom", "", True, {})
    assert retry_reason(bare, 5, 0) == "retrying in 5 s: boom (1st try)"

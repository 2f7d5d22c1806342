"""Secrets in mirror URLs (user:password@, ?token=) never reach what a person or a log
reads: status, show, acquirectl's output, events, the log file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.daemon import DaemonProcess
from support.http_server import HttpTestServer

from acquired.common.redact import redact_text, redact_url

SECRETS = ("S3cret", "T0KEN", "s1gn4ture")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://alice:S3cret@h:8/f?token=T0KEN", "http://***@h:8/f?token=***"),
        ("https://h/f?a=1&X-Amz-Signature=abc&x-amz-credential=k", None),
        ("https://h/f?sig=1&keep=2&Key=3", "https://h/f?sig=***&keep=2&Key=***"),
        ("https://tok@[::1]/f", "https://***@[::1]/f"),
        ("https://h/f?tokenish=1", "https://h/f?tokenish=1"),
        ("https://h/plain", "https://h/plain"),
    ],
)
def test_redact_url(url: str, expected: str | None) -> None:
    if expected is None:
        expected = "https://h/f?a=1&X-Amz-Signature=***&x-amz-credential=***"
    assert redact_url(url) == expected


def test_redact_text_finds_urls_in_prose_and_reprs() -> None:
    text = "GET 'http://a:b@h/x?token=t' failed; retrying (https://h/y?sig=s)"
    assert (
        redact_text(text) == "GET 'http://***@h/x?token=***' failed; retrying (https://h/y?sig=***)"
    )
    assert redact_url("https://h/f?session=1", params=["sess*"]) == "https://h/f?session=***"


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_secrets_in_urls_stay_out_of_status_show_and_logs(tmp_path: Path) -> None:
    data = b"x" * 100_000
    with HttpTestServer() as server, DaemonProcess(tmp_path, http={"max_tries": 1}) as d:
        server.add("/f", data)
        base = server.base_url.replace("http://", "http://alice:S3cret@")
        good = f"{base}/f?token=T0KEN"
        missing = f"{base}/missing?X-Amz-Signature=s1gn4ture"
        text = (
            'manifest_version = 1\nname = "sec"\ndestination = "sec"\n'
            f'[[files]]\npath = "f.bin"\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n'
            f"sources.mirrors = {json.dumps([good])}\n"
            f'[[files]]\npath = "g.bin"\nsources.mirrors = {json.dumps([missing])}\n'
        )
        d.drop("sec.toml", text)
        d.wait_job("sec", "failed")
        assert (d.data / "sec/f.bin").read_bytes() == data
        assert server.requests_for("/f"), "the mirror was used, with its secrets"

        outputs = {
            "status --json": d.ctl("status", "--json").stdout,
            "status": d.ctl("status").stdout,
            "show --json": d.ctl("show", "sec", "--json").stdout,
            "show": d.ctl("show", "sec").stdout,
            "logs": d.ctl("--config", str(d.config_path), "logs", "-n", "0").stdout,
            "log file": (d.state / "acquired.log").read_text(),
            "stderr": d.log(),
        }
        shown = json.loads(outputs["show --json"])
        assert shown["files"][1]["state"] == "failed"
        assert "***" in json.dumps(shown), "the failing mirror's URL is shown, redacted"
        for where, text_out in outputs.items():
            assert text_out, where
            assert _leaks(text_out) == [], f"{where} shows a secret:\n{text_out}"


def test_the_patterns_come_from_the_configuration() -> None:
    from acquired.common import redact
    from acquired.daemon.config import Config

    assert Config.from_mapping({}).redact_query_params == list(redact.DEFAULT_QUERY_PARAMS)
    config = Config.from_mapping({"redact_query_params": ["session", "X-Goog-*"]})
    try:
        redact.configure(config.redact_query_params)
        assert redact_url("https://h/f?session=1&token=2&x-goog-signature=3") == (
            "https://h/f?session=***&token=2&x-goog-signature=***"
        )
    finally:
        redact.configure(redact.DEFAULT_QUERY_PARAMS)
    assert redact_url("https://h/f?token=2") == "https://h/f?token=***"

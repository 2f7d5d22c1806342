"""The control socket under load and abuse: many clients at once, thousands of idle
connections, oversize and deeply nested requests — every request answered, no thread per
connection, and the daemon keeps answering."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from support.control import open_idle, raise_fd_limit, raw_exchange, thread_count
from support.daemon import DaemonProcess

from acquired.daemon.control import READ_TIMEOUT, request


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    raise_fd_limit(8192)
    with DaemonProcess(tmp_path / "d") as d:
        yield d


def test_ten_concurrent_clients_get_every_answer(daemon: DaemonProcess) -> None:
    answered: list[int] = []
    errors: list[str] = []

    def client() -> None:
        n = 0
        for _ in range(200):
            try:
                result = request(daemon.socket, {"cmd": "status"})
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            n += "jobs" in result
        answered.append(n)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(answered) == 2000


def test_three_thousand_idle_connections_are_not_three_thousand_threads(
    daemon: DaemonProcess,
) -> None:
    assert daemon.proc is not None
    before = thread_count(daemon.proc.pid)
    socks = open_idle(daemon.socket, 3000)
    try:
        # the daemon has had every connection offered to it once it answers after them
        assert request(daemon.socket, {"cmd": "ping"}, timeout=10)["pid"] == daemon.proc.pid
        during = thread_count(daemon.proc.pid)
        assert request(daemon.socket, {"cmd": "status"}, timeout=10)["jobs"] == []
    finally:
        for s in socks:
            s.close()
    assert during - before < 20, f"{before} threads before, {during} with 3000 idle connections"


def test_oversize_deep_and_silent_requests_get_error_replies(daemon: DaemonProcess) -> None:
    silent = open_idle(daemon.socket, 1)[0]
    silent.setblocking(True)
    silent.settimeout(READ_TIMEOUT + 20)
    try:
        big = json.dumps({"cmd": "status", "pad": "x" * (2 * 1024 * 1024)}).encode() + b"\n"
        reply = raw_exchange(daemon.socket, big)
        assert reply is not None and reply["error"]["code"] == "control.too_large"

        deep = b'{"cmd": "status", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n"
        reply = raw_exchange(daemon.socket, deep)
        assert reply is not None and reply["error"]["code"] == "control.too_deep"

        reply = raw_exchange(daemon.socket, b"not json\n")
        assert reply is not None and reply["error"]["code"] == "control.protocol"

        # a manifest may be larger than other requests: this one is read and judged
        # (and refused for what it says, not for its size)
        text = 'manifest_version = 1\nname = "big"\n' + "# padding\n" * 300_000
        payload = {"cmd": "add", "name": "big.toml", "text": text, "replace": False}
        with pytest.raises(Exception) as err:
            request(daemon.socket, payload)
        assert getattr(err.value, "code", None) == "manifest.invalid", err.value

        assert request(daemon.socket, {"cmd": "status"})["jobs"] == []

        # a connection that never sends a request is answered and closed, not kept
        with silent.makefile("rb") as reader:
            line = reader.readline()
        assert json.loads(line)["error"]["code"] == "control.timeout"
    finally:
        silent.close()
    assert request(daemon.socket, {"cmd": "ping"})["pid"]

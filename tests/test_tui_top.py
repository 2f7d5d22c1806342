"""``acquirectl top`` and ``status`` against a real daemon; ``top`` in a pseudo-terminal."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import DaemonProcess
from support.http_server import Fault, HttpTestServer

# CSI sequences, OSC strings, and two-byte escapes (charset selection, keypad modes)
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def plain(raw: bytes) -> str:
    return ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "")


class PtyProcess:
    """A child process on a pseudo-terminal, its output collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int, cols: int) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # child
            with contextlib.suppress(BaseException):
                os.execvpe(argv[0], argv, env)
            os._exit(127)
        self.pid, self.fd = pid, fd
        self.resize(rows, cols)
        self.raw = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.raw += chunk

    def resize(self, rows: int, cols: int) -> None:
        # the kernel sends SIGWINCH to the terminal's foreground process group
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def mark(self) -> int:
        with self.lock:
            return len(self.raw)

    def text(self, since: int = 0) -> str:
        with self.lock:
            return plain(bytes(self.raw[since:]))

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text(since), re.MULTILINE)
            if match:
                return match
            time.sleep(0.05)
        tail = self.text(since)[-3000:]
        raise AssertionError(f"no {pattern!r} on the terminal within {timeout}s; last:\n{tail}")

    def close(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
        self.reader.join(5)
        os.close(self.fd)
        assert status is not None
        return os.waitstatus_to_exitcode(status)


def _manifest(name: str, url: str, data: bytes) -> str:
    return (
        f'manifest_version = 1\nname = "{name}"\ndestination = "{name}"\n\n'
        f'[[files]]\npath = "big.bin"\nsize = {len(data)}\n'
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\n'
        f'sources.mirrors = ["{url}"]\n'
    )


@pytest.fixture
def mirror() -> Iterator[tuple[HttpTestServer, bytes]]:
    data = os.urandom(4 * 1024 * 1024)
    with HttpTestServer() as server:
        server.add("/big.bin", data)
        # slow enough that the transfer is still running while top draws it
        server.fault("/big.bin", Fault(rate=64 * 1024), times=None)
        yield server, data


def _ctl(socket: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "acquired.daemon.cli", "--socket", str(socket), *args]


def test_top_in_a_terminal_follows_resizes_and_restarts(
    tmp_path: Path, mirror: tuple[HttpTestServer, bytes]
) -> None:
    server, data = mirror
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "", "LINES": ""}
    env = {k: v for k, v in env.items() if v}
    daemon = DaemonProcess(tmp_path).start()
    term = PtyProcess(_ctl(daemon.socket, "top", "--interval", "0.2"), env, rows=30, cols=90)
    try:
        assert daemon.proc is not None
        term.wait_for(rf"acquired 0\.1\.0 · pid {daemon.proc.pid} · up ")
        term.wait_for(r"^no active transfers")
        # a transfer appears as a row with its source
        daemon.drop("slow.toml", _manifest("slow", server.url("/big.bin"), data))
        term.wait_for(r"^slow/big\.bin .*\d+%.*MB.*/s .*http")
        # the layout follows the terminal's width
        rule = term.wait_for(r"^transfers ─+$")
        assert len(rule.group(0)) == 90
        mark = term.mark()
        term.resize(30, 120)
        rule = term.wait_for(r"^transfers ─{100,}$", since=mark)
        assert len(rule.group(0)) == 120
        # the daemon goes away: top says so and keeps trying
        mark = term.mark()
        daemon.stop()
        term.wait_for(r"daemon not reachable at /", since=mark)
        # ... and picks the new daemon up by itself
        mark = term.mark()
        daemon = DaemonProcess(tmp_path).start()
        assert daemon.proc is not None
        term.wait_for(rf"acquired 0\.1\.0 · pid {daemon.proc.pid} · up ", since=mark)
        term.wait_for(r"^slow/big\.bin ", since=mark)
    finally:
        code = term.close()
        daemon.stop()
    assert code == 0
    # left the alternate screen on exit
    assert b"\x1b[?1049l" in term.raw


def test_top_on_a_pipe_prints_one_snapshot(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path) as daemon:
        assert daemon.proc is not None
        out = subprocess.run(
            _ctl(daemon.socket, "top"), capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"acquired 0.1.0 · pid {daemon.proc.pid} · up ")
        assert "files: 0 active · 0 B/s · 0 done · 0 failed" in lines
        assert "\x1b" not in out.stdout
        status = subprocess.run(
            _ctl(daemon.socket, "status"), capture_output=True, text=True, timeout=60, check=False
        )
        assert status.returncode == 0, status.stderr
        assert "files: 0 active · 0 B/s · 0 done · 0 failed" in status.stdout.splitlines()


def test_top_without_a_daemon_fails_with_a_hint(tmp_path: Path) -> None:
    out = subprocess.run(
        _ctl(tmp_path / "none.sock", "top"), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "acquired is not running" in out.stderr
    assert "hint:" in out.stderr

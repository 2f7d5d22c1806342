"""Raw clients of the control socket, for tests that misbehave on purpose."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def raw_exchange(path: Path, data: bytes, timeout: float = 30.0) -> dict[str, Any] | None:
    """Send ``data`` as it is and return the daemon's reply (None: closed without one)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        with sock.makefile("rb") as reader:
            line = reader.readline()
    finally:
        sock.close()
    return json.loads(line) if line else None


def raise_fd_limit(want: int) -> None:
    """Let this process (and the daemons it starts) open ``want`` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def open_idle(path: Path, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        while True:
            try:
                sock.connect(str(path))
                break
            except BlockingIOError:
                time.sleep(0.001)  # the backlog is full for a moment
        socks.append(sock)
    return socks


def thread_count(pid: int) -> int:
    """Threads of a process, from /proc."""
    return len(os.listdir(f"/proc/{pid}/task"))


def run_acquired(
    config: Path, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``acquired --config CONFIG`` to its end (for starts that must be refused)."""
    return subprocess.run(
        [sys.executable, "-m", "acquired.daemon.main", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=config.parent,
    )


def run_ctl(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``acquirectl`` with ``args`` (no --socket unless given)."""
    return subprocess.run(
        [sys.executable, "-m", "acquired.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=cwd,
    )

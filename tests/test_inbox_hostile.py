"""Hostile files in the inbox of a running daemon: a FIFO, a link to /dev/zero, a file
over the size cap, a link planted where the rejection reason is written. Each is rejected
with a reason; the state thread never blocks (``status`` answers) and memory stays flat;
nothing outside the inbox changes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from support.daemon import DaemonProcess
from support.fstree import snapshot

from acquired.daemon.control import request

CAP = 4096


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def move_in(d: DaemonProcess, make: Callable[[Path], object], name: str) -> None:
    """Create an entry beside the inbox and move it in (IN_MOVED_TO), as an operator's
    ``mv`` would."""
    staged = d.root / f"staged-{name}"
    make(staged)
    os.rename(staged, d.inbox / name)


def rejection(d: DaemonProcess, name: str) -> str:
    reason = d.inbox / "rejected" / f"{name}.error.txt"

    def ready() -> bool:
        return reason.exists() and not reason.is_symlink() and reason.stat().st_size > 0

    d.wait_for(ready, 30, f"{name} to be rejected")
    return reason.read_text()


def test_fifo_dev_zero_oversize_and_planted_reason_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    with DaemonProcess(
        tmp_path / "d", inbox={"path": str(tmp_path / "d" / "inbox"), "max_manifest_size": CAP}
    ) as d:
        assert d.proc is not None
        (d.inbox / "rejected").mkdir(parents=True, exist_ok=True)
        os.symlink(victim, d.inbox / "rejected" / "bad.toml.error.txt")
        before = snapshot(outside)

        move_in(d, os.mkfifo, "pipe.toml")
        move_in(d, lambda p: os.symlink("/dev/zero", p), "zero.toml")
        move_in(d, lambda p: p.write_bytes(b"#" * (CAP + 1)), "huge.toml")
        move_in(d, lambda p: p.write_text("this is not toml ["), "bad.toml")

        assert "FIFO" in rejection(d, "pipe.toml")
        assert "symbolic link" in rejection(d, "zero.toml")
        assert f"larger than {CAP} bytes" in rejection(d, "huge.toml")
        assert "bad.toml" in rejection(d, "bad.toml")
        # The state thread is free: status answers at once.
        status = request(d.socket, {"cmd": "status"}, timeout=5)
        assert status["daemon"]["pid"] == d.proc.pid
        assert rss_bytes(d.proc.pid) < 512 * 1024**2
        rejected = d.inbox / "rejected"
        assert (rejected / "pipe.toml").is_fifo()
        assert os.readlink(rejected / "zero.toml") == "/dev/zero"
        assert sorted(p.name for p in d.inbox.iterdir()) == ["rejected"]

    assert snapshot(outside) == before
    assert victim.read_text() == "precious"

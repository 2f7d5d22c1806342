"""Start-up refuses what it cannot own — a state folder or a socket in use, a socket path
AF_UNIX cannot hold — with a message and an exit code, never an abort."""

from __future__ import annotations

import signal
from pathlib import Path

from support.control import run_acquired
from support.daemon import DaemonProcess, write_config

from acquired.daemon.control import request


def _second_config(first: DaemonProcess, where: Path, **changes: str) -> Path:
    values = {**first.config, **changes}
    where.mkdir(parents=True, exist_ok=True)
    path = where / "acquired.toml"
    write_config(path, values)
    return path


def test_a_second_daemon_on_the_same_state_and_socket_is_refused(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path / "one") as first:
        config = _second_config(first, tmp_path / "two")
        for _ in range(3):  # the abort it replaces came in most starts, not all
            done = run_acquired(config)
            assert done.returncode == 1, done.stderr
            assert "in use by another acquired" in done.stderr
            assert "terminate called" not in done.stderr
        assert request(first.socket, {"cmd": "ping"})["pid"] == first.proc.pid  # type: ignore[union-attr]


def test_a_second_daemon_on_the_same_socket_is_refused(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path / "one") as first:
        config = _second_config(first, tmp_path / "two", state_dir=str(tmp_path / "two/state"))
        for _ in range(3):
            done = run_acquired(config)
            assert done.returncode == 1, done.stderr
            assert f"already listening on {first.socket}" in done.stderr
            assert "terminate called" not in done.stderr
        assert request(first.socket, {"cmd": "ping"})["pid"]


def test_a_second_daemon_on_the_same_state_with_its_own_socket_is_refused(
    tmp_path: Path,
) -> None:
    with DaemonProcess(tmp_path / "one") as first:
        config = _second_config(first, tmp_path / "two", runtime_dir=str(tmp_path / "two/run"))
        done = run_acquired(config)
        assert done.returncode == 1, done.stderr
        assert f"state folder {first.state} is in use by another acquired (pid" in done.stderr
        assert not (tmp_path / "two/run/acquired.sock").exists()


def test_a_killed_daemon_leaves_nothing_that_blocks_the_next_start(tmp_path: Path) -> None:
    first = DaemonProcess(tmp_path / "one").start()
    first.kill(signal.SIGKILL)
    with DaemonProcess(tmp_path / "one") as again:
        assert request(again.socket, {"cmd": "ping"})["pid"] == again.proc.pid  # type: ignore[union-attr]


def test_a_socket_path_too_long_for_af_unix_is_a_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / ("r" * 120)
    config = tmp_path / "acquired.toml"
    write_config(
        config,
        {
            "data_root": str(tmp_path / "data"),
            "inbox": str(tmp_path / "inbox"),
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(run_dir),
            "torrent": {"listen_port": 0, "listen_interfaces": ["127.0.0.1"], "dht": False},
        },
    )
    done = run_acquired(config)
    assert done.returncode == 2, done.stderr
    assert "a Unix socket path may have at most 107" in done.stderr
    assert "terminate called" not in done.stderr

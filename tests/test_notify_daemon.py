"""The real daemon against a real NOTIFY_SOCKET: readiness order, watchdog, status,
reload, stop, and a hung scheduler that stops pinging."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonProcess
from support.notify_socket import Notification, NotifySocket

from acquired.daemon.control import request


@pytest.fixture
def notify() -> NotifySocket:
    with NotifySocket() as ns:
        yield ns


def _daemon(tmp_path: Path, notify: NotifySocket, **env: str) -> DaemonProcess:
    return DaemonProcess(tmp_path, env={**notify.env(), **env})


def test_ready_only_once_the_control_socket_answers(tmp_path: Path, notify: NotifySocket) -> None:
    daemon = _daemon(tmp_path, notify)

    def probe(note: Notification) -> dict[str, object] | None:
        # runs in the receiver thread the moment READY=1 arrives, before anything else
        if note.fields.get("READY") != "1":
            return None
        try:
            status = request(daemon.socket, {"cmd": "status"}, timeout=5)
        except Exception as exc:
            return {"answer": f"{type(exc).__name__}: {exc}"}
        return {
            "answer": "ok",
            "store": daemon.state.joinpath("acquired.db").exists(),
            "status": status,
        }

    notify.on_message(probe)
    with daemon:
        ready = notify.wait_for("READY", "1", timeout=30)
        assert ready.extra["answer"] == "ok", ready.extra
        assert ready.extra["store"] is True
        status: Any = ready.extra["status"]
        assert daemon.proc is not None
        assert status["daemon"]["pid"] == daemon.proc.pid
        # sent by the main process itself, as NotifyAccess=main requires
        assert ready.pid == daemon.proc.pid


def test_watchdog_pings_and_status_line(tmp_path: Path, notify: NotifySocket) -> None:
    with _daemon(tmp_path, notify, WATCHDOG_USEC="1000000"):
        first = notify.wait_for("WATCHDOG", "1", timeout=30)
        start = notify.index_of(first)
        notify.wait_for("WATCHDOG", "1", timeout=30, after=start + 1)
        status = notify.wait_for("STATUS", timeout=30)
        assert re.fullmatch(
            r"\d+ active · [0-9.]+ [kMGT]?B/s · \d+ done · \d+ failed", status.fields["STATUS"]
        ), status.fields


def test_reload_and_stop(tmp_path: Path, notify: NotifySocket) -> None:
    daemon = _daemon(tmp_path, notify).start()
    try:
        ready = notify.wait_for("READY", "1", timeout=30)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1", timeout=30)
        assert int(reloading.fields["MONOTONIC_USEC"]) > 0
        again = notify.wait_for("READY", "1", timeout=30, after=notify.index_of(reloading))
        assert notify.index_of(ready) < notify.index_of(reloading) < notify.index_of(again)
        daemon.wait_for(lambda: "configuration reloaded" in daemon.log(), 30, "the reload")
        code = daemon.kill(signal.SIGTERM)
        assert code == 0, daemon.log()
        notify.wait_for("STOPPING", "1", timeout=10)
    finally:
        daemon.stop()


def test_hung_scheduler_stops_pinging(tmp_path: Path, notify: NotifySocket) -> None:
    with _daemon(tmp_path, notify, WATCHDOG_USEC="1000000", ACQUIRED_TEST_FAULTS="1") as daemon:
        notify.wait_for("WATCHDOG", "1", timeout=30)
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(daemon.socket))
            conn.sendall(json.dumps({"cmd": "test-hang"}).encode() + b"\n")
            daemon.wait_for(
                lambda: "the state thread stops responding" in daemon.log(), 30, "the hang"
            )
            # from now on the scheduler's loop is stuck: the pings stop (systemd would
            # kill the daemon after WatchdogSec); a few periods show it
            count = len(notify.values("WATCHDOG"))
            time.sleep(3)
            assert len(notify.values("WATCHDOG")) <= count + 1
        daemon.kill(signal.SIGKILL)

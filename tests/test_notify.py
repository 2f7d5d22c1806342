"""Notifier over a real NOTIFY_SOCKET (systemd-python's sd_notify, a real datagram socket)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.notify_socket import NotifySocket, parse

from acquired.daemon.notify import Notifier, format_status
from acquired.daemon.units import format_bytes, format_rate


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> NotifySocket:
    with NotifySocket() as ns:
        for name, value in ns.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield ns


def test_parse_datagram() -> None:
    assert parse(b"READY=1\nSTATUS=a = b\n") == {"READY": "1", "STATUS": "a = b"}


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sent: list[str] = []
    notifier = Notifier(sender=sent.append)
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("y")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    notifier.extend_timeout(5)
    assert sent == []
    # and the real sender does not fail without a socket either
    Notifier().ready()


def test_lifecycle_messages_arrive_in_order(notify: NotifySocket) -> None:
    n = Notifier()
    assert n.enabled
    n.status("starting")
    n.ready("0 active")
    n.reloading()
    n.ready()
    n.stopping("saving resume data")
    n.extend_timeout(30_000_000)
    last = notify.wait_for("EXTEND_TIMEOUT_USEC")
    assert last.fields["EXTEND_TIMEOUT_USEC"] == "30000000"
    fields = [m.fields for m in notify.messages]
    assert fields[0] == {"STATUS": "starting"}
    assert fields[1] == {"READY": "1", "STATUS": "0 active"}
    assert fields[2]["RELOADING"] == "1"
    assert int(fields[2]["MONOTONIC_USEC"]) > 0
    assert fields[3] == {"READY": "1"}
    assert fields[4] == {"STOPPING": "1", "STATUS": "saving resume data"}
    # the service manager learns the sender's pid from the socket credentials
    assert {m.pid for m in notify.messages} == {os.getpid()}


def test_status_is_one_line_and_not_repeated(notify: NotifySocket) -> None:
    n = Notifier()
    n.status("1 active")
    n.status("1 active")
    n.status("2 active\nREADY=1")
    n.status("3 active")
    notify.wait_for("STATUS", "3 active")
    assert notify.values("STATUS") == ["1 active", "2 active READY=1", "3 active"]
    assert notify.values("READY") == []


def test_watchdog_pings_are_rate_limited(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    now = [100.0]
    n = Notifier(clock=lambda: now[0])
    assert n.watchdog_interval() == 1.0
    for t in (100.0, 100.1, 100.2, 100.6, 100.7, 101.2):
        now[0] = t
        n.watchdog()
    n.status("done")
    notify.wait_for("STATUS", "done")
    # 2 s period, at most 4 pings per period: one per 0.5 s
    assert notify.values("WATCHDOG") == ["1", "1", "1"]


def test_watchdog_without_period_sends_every_call(notify: NotifySocket) -> None:
    n = Notifier()
    assert n.watchdog_interval() is None
    n.watchdog()
    n.watchdog()
    n.status("done")
    notify.wait_for("STATUS", "done")
    assert notify.values("WATCHDOG") == ["1", "1"]


def test_watchdog_interval_belongs_to_the_main_pid() -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "30000000"}
    assert Notifier(environ=env).watchdog_interval() == 15.0
    assert Notifier(environ={**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15
    assert Notifier(environ={**env, "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier(environ={**env, "WATCHDOG_USEC": "junk"}).watchdog_interval() is None


def test_child_process_notifies_with_its_own_pid(notify: NotifySocket) -> None:
    code = (
        "from acquired.daemon.notify import Notifier\n"
        "n = Notifier(); n.ready('child up'); n.watchdog()\n"
    )
    child = subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
    assert child.returncode == 0
    ready = notify.wait_for("READY", "1")
    assert ready.fields["STATUS"] == "child up"
    notify.wait_for("WATCHDOG", "1")
    assert ready.pid not in (None, os.getpid())


def test_format_status_line() -> None:
    snapshot = {
        "counts": {"active": 3, "queued": 0, "done": 12, "failed": 1, "paused": 0},
        "active": [{"speed": 40e6}, {"speed": 5.2e6}, {"speed": None}],
    }
    assert format_status(snapshot) == "3 active · 45.2 MB/s · 12 done · 1 failed"
    snapshot["counts"] |= {"queued": 4, "paused": 2}
    assert format_status(snapshot) == (
        "3 active · 45.2 MB/s · 4 queued · 2 paused · 12 done · 1 failed"
    )
    assert format_status({}) == "0 active · 0 B/s · 0 done · 0 failed"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1500, "1.5 kB"),
        (170_498_071, "170.5 MB"),
        (999_960, "1.0 MB"),
        (2.5e12, "2.5 TB"),
        (3e15, "3.0 PB"),
        (None, "0 B"),
    ],
)
def test_human_bytes(value: float | None, text: str) -> None:
    assert format_bytes(value) == text


def test_human_rate() -> None:
    assert format_rate(45.2e6) == "45.2 MB/s"
    assert format_rate(None) == "0 B/s"

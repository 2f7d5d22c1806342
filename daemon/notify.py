"""sd_notify through systemd-python; every call is a no-op outside systemd."""

from __future__ import annotations

import os

from systemd import daemon as sd_daemon


class Notifier:
    """Tells the service manager about readiness, status, reloads and liveness."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def _send(self, state: str) -> None:
        if self.enabled:
            sd_daemon.notify(state)

    def ready(self) -> None:
        self._send("READY=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> None:
        self._send(f"EXTEND_TIMEOUT_USEC={usec}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), or None when no watchdog is set."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2e6

"""sd_notify through systemd-python; every call is a no-op outside systemd.

The daemon tells the service manager:

- ``READY=1`` once the store is open, the control socket listens and the watchers run
  (``Notifier.ready``), again after a reload;
- ``STATUS=...`` with a one-line summary (``format_status`` builds it from the status
  snapshot; repeated identical texts are not re-sent);
- ``WATCHDOG=1`` from the scheduler's own loop (``Notifier.watchdog``; cheap to call on
  every iteration, it sends at most a few pings per watchdog period);
- ``RELOADING=1`` around a SIGHUP reload, ``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC=``
  while saving state at shutdown.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from acquired.daemon.units import format_rate
from systemd import daemon as sd_daemon

#: How many pings per watchdog period ``watchdog()`` lets through at most. systemd's
#: advice is to ping at half the period; four leaves room for a slow iteration.
PINGS_PER_PERIOD = 4


def _default_sender(state: str) -> None:
    sd_daemon.notify(state)


class Notifier:
    """Tells the service manager about readiness, status, reloads and liveness.

    ``enabled`` is true when ``NOTIFY_SOCKET`` is set (that is, under systemd with
    ``Type=notify``); otherwise every method returns without doing anything.
    ``sender`` is the seam for tests that cannot reach a socket; the default is
    ``systemd.daemon.notify``. Methods are thread-safe.
    """

    def __init__(
        self,
        sender: Callable[[str], object] | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._environ = env
        self._sender = sender or _default_sender
        self._clock = clock
        self._lock = threading.Lock()
        self._last_status: str | None = None
        self._last_ping: float | None = None

    def _send(self, state: str) -> None:
        if self.enabled:
            self._sender(state)

    def ready(self, status: str | None = None) -> None:
        """Startup or reload finished: the daemon serves requests from now on."""
        lines = ["READY=1"]
        with self._lock:
            if status is not None:
                lines.append(f"STATUS={_one_line(status)}")
                self._last_status = _one_line(status)
        self._send("\n".join(lines))

    def reloading(self) -> None:
        """A reload (SIGHUP) began; ``ready()`` must follow when it is done.

        ``MONOTONIC_USEC`` lets newer systemd versions (``Type=notify-reload``) match
        the message to the reload request; older versions ignore it.
        """
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str | None = None) -> None:
        """Shutdown began (SIGTERM)."""
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        self._send("\n".join(lines))

    def status(self, text: str) -> None:
        """Set the one-line status shown by ``systemctl status``; repeats are not sent."""
        text = _one_line(text)
        with self._lock:
            if text == self._last_status:
                return
            self._last_status = text
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Liveness ping; call it from the scheduler's loop as often as it turns.

        Pings are rate-limited to ``PINGS_PER_PERIOD`` per ``WatchdogSec``, so a loop
        that turns many times a second does not flood the service manager. Without a
        watchdog (no ``WATCHDOG_USEC``) every call sends.
        """
        if not self.enabled:
            return
        interval = self.watchdog_interval()
        now = self._clock()
        with self._lock:
            if (
                interval is not None
                and self._last_ping is not None
                and now - self._last_ping < (2 * interval) / PINGS_PER_PERIOD
            ):
                return
            self._last_ping = now
        self._send("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> None:
        """Ask for ``usec`` more microseconds before the start/stop timeout fires."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), or None when no watchdog is set."""
        usec = self._environ.get("WATCHDOG_USEC")
        pid = self._environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2e6 if value > 0 else None


def _one_line(text: str) -> str:
    # a newline would start a new NAME=value assignment in the notify datagram
    return " ".join(text.split())


def format_status(snapshot: Mapping[str, Any]) -> str:
    """The ``STATUS=`` line from a status snapshot (docs/architecture.md).

    ``"3 active · 45.2 MB/s · 12 done · 1 failed"``; queued and paused files are named
    only when there are some.
    """
    counts = snapshot.get("counts") or {}
    active = snapshot.get("active") or []
    speed = sum(float(item.get("speed") or 0) for item in active)
    parts = [f"{int(counts.get('active', len(active)) or 0)} active", format_rate(speed)]
    for key in ("queued", "paused"):
        if counts.get(key):
            parts.append(f"{int(counts[key])} {key}")
    parts.append(f"{int(counts.get('done') or 0)} done")
    parts.append(f"{int(counts.get('failed') or 0)} failed")
    return " · ".join(parts)

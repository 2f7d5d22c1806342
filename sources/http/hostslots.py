"""Connections per host, counted across every download of a process.

One download caps its own connections per host; the daemon runs several downloads at
once, and a server sees all of them. ``HostSlots`` is the shared count they all take a
slot from before they open a connection to a host, and give back after.
"""

from __future__ import annotations

import threading


class HostSlots:
    """A thread-safe count of open connections per host, with one cap for every host."""

    def __init__(self, cap: int) -> None:
        self._cap = max(1, cap)
        self._used: dict[str, int] = {}
        self._cond = threading.Condition()

    @property
    def cap(self) -> int:
        """Connections allowed per host."""
        return self._cap

    def set_cap(self, cap: int) -> None:
        """Change the cap (on a configuration reload); open connections are not closed."""
        with self._cond:
            self._cap = max(1, cap)
            self._cond.notify_all()

    def used(self, host: str) -> int:
        """Connections open to ``host`` now."""
        with self._cond:
            return self._used.get(host, 0)

    def full(self, host: str) -> bool:
        """Whether ``host`` has no free slot."""
        with self._cond:
            return self._used.get(host, 0) >= self._cap

    def try_take(self, host: str) -> bool:
        """Take a slot for ``host`` if one is free."""
        with self._cond:
            if self._used.get(host, 0) >= self._cap:
                return False
            self._used[host] = self._used.get(host, 0) + 1
            return True

    def take(self, host: str, cancel: threading.Event, poll: float = 0.2) -> bool:
        """Wait for a slot for ``host``; False if ``cancel`` was set first."""
        with self._cond:
            while self._used.get(host, 0) >= self._cap:
                if cancel.is_set():
                    return False
                self._cond.wait(poll)
            self._used[host] = self._used.get(host, 0) + 1
            return True

    def release(self, host: str) -> None:
        """Give back a slot taken for ``host`` and wake the waiters."""
        with self._cond:
            left = self._used.get(host, 0) - 1
            if left > 0:
                self._used[host] = left
            else:
                self._used.pop(host, None)
            self._cond.notify_all()

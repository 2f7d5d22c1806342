"""A thread-safe token bucket shared by the connections it limits (global or per job)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Limits the bytes per second taken through ``acquire`` by any number of threads.

    ``rate`` None (or <= 0) means unlimited. The bucket holds at most ``burst`` bytes
    (default: a tenth of a second's worth, at least 4 KiB), so the average over any
    second stays within a few percent of ``rate``. ``set_rate`` may be called at any
    time (the daemon changes limits live).
    """

    def __init__(
        self,
        rate: float | None,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._rate: float | None = None
        self._burst = 0.0
        self._explicit_burst = burst
        self._tokens = 0.0
        self._stamp = clock()
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        """Bytes per second, or None when unlimited."""
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """Change the limit; None or <= 0 lifts it."""
        with self._lock:
            self._refill()
            was_limited = self._rate is not None
            self._rate = rate if rate and rate > 0 else None
            if self._rate is None:
                self._burst = 0.0
                self._tokens = 0.0
            else:
                self._burst = self._explicit_burst or max(4096.0, self._rate / 10)
                # A new limit starts with a full bucket; a changed one keeps its debt.
                self._tokens = min(self._tokens, self._burst) if was_limited else self._burst

    def chunk_size(self, default: int) -> int:
        """A read size that keeps each ``acquire`` well under the burst."""
        rate = self._rate
        if rate is None:
            return default
        return max(4096, min(default, int(self._burst)))

    def reserve(self, amount: int) -> float:
        """Take ``amount`` bytes now; returns how long the caller must wait before using
        them (0 when the bucket had them). Debt makes later callers wait too, so the
        long-run rate holds whatever the read sizes."""
        with self._lock:
            if self._rate is None:
                return 0.0
            self._refill()
            self._tokens -= amount
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self._rate

    def acquire(self, amount: int, cancelled: threading.Event | None = None) -> float:
        """Take ``amount`` bytes, sleeping as needed; returns the seconds slept. Returns
        early when ``cancelled`` is set."""
        delay = self.reserve(amount)
        if delay > 0:
            if cancelled is not None:
                cancelled.wait(delay)
            else:
                time.sleep(delay)
        return delay

    def _refill(self) -> None:
        now = self._clock()
        if self._rate is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

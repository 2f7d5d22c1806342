"""The mirrors of one download: their standing, ranking, backoff, dropping and the
connection cap per host, and the error the download fails with when none is left.

``MirrorPool`` is shared by the transfer threads of one download; its condition
variable (``pool.cond``) also guards the segment scheduler's round state, so one lock
orders every decision about who fetches what from where.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from acquired.sources.errors import DiskFull, SourceError
from acquired.sources.http.errors import (
    AllMirrorsFailed,
    DownloadCancelled,
    HttpError,
    RangesUnsupported,
    VersionMismatch,
)
from acquired.sources.http.events import MirrorDropped, MirrorStat, Retrying
from acquired.sources.http.model import HttpOptions
from acquired.sources.http.protocol import backoff_delay
from acquired.sources.http.ranking import allocate, host_of

log = logging.getLogger("acquired.sources.http")

RATE_WINDOW = 3.0
"""Seconds over which every speed of the engine is measured."""


class RateWindow:
    """Counters sampled over time; rates over the last ``RATE_WINDOW`` seconds.

    Each sample is (time, bytes, connection-seconds); ``rate`` is bytes per second,
    ``per_connection`` bytes per connection-second (None until there is enough
    connection time to judge)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int, float]] = deque(maxlen=64)

    def add(self, now: float, received: int, conn_seconds: float = 0.0) -> None:
        """Record the counters as they are at ``now``."""
        self.samples.append((now, received, conn_seconds))

    def _oldest_in_window(self) -> tuple[float, int, float] | None:
        if len(self.samples) < 2:
            return None
        t1 = self.samples[-1][0]
        for sample in self.samples:
            if t1 - sample[0] <= RATE_WINDOW:
                return sample
        return None

    def rate(self) -> float:
        """Bytes/s over the window (0 until two samples are in it)."""
        first = self._oldest_in_window()
        if first is None:
            return 0.0
        t0, b0, _ = first
        t1, b1, _ = self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def per_connection(self) -> float | None:
        """Bytes per connection-second over the window, or None without enough data."""
        first = self._oldest_in_window()
        if first is None:
            return None
        _, b0, c0 = first
        _, b1, c1 = self.samples[-1]
        return (b1 - b0) / (c1 - c0) if c1 - c0 >= 0.5 else None


@dataclass
class Mirror:
    """One URL's standing in this download."""

    url: str
    host: str = ""
    tries: int = 0  # consecutive failures
    restarts: int = 0  # times this mirror's answers made the file start again
    best_offset: int = 0  # furthest the file got on this mirror (progress resets tries)
    not_before: float = 0.0  # monotonic time before which it is backing off
    dropped: HttpError | None = None
    last_error: HttpError | None = None
    received: int = 0
    connections: int = 0
    conn_seconds: float = 0.0  # integral of open connections over time
    conn_rate: float | None = None  # bytes/s per connection, measured live
    window: RateWindow = field(default_factory=RateWindow)

    def __post_init__(self) -> None:
        self.host = self.host or host_of(self.url)

    @property
    def usable(self) -> bool:
        """Not dropped."""
        return self.dropped is None

    def measure(self, now: float, dt: float) -> None:
        """Sample the counters; speed per connection follows, so a mirror that slows
        down loses connections."""
        self.conn_seconds += self.connections * dt
        self.window.add(now, self.received, self.conn_seconds)
        rate = self.window.per_connection()
        if rate is not None:
            self.conn_rate = rate


class MirrorPool:
    """The mirrors of one file and every decision about them."""

    def __init__(
        self,
        urls: list[str],
        options: HttpOptions,
        name: str,
        cancel: threading.Event,
        emit: Callable[[object], None],
    ) -> None:
        self.mirrors = [Mirror(u) for u in dict.fromkeys(urls)]
        self.options = options
        self.name = name
        self.cancel = cancel
        self.emit = emit
        self.cond = threading.Condition(threading.RLock())
        self.restrict: str | None = None  # after a digest mismatch: this mirror only

    def usable(self) -> list[Mirror]:
        """The mirrors not dropped (restricted to one after a mismatch)."""
        return [
            m
            for m in self.mirrors
            if m.usable and (self.restrict is None or m.url == self.restrict)
        ]

    # -- choosing -------------------------------------------------------------------------
    def first_choice(self, reference: str | None) -> Mirror:
        """The mirror for a request that decides the file's version: ``reference`` (where
        the validator of the data on disk is from) when resuming, else the one that made
        the file restart least, the earliest ready."""
        usable = self.usable()
        if not usable:
            raise self.final_error()
        for m in usable:
            if m.url == reference:
                return m
        return min(usable, key=lambda m: (m.restarts, m.not_before))

    def pick(self, workers: int, now: float) -> tuple[Mirror | None, float | None]:
        """The mirror a free segment worker should use, or how long to wait for one
        (None: no usable mirror at all). Connections are spread by measured speed."""
        usable = self.usable()
        if not usable:
            return None, None
        ready = [m for m in usable if m.not_before <= now]
        if not ready:
            return None, min(m.not_before for m in usable) - now
        target = allocate(
            {m.url: m.conn_rate for m in ready},
            workers,
            per_host=self.options.per_host_connections,
            hosts={m.url: m.host for m in ready},
        )
        best: Mirror | None = None
        best_deficit = 0
        for m in ready:
            deficit = target[m.url] - m.connections
            if deficit > best_deficit and self.host_free(m.host):
                best, best_deficit = m, deficit
        return best, (0.0 if best is not None else 0.1)

    # -- the per-host cap ----------------------------------------------------------------
    def host_free(self, host: str) -> bool:
        """Whether one more connection to ``host`` fits under both caps: this file's
        ``per_host_connections`` and the process-wide ``host_slots``."""
        with self.cond:
            used = sum(m.connections for m in self.mirrors if m.host == host)
        if used >= self.options.per_host_connections:
            return False
        slots = self.options.host_slots
        return slots is None or not slots.full(host)

    def connect(self, mirror: Mirror, *, wait: bool) -> bool:
        """Count one more connection to ``mirror``, taking its host's slot (waiting for
        one when ``wait``). False when no slot was taken (full, or cancelled)."""
        slots = self.options.host_slots
        if slots is not None:
            taken = slots.take(mirror.host, self.cancel) if wait else slots.try_take(mirror.host)
            if not taken:
                return False
        with self.cond:
            mirror.connections += 1
        return True

    def disconnect(self, mirror: Mirror) -> None:
        """Give back what ``connect`` took."""
        with self.cond:
            mirror.connections -= 1
            self.cond.notify_all()
        if self.options.host_slots is not None:
            self.options.host_slots.release(mirror.host)

    # -- failures ------------------------------------------------------------------------
    def check_cancel(self) -> None:
        """Raise DownloadCancelled once ``cancel()`` was called."""
        if self.cancel.is_set():
            raise DownloadCancelled(f"download of {self.name} cancelled")

    def failed(self, mirror: Mirror, exc: SourceError) -> None:
        """Count a failure against ``mirror``: back off, or drop it. Raises when the
        download as a whole must stop (cancel, disk full)."""
        if isinstance(exc, DownloadCancelled) or self.cancel.is_set():
            raise DownloadCancelled(f"download of {self.name} cancelled") from None
        if isinstance(exc, DiskFull):
            raise exc
        assert isinstance(exc, HttpError)
        with self.cond:
            mirror.last_error = exc
            if not exc.retryable:
                self.drop(mirror, exc)
                return
            mirror.tries += 1
            if mirror.tries >= self.options.max_tries:
                self.drop(mirror, exc)
                return
            delay = backoff_delay(mirror.tries, self.options.backoff_base, self.options.backoff_max)
            retry_after = exc.details.get("retry_after")
            if isinstance(retry_after, float | int):
                if retry_after > self.options.retry_after_max:
                    self.drop(mirror, exc)
                    return
                delay = max(float(retry_after), 0.0)
            mirror.not_before = time.monotonic() + delay
            self.cond.notify_all()
        log.debug("retrying %s in %.1fs (try %d): %s", mirror.url, delay, mirror.tries, exc)
        self.emit(Retrying(mirror.url, mirror.tries, delay, str(exc)))

    def succeeded(self, mirror: Mirror) -> None:
        """It delivered: a blip before was not a broken mirror."""
        mirror.tries = 0

    def drop(self, mirror: Mirror, exc: HttpError) -> None:
        """Stop using ``mirror`` for this file."""
        with self.cond:
            if mirror.dropped is not None:
                return
            mirror.dropped = exc
            mirror.last_error = exc
            self.cond.notify_all()
        log.debug("dropping mirror %s: %s", mirror.url, exc)
        self.emit(MirrorDropped(mirror.url, exc.code, str(exc)))

    def changed(
        self, mirror: Mirror, reason: str, max_restarts: int, reference: str | None
    ) -> None:
        """``mirror`` made the file start again (another version). One that keeps doing
        so is dropped; mirrors dropped for disagreeing with it (the ``reference``) are
        judged again."""
        mirror.restarts += 1
        if mirror.url == reference:
            self.reinstate(VersionMismatch)
        if mirror.restarts > max_restarts:
            self.drop(
                mirror,
                VersionMismatch(
                    f"{mirror.url} changed the file under the download {mirror.restarts} "
                    f"times: {reason}",
                    url=mirror.url,
                    reason=reason,
                ),
            )

    def reinstate(self, kind: type[HttpError]) -> None:
        """Use again the mirrors dropped with ``kind`` for disagreeing with a reference
        (never the ones dropped for changing themselves)."""
        with self.cond:
            for m in self.mirrors:
                if isinstance(m.dropped, kind) and m.dropped.details.get("reference"):
                    m.dropped = None
                    m.tries = 0

    def fall_back_to_stream(self) -> bool:
        """Every mirror is dropped: if some only lack range support, make them usable for
        one stream and say True."""
        no_ranges = [m for m in self.mirrors if isinstance(m.dropped, RangesUnsupported)]
        for m in no_ranges:
            m.dropped = None
            m.tries = 0
        return bool(no_ranges)

    def next_ranged_alternative(self, mirror: Mirror) -> bool:
        """Whether another usable mirror might still serve ranges."""
        return any(
            m.usable and m is not mirror and not isinstance(m.last_error, RangesUnsupported)
            for m in self.mirrors
        )

    def final_error(self) -> HttpError:
        """The error the file fails with: the one mirror's, or all of them."""
        errors = [m.last_error for m in self.mirrors if m.last_error is not None]
        if not errors:
            return AllMirrorsFailed(f"no usable mirror for {self.name}")
        return errors[0] if len(errors) == 1 else all_failed(errors, self.name)

    def after_mismatch(self, bad: set[str], exc: HttpError) -> bool:
        """After wrong data: drop the mirror that served it when that is known (one
        contributor), else fetch again from the fastest single mirror so the next
        mismatch names the culprit. True when a mirror is left to try."""
        for mirror in self.mirrors:
            mirror.best_offset = 0
            mirror.tries = 0
            if isinstance(mirror.dropped, VersionMismatch):
                mirror.dropped = None  # it disagreed with a reference that turned out wrong
        if len(bad) == 1:
            for mirror in self.mirrors:
                if mirror.url in bad and mirror.usable:
                    self.drop(mirror, exc)
            self.restrict = None
        else:
            usable = [m for m in self.mirrors if m.usable]
            if usable:
                best = max(usable, key=lambda m: m.conn_rate or 0.0)
                self.restrict = best.url
                log.warning(
                    "data from several mirrors was wrong; fetching %s again from %s only",
                    self.name,
                    best.url,
                )
        return any(m.usable for m in self.mirrors)

    # -- reporting -----------------------------------------------------------------------
    def measure(self, now: float, dt: float) -> None:
        """Sample every mirror's counters (the watchdog's tick)."""
        for m in self.mirrors:
            m.measure(now, dt)

    def stats(self, now: float) -> tuple[MirrorStat, ...]:
        """Each mirror as Progress reports it."""
        stats = []
        for m in self.mirrors:
            reason: str | None
            if m.dropped is not None:
                state, reason = "dropped", str(m.dropped)
            elif m.not_before > now:
                state, reason = "backoff", str(m.last_error) if m.last_error else None
            else:
                state, reason = ("active" if m.connections else "idle"), None
            stats.append(
                MirrorStat(
                    url=m.url,
                    rate=m.window.rate(),
                    connections=m.connections,
                    bytes=m.received,
                    state=state,
                    reason=reason,
                )
            )
        return tuple(stats)


def all_failed(errors: list[HttpError], name: str) -> HttpError:
    """One error for several mirrors' failures: the shared one when they agree."""
    listing = {str(e.details.get("url", i)): f"{e.code}: {e}" for i, e in enumerate(errors)}
    if len({e.code for e in errors}) == 1:
        first = errors[0]
        first.details["mirrors"] = listing
        return first
    return AllMirrorsFailed(
        f"all {len(errors)} mirrors of {name} failed: "
        + "; ".join(f"{k}: {v}" for k, v in listing.items()),
        mirrors=listing,
    )

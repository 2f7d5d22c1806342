"""The URL-list runner's hold on its work queue while the fleet's Redis comes and goes.

A Redis work queue raises :class:`~acquired.daemon.workqueue.ClusterUnreachable` from any
call while the server is away, and buffers the acknowledgements it is given meanwhile.
The runner must not fail its job for that: it keeps the shards it holds, finishes them,
lets their acks wait, claims nothing new, and says why in its report (status) and once in
the log (journald) when the link goes down and again when it comes back. This module is
that behaviour, apart from the runner's loop; with the SQLite queue it changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from acquired.daemon.workqueue import ClusterUnreachable, Lease, QueueCounts, WorkQueue

LOG = logging.getLogger("acquired.urllist")

__all__ = ["QueueLink", "open_with_backoff", "unreachable_reason"]

EMPTY = QueueCounts({}, {}, 0)


def unreachable_reason(error: str, buffered: int) -> str:
    """The hold reason shown while Redis does not answer. Pure."""
    held = f"; {buffered} shard report(s) buffered" if buffered else ""
    return f"waiting for Redis (claiming paused{held}): {error}"


def open_with_backoff(
    open_queue: Callable[[], WorkQueue],
    stop: threading.Event,
    waiting: Callable[[str], None],
    job: str,
    cap: float = 10.0,
) -> WorkQueue | None:
    """``open_queue()``, tried again with a growing pause while Redis does not answer
    (``waiting`` is told why each time); None once ``stop`` is set. Any other error (a bad
    URL, a refused password) is the caller's: those do not heal by waiting."""
    delay = 0.5
    logged = False
    while not stop.is_set():
        try:
            queue = open_queue()
        except ClusterUnreachable as exc:
            if not logged:
                LOG.warning(
                    "[%s] %s; trying again with backoff",
                    job,
                    exc,
                    extra={"job": job, "code": exc.code},
                )
                logged = True
            waiting(unreachable_reason(str(exc), 0))
            stop.wait(delay)
            delay = min(delay * 2, cap)
            continue
        if logged:
            LOG.info("[%s] Redis answers; fetching shards", job, extra={"job": job})
        return queue
    return None


class QueueLink:
    """Calls the runner makes on its queue that must survive Redis being away: the
    counts (the last known ones while it is), lease renewals, delivering buffered
    reports, and the reason to claim nothing meanwhile."""

    def __init__(self, queue: WorkQueue, job: str) -> None:
        self.queue = queue
        self.job = job
        self.counts: QueueCounts = EMPTY
        self.fresh = False  # ``counts`` were read from the server on the last call
        self._down_since: float | None = None
        self._error = ""

    @property
    def buffered(self) -> int:
        """Reports (acks, nacks, failures) waiting for the server."""
        status = getattr(self.queue, "status", None)
        return int(status()["buffered"]) if status is not None else 0

    def _down(self, exc: ClusterUnreachable) -> None:
        # The connection's own error, not the "next attempt in ..." of a call refused
        # during the backoff: the reason shown must not change every second.
        status = getattr(self.queue, "status", None)
        self._error = (status()["last_error"] if status is not None else "") or str(exc)
        if self._down_since is None:
            self._down_since = time.monotonic()
            LOG.warning(
                "[%s] %s; claiming paused, the shards in hand go on and their acks are "
                "buffered; reconnecting with backoff",
                self.job,
                exc,
                extra={"job": self.job, "code": exc.code},
            )

    def _up(self) -> None:
        if self._down_since is not None:
            LOG.info(
                "[%s] Redis reachable again after %.1f s; %d buffered report(s) left",
                self.job,
                time.monotonic() - self._down_since,
                self.buffered,
                extra={"job": self.job},
            )
            self._down_since = None

    @property
    def down(self) -> bool:
        """The last call found Redis unreachable."""
        return self._down_since is not None

    def hold(self) -> str | None:
        """Why nothing is claimed because of the link, or None."""
        if self._down_since is None:
            return None
        return unreachable_reason(self._error, self.buffered)

    def refresh(self) -> QueueCounts:
        """The job's counts, delivering buffered reports first (so that they count); the
        last known counts while Redis is unreachable."""
        try:
            flush = getattr(self.queue, "flush", None)
            if flush is not None and flush():
                # Reports still wait: counts without them would understate the job.
                raise ClusterUnreachable(self._error or "reports still buffered")
            self.counts = self.queue.counts(self.job)
        except ClusterUnreachable as exc:
            self._down(exc)
            self.fresh = False
            return self.counts
        self._up()
        self.fresh = True
        return self.counts

    def recover(self, consumer: str) -> int:
        """Give back the job's shards still pending under ``consumer`` from an earlier
        life of this node (a fleet's queue only; the SQLite queue does it for every job
        when the daemon starts); 0 while Redis is unreachable (the lease then does it)."""
        recover = getattr(self.queue, "recover_job", None)
        if recover is None:
            return 0
        return int(self.call(lambda: recover(self.job, consumer), 0))

    def renew(self, lease: Lease, lease_s: float) -> Lease:
        """Renew ``lease``; while Redis is unreachable the old lease is kept (the shard is
        worked on and acked once the server is back). Raises ``LeaseLost``."""
        try:
            return self.queue.renew(lease, lease_s)
        except ClusterUnreachable as exc:
            self._down(exc)
            return lease

    def call(self, fn: Callable[[], Any], default: Any) -> Any:
        """``fn()``, or ``default`` while Redis is unreachable."""
        try:
            return fn()
        except ClusterUnreachable as exc:
            self._down(exc)
            return default

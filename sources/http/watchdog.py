"""The watchdog thread of one download: Progress events, checkpoints (fdatasync, then
the Checkpoint event), mirror speed measurement, and dropping connections below the
minimum speed."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from acquired.sources.errors import DiskFull
from acquired.sources.http.conn import Transfer
from acquired.sources.http.errors import Stalled
from acquired.sources.http.events import Progress
from acquired.sources.http.fetch import Fetcher
from acquired.sources.http.mirrors import MirrorPool, RateWindow
from acquired.sources.http.model import HttpOptions
from acquired.sources.http.state import FileState

log = logging.getLogger("acquired.sources.http")

# How often the watchdog wakes: bounds the latency of byte-triggered checkpoints.
_TICK = 0.1

SMALL_FILE = 4 << 20
"""Files of at most this many bytes are not checkpointed by the byte count (fetching
one again costs less than the flushes), only by time."""


START_DELAY = 0.25
"""Seconds a small file's download runs before its watchdog thread starts: most are
done by then, and a thread per file is a large part of a small file's cost."""


class _Starter:
    """One thread for the process that starts watchdogs whose start was deferred."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, watchdog: Watchdog, delay: float) -> None:
        """Start ``watchdog`` after ``delay`` seconds unless it is stopped first."""
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), watchdog))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="http-watch-starter", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, _, watchdog = heapq.heappop(self._heap)
            watchdog.start()


_starter = _Starter()


class Watchdog:
    """Runs beside the transfer threads of one download until ``stop()``."""

    def __init__(
        self,
        state: FileState,
        pool: MirrorPool,
        fetch: Fetcher,
        options: HttpOptions,
        emit: Callable[[object], None],
    ) -> None:
        self.state = state
        self.pool = pool
        self.fetch = fetch
        self.options = options
        self.emit = emit
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, *, deferred: bool = False) -> None:
        """Start the thread (``deferred``: after ``START_DELAY``, if still running)."""
        if deferred:
            _starter.schedule(self, START_DELAY)
            return
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._watch, name=f"http-watch-{self.state.request.dest.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (a deferred start then never happens)."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        self.state.wake.set()
        if thread is not None:
            thread.join()

    def _watch(self) -> None:
        opts, state = self.options, self.state
        next_progress = 0.0
        window = RateWindow()
        stall: dict[Transfer, deque[tuple[float, int, float]]] = {}
        last_tick = time.monotonic()
        while not self._stop.is_set():
            if state.wake.wait(_TICK):
                state.wake.clear()
                # Woken by a writer: still keep checkpoints (each an fdatasync) apart.
                early = state.last_checkpoint[0] + opts.checkpoint_min_interval
                if early > time.monotonic():
                    self._stop.wait(early - time.monotonic())
            if self._stop.is_set():
                break
            now = time.monotonic()
            try:
                dt, last_tick = now - last_tick, now
                window.add(now, state.received)
                self.pool.measure(now, dt)
                self._check_stalls(now, stall)
                if self._checkpoint_due(now):
                    state.checkpoint()
                if now >= next_progress:
                    next_progress = now + opts.progress_interval
                    self.emit(
                        Progress(
                            done=state.done_bytes(),
                            total=state.size,
                            rate=window.rate(),
                            connections=len(self.fetch.live()),
                            mirrors=self.pool.stats(now),
                        )
                    )
            except DiskFull:
                pass  # the writers meet the same error and report it
            except Exception:
                log.exception("HTTP watchdog failed for %s", state.request.dest)

    def _checkpoint_due(self, now: float) -> bool:
        opts, state = self.options, self.state
        last_time, last_received = state.last_checkpoint
        new = state.received - last_received
        if new > 0 and now - last_time >= opts.checkpoint_interval:
            return True
        if state.size is not None and state.size <= SMALL_FILE:
            return False
        active = max(1, len(self.fetch.live()))
        return (
            new >= opts.checkpoint_bytes * active
            and now - last_time >= opts.checkpoint_min_interval
        )

    def _check_stalls(
        self, now: float, history: dict[Transfer, deque[tuple[float, int, float]]]
    ) -> None:
        """Drop a connection below ``min_speed`` over ``min_speed_window`` (time spent
        waiting on rate limiters does not count against it)."""
        opts = self.options
        live = self.fetch.live()
        for gone in set(history) - live:
            del history[gone]
        if opts.min_speed <= 0 or opts.min_speed_window <= 0:
            return
        for transfer in live:
            samples = history.setdefault(transfer, deque())
            samples.append((now, transfer.received, transfer.throttled))
            while len(samples) > 2 and now - samples[1][0] >= opts.min_speed_window:
                samples.popleft()
            t0, b0, th0 = samples[0]
            active = (now - t0) - (transfer.throttled - th0)
            if active >= opts.min_speed_window and not transfer.aborted:
                speed = (transfer.received - b0) / active
                if speed < opts.min_speed:
                    reason = (
                        f"below {opts.min_speed} B/s for {opts.min_speed_window:g}s "
                        f"({speed:.0f} B/s)"
                    )
                    log.warning("dropping stalled connection to %s: %s", transfer.url, reason)
                    transfer.abort(reason, Stalled.code)

"""Runners carry out what the state thread decided, off the state thread.

Each runner takes plain values (requests, paths, options), does the blocking work on a
worker thread, and reports only by posting messages (``acquired.daemon.messages``) with
the token the state thread gave it. Runners never call each other and never touch the
store; the state thread alone turns their messages into state changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from acquired.daemon.messages import Message

Post = Callable[[Message], None]


class StepHandle:
    """Lets the state thread stop a step between entries."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def cancel(self) -> None:
        """Ask the step to stop at its next check."""
        self.event.set()


def spawn(name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
    """Start ``target(*args)`` on a thread of its own (for long, rare work)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


class WorkerPool:
    """A bounded pool of worker threads, reused from file to file: a job of 20,000 small
    files does not start 20,000 threads. Grows when the configured slots grow."""

    def __init__(self, size: int, name: str) -> None:
        self._size = max(size, 1)
        self._name = name
        self._pool = ThreadPoolExecutor(max_workers=self._size, thread_name_prefix=name)

    def submit(self, target: Callable[..., None], *args: Any) -> Future[None]:
        """Run ``target(*args)`` on a worker."""
        return self._pool.submit(target, *args)

    def resize(self, size: int) -> None:
        """Allow ``size`` workers (the running ones finish on the old pool)."""
        if max(size, 1) != self._size:
            old = self._pool
            self._size = max(size, 1)
            self._pool = ThreadPoolExecutor(max_workers=self._size, thread_name_prefix=self._name)
            old.shutdown(wait=False)

    def shutdown(self) -> None:
        """Stop taking work; running work goes on until it ends."""
        self._pool.shutdown(wait=False, cancel_futures=True)

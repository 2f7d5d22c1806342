"""One URL-list job's worker processes (``acquired.sources.urllist.pool.ShardPool``), with
a stop that does not wait for running shards: a stopping daemon gives their shards back
to the queue and ends the processes (a redone shard writes the same files)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from concurrent.futures import Future
from multiprocessing import forkserver
from typing import Any

from acquired.sources.urllist.pool import ShardPool


def start_forkserver() -> None:
    """Start the forkserver from the calling thread (the state thread: the kernel ties the
    forkserver's life to the thread that started it), preloaded with
    ``urllist_child``; a no-op while it runs."""
    multiprocessing.set_forkserver_preload(["acquired.daemon.runners.urllist_child"])
    forkserver.ensure_running()


class JobPool:
    """``submit``, ``progress`` and ``close`` for the runner."""

    def __init__(self, s: Any) -> None:
        self._pool = ShardPool(s.settings.dedupe, workers=s.workers, shards_dir=s.out_dir)

    def submit(self, task: Any) -> Future[Any]:
        """Run a shard task on a free worker."""
        return self._pool.submit(task)

    def progress(self) -> list[Any]:
        """Progress reports since the last call."""
        return self._pool.progress()

    def close(self, wait: bool = True) -> None:
        """Stop the workers; without ``wait`` the running shards are abandoned."""
        if wait:
            self._pool.close()
            return
        executor = self._pool._executor
        # The executor keeps its processes private; a shard in flight must not hold the
        # daemon's stop for minutes, and its lease was given back already.
        procs = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            with contextlib.suppress(Exception):
                os.kill(p.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._pool._manager.shutdown()

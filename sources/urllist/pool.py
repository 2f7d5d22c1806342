"""Worker processes for URL-list shards, and the job-wide dedupe index they share.

``ShardPool`` runs ``run_shard`` in a ``ProcessPoolExecutor`` (one process per core by
default), started with **forkserver**: the daemon that owns the pool is multi-threaded
(state thread, libtorrent, watchers, HTTP threads), and a plain ``fork`` would copy locks
held by those threads and the SQLite connection into the child; forkserver forks workers
from a clean single-threaded server process, and costs less than ``spawn`` (imports are
paid once in the server). Workers live across shards, so the start cost is paid once.

The dedupe decision is central: a ``multiprocessing`` manager process holds one
``DedupeIndex`` for the job, rebuilt from the finished shards' parquet when the pool
starts (``rebuild``), so a restart after a crash knows every sample stored before it;
every worker sends each batch of kept samples there (``decide``) before writing them,
so "first seen is kept" holds across shards and processes. The worker only sees the
``DedupeService`` protocol, so a Redis-backed index (shared by a fleet) can replace the
proxy without touching the worker. Progress comes back through a manager queue;
``progress()`` drains it without blocking.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

from acquired.sources.urllist.dedupe import DedupeIndex
from acquired.sources.urllist.rebuild import rebuild_index
from acquired.sources.urllist.settings import DedupeSettings
from acquired.sources.urllist.worker import Progress, ShardResult, ShardTask, run_shard

LOG = logging.getLogger("acquired.urllist")


def _open_index(
    exact: bool,
    perceptual: bool,
    max_distance: int,
    shards_dir: str | None = None,
) -> DedupeIndex:
    index = DedupeIndex(exact=exact, perceptual=perceptual, max_distance=max_distance)
    if shards_dir is not None:
        index.rebuilt = rebuild_index(index, Path(shards_dir))
    return index


class _Manager(BaseManager):
    """Hosts the job's dedupe index and the progress queue in one helper process."""


_Manager.register("open_index", _open_index)
_Manager.register("new_queue", queue.Queue)


class QueueProgress:
    """A picklable ``on_progress`` that puts each ``Progress`` on a manager queue."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __call__(self, progress: Progress) -> None:
        """Hand ``progress`` to the parent (never blocks the worker for long)."""
        with contextlib.suppress(Exception):
            self.target.put_nowait(progress)


class ShardPool:
    """Runs shard tasks in worker processes with one job-wide dedupe index."""

    def __init__(
        self,
        dedupe: DedupeSettings,
        *,
        workers: int | None = None,
        shards_dir: Path | None = None,
        start_method: str = "forkserver",
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        # With the shards' folder the index is rebuilt from the finished shards: they are
        # the record of what was kept, whatever a crash left in memory.
        ctx = multiprocessing.get_context(start_method)
        self._manager = _Manager(ctx=ctx)
        self._manager.start()
        self.index: Any = None
        if dedupe.exact or dedupe.perceptual:
            self.index = self._manager.open_index(  # type: ignore[attr-defined]
                dedupe.exact,
                dedupe.perceptual,
                dedupe.max_distance,
                str(shards_dir) if shards_dir is not None else None,
            )
            if shards_dir is not None:
                shards, rows, samples = self.index.rebuilt_counts()
                LOG.info(
                    "dedupe index rebuilt from %d finished shard(s): %d stored samples in %d rows",
                    shards,
                    samples,
                    rows,
                )
        self._progress = self._manager.new_queue()  # type: ignore[attr-defined]
        self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx)

    def submit(self, task: ShardTask) -> Future[ShardResult]:
        """Start ``task`` on a free worker; the future holds its ``ShardResult``."""
        if task.dedupe is None and self.index is not None:
            task = replace(task, dedupe=self.index)
        return self._executor.submit(run_shard, task, QueueProgress(self._progress))

    def progress(self) -> list[Progress]:
        """The progress reports that arrived since the last call."""
        out = []
        while True:
            try:
                out.append(self._progress.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Stop the workers (running shards finish first) and the manager."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._manager.shutdown()

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

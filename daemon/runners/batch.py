"""The small-file runner: one thread fetches many small files at once
(``acquired.sources.http.batch.SmallFiles``) and posts one message per flush."""

from __future__ import annotations

import logging
import threading

from acquired.daemon.messages import BatchEnded
from acquired.daemon.runners import Post, spawn
from acquired.sources.http import HttpOptions
from acquired.sources.http.batch import BatchItem, BatchOutcome, SmallFiles

LOG = logging.getLogger("acquired.runners")


class BatchTicket:
    """One file of the small-file runner, as the state thread holds it: ``cancel()``
    stops that file alone; ``thread`` is the runner's (what a shutdown waits for)."""

    __slots__ = ("_runner", "thread", "token")

    def __init__(self, runner: BatchRunner, token: int, thread: threading.Thread) -> None:
        self._runner = runner
        self.token = token
        self.thread = thread

    def cancel(self) -> None:
        """Stop this file only (thread-safe)."""
        self._runner.cancel(self.token)


class BatchRunner:
    """Starts the fetching thread on first use; files are keyed by their token."""

    def __init__(self, post: Post) -> None:
        self._post = post
        self._lock = threading.Lock()
        self._engine: SmallFiles | None = None
        self._thread: threading.Thread | None = None
        self._files: dict[int, int] = {}  # token -> file id

    def start_many(
        self, work: list[tuple[int, int, BatchItem]], options: HttpOptions
    ) -> list[BatchTicket]:
        """Queue files: (file id, token, item) each, ``item.key`` being the token; returns
        their tickets in the same order. ``options`` start the fetching thread the first
        time."""
        with self._lock:
            for file_id, token, _ in work:
                self._files[token] = file_id
            engine, thread = self._engine, self._thread
            if engine is None or thread is None or not thread.is_alive():
                engine = self._engine = SmallFiles(options, self._on_done)
                thread = self._thread = spawn("http-small", engine.run)
        engine.submit([item for _, _, item in work])
        return [BatchTicket(self, token, thread) for _, token, _ in work]

    def cancel(self, token: int) -> None:
        """Stop one file; its end is posted as cancelled."""
        with self._lock:
            engine = self._engine
        if engine is not None:
            engine.cancel(token)

    def shutdown(self) -> threading.Thread | None:
        """Stop the fetching thread (what runs is cancelled); returns it to wait for."""
        with self._lock:
            engine, thread = self._engine, self._thread
        if engine is not None:
            engine.close()
        return thread

    def _on_done(self, outcomes: list[BatchOutcome]) -> None:
        ends = []
        with self._lock:
            for o in outcomes:
                file_id = self._files.pop(o.key, None)
                if file_id is not None:
                    ends.append((file_id, o.key, o.result, o.error))
        if ends:
            placed = sum(1 for end in ends if end[3] is None)
            LOG.debug(
                "small-file runner: %d file(s) in place, %d ended else", placed, len(ends) - placed
            )
            self._post(BatchEnded(tuple(ends)))

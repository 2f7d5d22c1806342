"""The small-file runner: one thread fetches many small files at once
(``acquired.sources.http.batch.SmallFiles``) and posts one message per flush."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

from acquired.daemon.messages import BatchEnded
from acquired.daemon.runners import Post, spawn
from acquired.sources.http import HttpOptions
from acquired.sources.http.batch import BatchItem, BatchOutcome, SmallFiles

LOG = logging.getLogger("acquired.runners")


class BatchTicket:
    """One file of the small-file runner, as the state thread holds it: ``cancel()``
    stops that file alone; ``future`` ends when its outcome is posted."""

    def __init__(self, runner: BatchRunner, token: int) -> None:
        self._runner = runner
        self.token = token
        self.future: Future[None] = Future()

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
        self._files: dict[int, tuple[int, BatchTicket]] = {}  # token -> (file id, ticket)

    def start_many(
        self, work: list[tuple[int, int, BatchItem]], options: HttpOptions
    ) -> list[BatchTicket]:
        """Queue files: (file id, token, item) each, ``item.key`` being the token; returns
        their tickets in the same order. ``options`` start the fetching thread the first
        time."""
        tickets = [BatchTicket(self, token) for _, token, _ in work]
        with self._lock:
            for (file_id, token, _), ticket in zip(work, tickets, strict=True):
                self._files[token] = (file_id, ticket)
            engine = self._engine
            if engine is None:
                engine = self._engine = SmallFiles(options, self._on_done)
                self._thread = spawn("http-small", engine.run)
        engine.submit([item for _, _, item in work])
        return tickets

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
        tickets = []
        with self._lock:
            for o in outcomes:
                entry = self._files.pop(o.key, None)
                if entry is None:
                    continue
                ends.append((entry[0], o.key, o.result, o.error))
                tickets.append(entry[1])
        if ends:
            placed = sum(1 for end in ends if end[3] is None)
            LOG.debug(
                "small-file runner: %d file(s) in place, %d ended else", placed, len(ends) - placed
            )
            self._post(BatchEnded(tuple(ends)))
        for ticket in tickets:
            ticket.future.set_result(None)

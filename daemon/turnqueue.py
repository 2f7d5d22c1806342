"""The state thread's work queue, on the store's connection.

The state loop groups every write of one turn into one transaction (``Store.batch``);
``SqliteWorkQueue`` opens its own (``BEGIN IMMEDIATE``), which SQLite refuses inside
another. On this connection a queue write made during a turn is a savepoint of the
turn's transaction instead: all-or-nothing as before, committed with the turn. The
planner and the runners use queues on connections of their own (``open_queue``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from acquired.daemon.shardstore import SqliteWorkQueue


class TurnQueue(SqliteWorkQueue):
    """``SqliteWorkQueue`` whose transactions nest in the state loop's batch."""

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        db = self._db
        if not db.in_transaction:
            with super()._tx() as conn:
                yield conn
            return
        db.execute("SAVEPOINT work_queue")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK TO work_queue")
            db.execute("RELEASE work_queue")
            raise
        db.execute("RELEASE work_queue")

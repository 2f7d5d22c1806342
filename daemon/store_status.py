"""The store's read side for status (aggregates in SQL, one query whatever the size of a
job) and its event log. A part of ``Store``: it uses the store's one connection."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Events kept per job (and for daemon-wide events): enough for `show` and the TUI.
EVENTS_KEPT = 500


@dataclass(frozen=True)
class JobTotals:
    counts: dict[str, int]
    files_total: int
    bytes_total: int | None  # None while any file's size is unknown
    bytes_done: int


class StatusQueries:
    """Aggregates for ``status`` and ``show``, and the event log (mixed into ``Store``)."""

    _db: Any  # the store's connection

    def job_totals(self, job_id: str) -> JobTotals:
        """Files per state, sizes and progress of one job, in one query."""
        rows = self._db.execute(
            "SELECT state, COUNT(*), SUM(size), COUNT(size), SUM(bytes_done)"
            " FROM files WHERE job_id = ? GROUP BY state",
            (job_id,),
        ).fetchall()
        return _totals(rows)

    def all_totals(self) -> dict[str, JobTotals]:
        """``job_totals`` of every job, in one query."""
        rows = self._db.execute(
            "SELECT job_id, state, COUNT(*), SUM(size), COUNT(size), SUM(bytes_done)"
            " FROM files GROUP BY job_id, state"
        ).fetchall()
        by_job: dict[str, list[tuple[Any, ...]]] = {}
        for r in rows:
            by_job.setdefault(r[0], []).append(r[1:])
        return {job_id: _totals(rows) for job_id, rows in by_job.items()}

    def bytes_done_of(self, file_ids: Iterable[int]) -> dict[int, int]:
        """The stored progress of some files (those in flight), in one query."""
        ids = list(file_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))  # placeholders only: the ids are parameters
        query = f"SELECT id, bytes_done FROM files WHERE id IN ({marks})"  # noqa: S608
        rows = self._db.execute(query, ids).fetchall()
        return dict(rows)

    def state_counts(self) -> dict[str, int]:
        """Files in each state over all jobs."""
        return dict(self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())

    def first_reason(self, job_id: str, state: str) -> str | None:
        """One reason given for a job's files in ``state`` (what status shows of a job that
        is not moving), without reading all of them."""
        row = self._db.execute(
            "SELECT reason FROM files WHERE job_id = ? AND state = ? AND reason IS NOT NULL"
            " ORDER BY idx LIMIT 1",
            (job_id, state),
        ).fetchone()
        return row[0] if row else None

    def add_event(
        self,
        level: str,
        message: str,
        *,
        job_id: str | None = None,
        file_id: int | None = None,
        code: str | None = None,
    ) -> None:
        """Add a line to the event log (trimmed per job)."""
        cur = self._db.execute(
            "INSERT INTO events (ts, level, job_id, file_id, code, message)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), level, job_id, file_id, code, message),
        )
        # Keep the log bounded per job; trimming on every hundredth insert is enough.
        if cur.lastrowid is not None and cur.lastrowid % 100 == 0:
            self._db.execute(
                "DELETE FROM events WHERE job_id IS ? AND id <= ("
                " SELECT id FROM events WHERE job_id IS ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (job_id, job_id, EVENTS_KEPT),
            )

    def recent_events(self, *, limit: int = 20, job_id: str | None = None) -> list[dict[str, Any]]:
        """The last events (of one job, if given), oldest first."""
        if job_id is None:
            q = "SELECT ts, level, job_id, file_id, code, message FROM events"
            rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        else:
            q = "SELECT ts, level, job_id, file_id, code, message FROM events WHERE job_id = ?"
            rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", (job_id, limit)).fetchall()
        keys = ("ts", "level", "job", "file_id", "code", "message")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]


def _totals(rows: list[tuple[Any, ...]]) -> JobTotals:
    """Totals from (state, count, sum of sizes, count of sizes, sum of progress) rows."""
    counts = {r[0]: r[1] for r in rows}
    files_total = sum(counts.values())
    sized = sum(r[3] for r in rows)
    bytes_total = sum(r[2] or 0 for r in rows) if sized == files_total else None
    return JobTotals(
        counts=counts,
        files_total=files_total,
        bytes_total=bytes_total,
        bytes_done=sum(r[4] or 0 for r in rows),
    )

"""The job store: SQLite in WAL mode, owned by the state thread (the only writer).

Jobs, one row per file, resume checkpoints and an event log. The schema is versioned
with ``PRAGMA user_version`` and ordered migrations. Queries aggregate in SQL and page
through files, so a job of millions of small items is never loaded whole.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acquired.daemon.lifecycle import Event, decide, sources_of

# Each entry moves the schema from version i to i + 1. Never edit a released entry:
# append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        manifest_json TEXT NOT NULL,
        manifest_digest TEXT NOT NULL,
        manifest_path TEXT NOT NULL,
        destination TEXT NOT NULL,
        warnings TEXT NOT NULL DEFAULT '[]',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        path TEXT NOT NULL,
        size INTEGER,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        error TEXT,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        source TEXT,
        digests TEXT,
        updated REAL NOT NULL,
        UNIQUE (job_id, idx)
    );
    CREATE INDEX files_by_job_state ON files (job_id, state);
    CREATE INDEX files_by_state ON files (state, not_before);
    CREATE TABLE checkpoints (
        file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        level TEXT NOT NULL,
        job_id TEXT,
        file_id INTEGER,
        code TEXT,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_job ON events (job_id, id);
    """,
    # 2: the source chosen for a file ({"source": "torrent"|"http"|"both", "reason": ...}),
    # kept so that a restart continues with the same source instead of probing again.
    """
    ALTER TABLE files ADD COLUMN plan TEXT;
    """,
    # 3: job-level steps (checksum files, layouts, listings) run once every file is done:
    # NULL (none), 'pending', 'running', 'done' or 'failed'; finish_error holds the error.
    """
    ALTER TABLE jobs ADD COLUMN finish TEXT;
    ALTER TABLE jobs ADD COLUMN finish_error TEXT;
    """,
)

# Events kept per job (and for daemon-wide events): enough for `show` and the TUI.
EVENTS_KEPT = 500


class StoreError(Exception):
    """The database cannot be opened or is from a newer version of acquired."""

    code = "store.unusable"
    hint = "Check the state directory; a database from a newer acquired needs that version."


@dataclass(frozen=True)
class NewFile:
    idx: int
    path: str
    size: int | None
    spec: dict[str, Any]
    state: str = "queued"
    bytes_done: int = 0
    checkpoint: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobRow:
    id: str
    seq: int
    manifest: dict[str, Any]
    manifest_digest: str
    manifest_path: str
    destination: str
    warnings: list[str]
    created: float
    finish: str | None = None
    finish_error: dict[str, Any] | None = None


@dataclass(frozen=True)
class FileRow:
    id: int
    job_id: str
    idx: int
    path: str
    size: int | None
    spec: dict[str, Any]
    state: str
    reason: str | None
    error: dict[str, Any] | None
    bytes_done: int
    attempts: int
    not_before: float
    source: str | None
    digests: dict[str, str] | None
    plan: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobTotals:
    counts: dict[str, int]
    files_total: int
    bytes_total: int | None  # None while any file's size is unknown
    bytes_done: int


_JOB_COLUMNS = (
    "id, seq, manifest_json, manifest_digest, manifest_path, destination, warnings, created,"
    " finish, finish_error"
)
_FILE_COLUMNS = (
    "id, job_id, idx, path, size, spec, state, reason, error, bytes_done, attempts,"
    " not_before, source, digests, plan"
)


def _file_row(r: tuple[Any, ...]) -> FileRow:
    return FileRow(
        id=r[0],
        job_id=r[1],
        idx=r[2],
        path=r[3],
        size=r[4],
        spec=json.loads(r[5]),
        state=r[6],
        reason=r[7],
        error=json.loads(r[8]) if r[8] else None,
        bytes_done=r[9],
        attempts=r[10],
        not_before=r[11],
        source=r[12],
        digests=json.loads(r[13]) if r[13] else None,
        plan=json.loads(r[14]) if r[14] else None,
    )


class Store:
    """One connection, used by one thread: the daemon's state thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode never corrupts; a power cut may lose the last commits,
            # which only makes a resume fetch a little more again (checkpoints are
            # written after the data they describe is flushed).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this acquired "
                f"understands ({len(MIGRATIONS)})"
            )
        for i in range(version, len(MIGRATIONS)):
            with self._tx():
                for statement in _statements(MIGRATIONS[i]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {i + 1}")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- jobs ---------------------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        *,
        manifest: dict[str, Any],
        manifest_digest: str,
        manifest_path: str,
        destination: str,
        warnings: list[str],
        files: Iterable[NewFile],
        finish: str | None = None,
    ) -> None:
        """Create a job and its files in one transaction (``finish``: 'pending' when the
        job has steps to run once every file is done)."""
        now = time.time()
        with self._tx():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    job_id,
                    seq,
                    json.dumps(manifest),
                    manifest_digest,
                    manifest_path,
                    destination,
                    json.dumps(warnings),
                    now,
                    now,
                    finish,
                ),
            )
            for f in files:
                cur = self._db.execute(
                    "INSERT INTO files (job_id, idx, path, size, spec, state, bytes_done, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        f.idx,
                        f.path,
                        f.size,
                        json.dumps(f.spec),
                        f.state,
                        f.bytes_done,
                        now,
                    ),
                )
                if f.checkpoint is not None:
                    self._db.execute(
                        "INSERT INTO checkpoints VALUES (?, ?, ?)",
                        (cur.lastrowid, json.dumps(f.checkpoint), now),
                    )

    def delete_job(self, job_id: str) -> None:
        with self._tx():
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def get_job(self, job_id: str) -> JobRow | None:
        r = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        return _job_row(r) if r else None

    def list_jobs(self) -> list[JobRow]:
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq").fetchall()
        return [_job_row(r) for r in rows]

    def set_finish(
        self, job_id: str, finish: str | None, error: dict[str, Any] | None = None
    ) -> None:
        """Record the state of a job's own steps (and their error, if they failed)."""
        self._db.execute(
            "UPDATE jobs SET finish = ?, finish_error = ?, updated = ? WHERE id = ?",
            (finish, json.dumps(error) if error else None, time.time(), job_id),
        )

    def job_totals(self, job_id: str) -> JobTotals:
        rows = self._db.execute(
            "SELECT state, COUNT(*), SUM(size), COUNT(size), SUM(bytes_done)"
            " FROM files WHERE job_id = ? GROUP BY state",
            (job_id,),
        ).fetchall()
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

    def state_counts(self) -> dict[str, int]:
        """Files in each state over all jobs."""
        return dict(self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())

    # -- files --------------------------------------------------------------------------

    def get_file(self, file_id: int) -> FileRow:
        r = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,))
        row = r.fetchone()
        if row is None:
            raise KeyError(file_id)
        return _file_row(row)

    def job_files(self, job_id: str, *, offset: int = 0, limit: int = 1000) -> list[FileRow]:
        rows = self._db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE job_id = ? ORDER BY idx LIMIT ? OFFSET ?",
            (job_id, limit, offset),
        ).fetchall()
        return [_file_row(r) for r in rows]

    def files_in_state(self, state: str, *, job_id: str | None = None) -> list[FileRow]:
        if job_id is None:
            q = f"SELECT {_FILE_COLUMNS} FROM files WHERE state = ? ORDER BY id"
            rows = self._db.execute(q, (state,)).fetchall()
        else:
            q = f"SELECT {_FILE_COLUMNS} FROM files WHERE state = ? AND job_id = ? ORDER BY idx"
            rows = self._db.execute(q, (state, job_id)).fetchall()
        return [_file_row(r) for r in rows]

    def first_reason(self, job_id: str, state: str) -> str | None:
        """One reason given for a job's files in ``state`` (what status shows of a job that
        is not moving), without reading all of them."""
        row = self._db.execute(
            "SELECT reason FROM files WHERE job_id = ? AND state = ? AND reason IS NOT NULL"
            " ORDER BY idx LIMIT 1",
            (job_id, state),
        ).fetchone()
        return row[0] if row else None

    def paused_because(self, prefix: str) -> list[FileRow]:
        """Paused files whose reason starts with ``prefix`` (the disk guard's own pauses)."""
        rows = self._db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE state = 'paused'"
            " AND substr(reason, 1, length(?)) = ? ORDER BY id",
            (prefix, prefix),
        ).fetchall()
        return [_file_row(r) for r in rows]

    def unfinished_named(self, name: str) -> list[FileRow]:
        """Files not done nor cancelled whose base name is ``name`` (for watched folders)."""
        rows = self._db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE state NOT IN ('done', 'cancelled')"
            " AND (path = ? OR substr(path, -length(?) - 1) = '/' || ?) ORDER BY id",
            (name, name, name),
        ).fetchall()
        return [_file_row(r) for r in rows]

    def next_queued(self, now: float, *, limit: int, skip: Iterable[int] = ()) -> list[FileRow]:
        """Queued files whose back-off has passed, oldest job first, in manifest order."""
        skip_ids = list(skip)
        # "NOT IN ()" is not SQL, and "NOT IN (NULL)" is never true: leave the clause out.
        not_skipped = f" AND f.id NOT IN ({','.join('?' * len(skip_ids))})" if skip_ids else ""
        columns = ", ".join("f." + c.strip() for c in _FILE_COLUMNS.split(","))
        rows = self._db.execute(
            f"SELECT {columns} FROM files f JOIN jobs j ON j.id = f.job_id"
            f" WHERE f.state = 'queued' AND f.not_before <= ?{not_skipped}"
            " ORDER BY j.seq, f.idx LIMIT ?",
            (now, *skip_ids, limit),
        ).fetchall()
        return [_file_row(r) for r in rows]

    def next_wakeup(self) -> float | None:
        """The earliest back-off deadline of a queued file, if any is backing off."""
        r = self._db.execute(
            "SELECT MIN(not_before) FROM files WHERE state = 'queued' AND not_before > 0"
        ).fetchone()
        return r[0] if r and r[0] is not None else None

    def set_state(
        self,
        file_id: int,
        state: str,
        *,
        reason: str | None = None,
        error: dict[str, Any] | None = None,
        not_before: float = 0.0,
        attempts: int | None = None,
        source: str | None = None,
        digests: dict[str, str] | None = None,
        bytes_done: int | None = None,
    ) -> None:
        """Move a file to ``state``; reason and error are replaced, not merged."""
        sets = ["state = ?", "reason = ?", "error = ?", "not_before = ?", "updated = ?"]
        args: list[Any] = [
            state,
            reason,
            json.dumps(error) if error else None,
            not_before,
            time.time(),
        ]
        for column, value in (
            ("attempts", attempts),
            ("source", source),
            ("digests", json.dumps(digests) if digests is not None else None),
            ("bytes_done", bytes_done),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        self._db.execute(f"UPDATE files SET {', '.join(sets)} WHERE id = ?", (*args, file_id))

    def forget_fetch(self, file_id: int) -> None:
        """The file must be fetched again: drop the digests that marked it fetched."""
        self._db.execute("UPDATE files SET digests = NULL WHERE id = ?", (file_id,))

    def set_plan(self, file_id: int, plan: dict[str, Any] | None) -> None:
        """Record which source a file uses and why (None forgets it)."""
        self._db.execute(
            "UPDATE files SET plan = ? WHERE id = ?",
            (json.dumps(plan) if plan is not None else None, file_id),
        )

    def set_reason(self, file_id: int, reason: str | None) -> None:
        self._db.execute("UPDATE files SET reason = ? WHERE id = ?", (reason, file_id))

    def set_progress(self, file_id: int, bytes_done: int) -> None:
        self._db.execute(
            "UPDATE files SET bytes_done = ?, updated = ? WHERE id = ?",
            (bytes_done, time.time(), file_id),
        )

    def requeue_interrupted(self) -> int:
        """At start-up: files that were in flight when the daemon stopped go back to the
        queue (their checkpoints make them resume, not restart). Which states those are
        is the lifecycle's RESTART move."""
        states = sorted(sources_of(Event.RESTART))
        cur = self._db.execute(
            "UPDATE files SET state = ?, reason = 'resuming after restart', not_before = 0"
            f" WHERE state IN ({','.join('?' * len(states))})",
            (decide(states[0], Event.RESTART).state, *states),
        )
        self._db.execute("UPDATE jobs SET finish = 'pending' WHERE finish = 'running'")
        return cur.rowcount

    # -- checkpoints --------------------------------------------------------------------

    def save_checkpoint(self, file_id: int, state: dict[str, Any], bytes_done: int) -> None:
        """Record a source's resume state and the progress it proves, atomically."""
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?) ON CONFLICT (file_id)"
                " DO UPDATE SET state = excluded.state, updated = excluded.updated",
                (file_id, json.dumps(state), now),
            )
            self._db.execute(
                "UPDATE files SET bytes_done = ?, updated = ? WHERE id = ?",
                (bytes_done, now, file_id),
            )

    def load_checkpoint(self, file_id: int) -> dict[str, Any] | None:
        r = self._db.execute("SELECT state FROM checkpoints WHERE file_id = ?", (file_id,))
        row = r.fetchone()
        return json.loads(row[0]) if row else None

    def clear_checkpoint(self, file_id: int) -> None:
        self._db.execute("DELETE FROM checkpoints WHERE file_id = ?", (file_id,))

    # -- events -------------------------------------------------------------------------

    def add_event(
        self,
        level: str,
        message: str,
        *,
        job_id: str | None = None,
        file_id: int | None = None,
        code: str | None = None,
    ) -> None:
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
        if job_id is None:
            q = "SELECT ts, level, job_id, file_id, code, message FROM events"
            rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        else:
            q = "SELECT ts, level, job_id, file_id, code, message FROM events WHERE job_id = ?"
            rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", (job_id, limit)).fetchall()
        keys = ("ts", "level", "job", "file_id", "code", "message")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]


def _job_row(r: tuple[Any, ...]) -> JobRow:
    return JobRow(
        id=r[0],
        seq=r[1],
        manifest=json.loads(r[2]),
        manifest_digest=r[3],
        manifest_path=r[4],
        destination=r[5],
        warnings=json.loads(r[6]),
        created=r[7],
        finish=r[8],
        finish_error=json.loads(r[9]) if r[9] else None,
    )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]

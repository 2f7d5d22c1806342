"""The job store: SQLite in WAL mode, owned by the state thread (the only writer).

Jobs, one row per file, resume checkpoints and an event log. The schema is versioned
with ``PRAGMA user_version`` and ordered migrations. Queries aggregate in SQL and page
through files, so a job of millions of small items is never loaded whole.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acquired.daemon import shardstore
from acquired.daemon.lifecycle import Event, decide, sources_of
from acquired.daemon.schema import MIGRATIONS, expect_key, spec_digests
from acquired.daemon.store_checkpoints import CheckpointQueries
from acquired.daemon.store_status import JobTotals, StatusQueries

__all__ = ["MIGRATIONS", "JobTotals", "Store", "expect_key"]


class StoreError(Exception):
    """The database cannot be opened or is from a newer version of acquired."""

    code = "store.unusable"
    hint = "Check the state directory; a database from a newer acquired needs that version."


@dataclass(frozen=True)
class NewFile:
    """A file row to create: its index in the manifest, path, size, and what carries
    over from a replaced job (state, progress, checkpoint)."""

    idx: int
    path: str
    size: int | None
    expect: str | None = None
    state: str = "queued"
    bytes_done: int = 0
    checkpoint: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobRow:
    """A job: its manifest (on disk, at ``manifest_path``) and the settings read per job."""

    id: str
    seq: int
    manifest_digest: str
    manifest_path: str
    destination: str
    warnings: list[str]
    created: float
    finish: str | None = None
    finish_error: dict[str, Any] | None = None
    kind: str = "files"
    connections: int | None = None
    bandwidth_limit: int | None = None
    complete: bool = True


@dataclass(frozen=True)
class FileRow:
    id: int
    job_id: str
    idx: int
    path: str
    size: int | None
    state: str
    reason: str | None
    error: dict[str, Any] | None
    bytes_done: int
    attempts: int
    not_before: float
    source: str | None
    digests: dict[str, str] | None
    plan: dict[str, Any] | None = None
    expect: str | None = None


_JOB_COLUMNS = (
    "id, seq, manifest_digest, manifest_path, destination, warnings, created,"
    " finish, finish_error, kind, connections, bandwidth_limit, complete"
)
_FILE_COLUMNS = (
    "id, job_id, idx, path, size, state, reason, error, bytes_done, attempts,"
    " not_before, source, digests, plan, expect"
)
# Rows inserted per statement batch: a job of 100,000 files goes in as many short writes.
CHUNK = 2000


def _file_row(r: tuple[Any, ...]) -> FileRow:
    return FileRow(
        id=r[0],
        job_id=r[1],
        idx=r[2],
        path=r[3],
        size=r[4],
        state=r[5],
        reason=r[6],
        error=json.loads(r[7]) if r[7] else None,
        bytes_done=r[8],
        attempts=r[9],
        not_before=r[10],
        source=r[11],
        digests=json.loads(r[12]) if r[12] else None,
        plan=json.loads(r[13]) if r[13] else None,
        expect=r[14],
    )


def _state_update(
    state: str,
    *,
    reason: str | None = None,
    error: dict[str, Any] | None = None,
    not_before: float = 0.0,
    attempts: int | None = None,
    source: str | None = None,
    digests: dict[str, str] | None = None,
    bytes_done: int | None = None,
) -> tuple[str, list[Any]]:
    """The UPDATE of a state change (ending in ``WHERE id = ?``) and its arguments."""
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
    return f"UPDATE files SET {', '.join(sets)} WHERE id = ?", args


class Store(StatusQueries, CheckpointQueries):
    """One connection, used by one thread: the daemon's state thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._jobs: dict[str, JobRow] = {}
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
            shardstore.migrate(self._db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def work_queue(self) -> shardstore.SqliteWorkQueue:
        """The URL-list work queue on this store's connection (the state thread's); its
        writes join the state loop's batch."""
        from acquired.daemon.turnqueue import TurnQueue

        return TurnQueue(self._db)

    @property
    def schema_version(self) -> int:
        """The schema version of the database (``PRAGMA user_version``)."""
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
                if i == 3:
                    self._after_v4()
                self._db.execute(f"PRAGMA user_version = {i + 1}")

    def _after_v4(self) -> None:
        """Before the manifests leave the database: any job whose manifest file is gone
        gets the stored copy written into the state dir, so that nothing is lost; every
        file's ``expect`` is taken from its stored spec."""
        rows = self._db.execute("SELECT id, size, spec FROM files").fetchall()
        self._db.executemany(
            "UPDATE files SET expect = ? WHERE id = ?",
            [
                (expect_key(size, spec_digests(json.loads(spec))), file_id)
                for file_id, size, spec in rows
            ],
        )
        folder = self.path.parent / "manifests"
        rows = self._db.execute("SELECT id, manifest_json, manifest_path FROM jobs").fetchall()
        for job_id, text, manifest_path in rows:
            if Path(manifest_path).is_file():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            saved = folder / f"{job_id}.json"
            saved.write_text(text)
            self._db.execute("UPDATE jobs SET manifest_path = ? WHERE id = ?", (str(saved), job_id))

    @contextmanager
    def _tx(self) -> Iterator[None]:
        # Inside a batch, a savepoint: the statements stay all-or-nothing, and the batch
        # commits them with the rest.
        if self._db.in_transaction:
            self._db.execute("SAVEPOINT tx")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK TO tx")
                self._db.execute("RELEASE tx")
                raise
            self._db.execute("RELEASE tx")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group every write of one turn of the state loop into one transaction: a job
        of thousands of small files costs one commit per turn, not several per file.
        Writes made before an error inside the batch are kept (as without a batch)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    # -- jobs ---------------------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        *,
        manifest_digest: str,
        manifest_path: str,
        destination: str,
        warnings: list[str],
        files: Iterable[NewFile] = (),
        finish: str | None = None,
        kind: str = "files",
        connections: int | None = None,
        bandwidth_limit: int | None = None,
        complete: bool = True,
    ) -> None:
        """Create a job (and, in the same transaction, ``files``; a large job's files go
        in with ``add_files`` in chunks). ``finish`` is 'pending' when the job has steps
        to run once every file is done."""
        now = time.time()
        self._jobs.pop(job_id, None)
        with self._tx():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    seq,
                    manifest_digest,
                    manifest_path,
                    destination,
                    json.dumps(warnings),
                    now,
                    finish,
                    kind,
                    connections,
                    bandwidth_limit,
                    int(complete),
                    now,
                ),
            )
            self._insert_files(job_id, list(files), now)

    def set_complete(self, job_id: str) -> None:
        """Every file row of the job is in."""
        self._jobs.pop(job_id, None)
        self._db.execute("UPDATE jobs SET complete = 1 WHERE id = ?", (job_id,))

    def incomplete_jobs(self) -> list[JobRow]:
        """Jobs whose file rows were not all in when the daemon stopped."""
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE complete = 0").fetchall()
        return [_job_row(r) for r in rows]

    def carry_over(self, job_id: str) -> dict[tuple[str, str], tuple[str, int, Any]]:
        """(path, expect) -> (state, bytes_done, checkpoint) of the job's files that have
        something to carry over to a replacing manifest, in one query."""
        rows = self._db.execute(
            "SELECT f.path, f.expect, f.state, f.bytes_done, c.state FROM files f"
            " LEFT JOIN checkpoints c ON c.file_id = f.id"
            " WHERE f.job_id = ? AND (f.state = 'done' OR f.bytes_done > 0 OR c.state IS NOT NULL)",
            (job_id,),
        ).fetchall()
        return {
            (path, expect or ""): (state, done, json.loads(cp) if cp else None)
            for path, expect, state, done, cp in rows
        }

    def add_files(self, job_id: str, files: list[NewFile]) -> None:
        """Add one chunk of a job's files in one short transaction."""
        with self._tx():
            self._insert_files(job_id, files, time.time())

    def _insert_files(self, job_id: str, files: list[NewFile], now: float) -> None:
        self._db.executemany(
            "INSERT INTO files (job_id, idx, path, size, expect, state, bytes_done, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(job_id, f.idx, f.path, f.size, f.expect, f.state, f.bytes_done, now) for f in files],
        )
        carried = [f for f in files if f.checkpoint is not None]
        if carried:
            self._db.executemany(
                "INSERT INTO checkpoints SELECT id, ?, ? FROM files WHERE job_id = ? AND idx = ?",
                [(json.dumps(f.checkpoint), now, job_id, f.idx) for f in carried],
            )

    def delete_job(self, job_id: str) -> None:
        """Delete a job with its files, checkpoints cascading."""
        self._jobs.pop(job_id, None)
        with self._tx():
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def get_job(self, job_id: str) -> JobRow | None:
        """A job's row. Kept in memory until the store itself changes the job (it is the
        only writer): the scheduler asks for it for every file it starts."""
        cached = self._jobs.get(job_id)
        if cached is not None:
            return cached
        r = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if r is None:
            return None
        job = self._jobs[job_id] = _job_row(r)
        return job

    def list_jobs(self) -> list[JobRow]:
        """Every job, oldest first."""
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq").fetchall()
        return [_job_row(r) for r in rows]

    def set_finish(
        self, job_id: str, finish: str | None, error: dict[str, Any] | None = None
    ) -> None:
        """Record the state of a job's own steps (and their error, if they failed)."""
        self._jobs.pop(job_id, None)
        self._db.execute(
            "UPDATE jobs SET finish = ?, finish_error = ?, updated = ? WHERE id = ?",
            (finish, json.dumps(error) if error else None, time.time(), job_id),
        )

    # -- files --------------------------------------------------------------------------

    def get_file(self, file_id: int) -> FileRow:
        """A file's row; KeyError if there is none."""
        r = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,))
        row = r.fetchone()
        if row is None:
            raise KeyError(file_id)
        return _file_row(row)

    def job_files(self, job_id: str, *, offset: int = 0, limit: int = 1000) -> list[FileRow]:
        """A page of a job's files, in manifest order."""
        rows = self._db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE job_id = ? ORDER BY idx LIMIT ? OFFSET ?",
            (job_id, limit, offset),
        ).fetchall()
        return [_file_row(r) for r in rows]

    def files_in_state(self, state: str, *, job_id: str | None = None) -> list[FileRow]:
        """Files in ``state`` (of one job, in manifest order, if given)."""
        if job_id is None:
            q = f"SELECT {_FILE_COLUMNS} FROM files WHERE state = ? ORDER BY id"
            rows = self._db.execute(q, (state,)).fetchall()
        else:
            q = f"SELECT {_FILE_COLUMNS} FROM files WHERE state = ? AND job_id = ? ORDER BY idx"
            rows = self._db.execute(q, (state, job_id)).fetchall()
        return [_file_row(r) for r in rows]

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
        not_skipped = f" AND id NOT IN ({','.join('?' * len(skip_ids))})" if skip_ids else ""
        # One job at a time along the partial index of queued files in manifest order
        # (``+not_before`` keeps the planner on it): a pass reads about as many rows as it
        # returns, where one sorted query over all jobs read every queued file each time.
        query = (
            f"SELECT {_FILE_COLUMNS} FROM files"
            f" WHERE job_id = ? AND state = 'queued' AND +not_before <= ?{not_skipped}"
            " ORDER BY idx LIMIT ?"
        )
        found: list[FileRow] = []
        jobs = self._db.execute("SELECT id FROM jobs ORDER BY seq").fetchall()
        for (job_id,) in jobs:
            if len(found) >= limit:
                break
            rows = self._db.execute(query, (job_id, now, *skip_ids, limit - len(found))).fetchall()
            found.extend(_file_row(r) for r in rows)
        return found

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
        sql, args = _state_update(
            state,
            reason=reason,
            error=error,
            not_before=not_before,
            attempts=attempts,
            source=source,
            digests=digests,
            bytes_done=bytes_done,
        )
        self._db.execute(sql, (*args, file_id))

    def set_states(self, state: str, changes: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """``set_state`` for many files at once: (file id, the keyword fields) each; one
        statement batch per set of fields, not one statement per file."""
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for file_id, fields in changes:
            sql, args = _state_update(state, **fields)
            groups.setdefault(sql, []).append((*args, file_id))
        for sql, rows in groups.items():
            self._db.executemany(sql, rows)

    def get_files(self, file_ids: Sequence[int]) -> dict[int, FileRow]:
        """Many files' rows by id in a few queries (ids without a row are left out)."""
        found: dict[int, FileRow] = {}
        for i in range(0, len(file_ids), 500):
            chunk = list(file_ids[i : i + 500])
            rows = self._db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            found.update((r[0], _file_row(r)) for r in rows)
        return found

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
        """Set why a file waits, without changing its state."""
        self._db.execute("UPDATE files SET reason = ? WHERE id = ?", (reason, file_id))

    def set_progress(self, file_id: int, bytes_done: int) -> None:
        """Record a file's progress."""
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
        self._jobs.clear()
        return cur.rowcount


def _job_row(r: tuple[Any, ...]) -> JobRow:
    return JobRow(
        id=r[0],
        seq=r[1],
        manifest_digest=r[2],
        manifest_path=r[3],
        destination=r[4],
        warnings=json.loads(r[5]),
        created=r[6],
        finish=r[7],
        finish_error=json.loads(r[8]) if r[8] else None,
        kind=r[9],
        connections=r[10],
        bandwidth_limit=r[11],
        complete=bool(r[12]),
    )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]

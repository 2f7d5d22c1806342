"""The store's shard and failure tables: the SQLite :class:`WorkQueue` of one node.

Part of the store (only the store's modules import sqlite3). It shares the store's
connection and thread; :func:`migrate` creates its tables and is called by the store when
it opens the database. Its tables carry their own schema version (``shard_schema``), so
they migrate independently of the store's ``PRAGMA user_version``.

One row per shard and one per failed sample, never one per URL: a job of 10^9 URLs at
10,000 per shard is 10^5 shard rows. Job counters live in ``shard_counters`` and are
updated in the transaction that changes a shard's state, so :meth:`counts` reads a
handful of rows however large the job is.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .workqueue import (
    DEFAULT_MAX_DELIVERIES,
    DeadShard,
    FailedSample,
    JobConflict,
    Lease,
    LeaseLost,
    QueueCounts,
    QueueJob,
    ShardSpec,
    ShardState,
    ShardSummary,
    plan_retry_shards,
)

__all__ = ["SHARD_MIGRATIONS", "SqliteWorkQueue", "migrate", "open_queue"]

# Each entry moves these tables from version i to i + 1. Never edit a released entry.
SHARD_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE shard_jobs (
        job TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        digest TEXT NOT NULL,
        created REAL NOT NULL,
        next_shard INTEGER NOT NULL DEFAULT 0,
        complete INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE shards (
        job TEXT NOT NULL,
        shard_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        lease_owner TEXT,
        lease_deadline REAL,
        deliveries INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        samples TEXT,
        bytes INTEGER,
        updated REAL NOT NULL,
        PRIMARY KEY (job, shard_id)
    ) WITHOUT ROWID;
    CREATE INDEX shards_queued ON shards (seq, shard_id) WHERE state = 'queued';
    CREATE INDEX shards_claimed ON shards (updated) WHERE state = 'claimed';
    CREATE INDEX shards_owner ON shards (lease_owner) WHERE state = 'claimed';
    CREATE TABLE shard_failures (
        job TEXT NOT NULL,
        row INTEGER NOT NULL,
        shard_id INTEGER NOT NULL,
        url TEXT NOT NULL,
        class TEXT NOT NULL,
        message TEXT NOT NULL,
        http_status INTEGER,
        attempts INTEGER NOT NULL,
        PRIMARY KEY (job, row)
    ) WITHOUT ROWID;
    CREATE INDEX shard_failures_by_shard ON shard_failures (job, shard_id);
    CREATE TABLE shard_counters (
        job TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (job, kind, key)
    ) WITHOUT ROWID;
    """,
)

_PAGE = 1000


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'shard_schema'"
    ).fetchone()
    if row is None:
        return 0
    return int(conn.execute("SELECT version FROM shard_schema").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Create or upgrade the shard tables on ``conn`` (autocommit mode, as the store opens
    it); idempotent. Returns the tables' schema version."""
    version = _schema_version(conn)
    if version > len(SHARD_MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"shard tables at version {version}, newer than this acquired understands "
            f"({len(SHARD_MIGRATIONS)})"
        )
    for i in range(version, len(SHARD_MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if i == 0:
                conn.execute("CREATE TABLE shard_schema (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO shard_schema VALUES (0)")
            for statement in (s.strip() for s in SHARD_MIGRATIONS[i].split(";")):
                if statement:
                    conn.execute(statement)
            conn.execute("UPDATE shard_schema SET version = ?", (i + 1,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return len(SHARD_MIGRATIONS)


def open_queue(path: Path, **kwargs: Any) -> SqliteWorkQueue:
    """A queue on its own connection to ``path`` (WAL mode, tables migrated); for tools
    and tests. The daemon passes the store's connection to :class:`SqliteWorkQueue`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    migrate(conn)
    return SqliteWorkQueue(conn, **kwargs)


def _in(values: Sequence[str]) -> str:
    return ", ".join("?" for _ in values)


class SqliteWorkQueue:
    """The :class:`~acquired.daemon.workqueue.WorkQueue` of one node, in the store.

    As in Redis, a lease expires when its shard was neither claimed nor renewed for the
    *claimer's* ``lease_s`` (every node of a job uses the same lease); ``updated`` is
    that last touch. ``clock`` is wall-clock time, so leases outlive a restart.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = conn
        self.max_deliveries = max_deliveries
        self._clock = clock

    def close(self) -> None:
        """Close the connection (only for a queue made by :func:`open_queue`)."""
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _bump(self, job: str, kind: str, key: str, n: int) -> None:
        if n:
            self._db.execute(
                "INSERT INTO shard_counters VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job, kind, key) DO UPDATE SET n = n + excluded.n",
                (job, kind, key, n),
            )

    def _move(self, job: str, old: str, new: str, n: int = 1) -> None:
        self._bump(job, "state", old, -n)
        self._bump(job, "state", new, n)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, job: QueueJob, shards: Iterable[ShardSpec], final: bool = True) -> bool:
        """See :meth:`WorkQueue.publish`; each call is one transaction."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT digest, seq, next_shard, complete FROM shard_jobs WHERE job = ?",
                (job.name,),
            ).fetchone()
            if row is not None and row[0] != job.digest:
                raise JobConflict(
                    f"job {job.name!r} is already queued with another manifest",
                    job=job.name,
                    digest=job.digest,
                    queued_digest=row[0],
                )
            if row is not None and row[3]:
                return False
            if row is None:
                seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM shard_jobs").fetchone()[0]
                db.execute(
                    "INSERT INTO shard_jobs (job, seq, digest, created) VALUES (?, ?, ?, ?)",
                    (job.name, seq, job.digest, now),
                )
                start = 0
            else:
                seq, start = row[1], row[2]
            fresh = (s for s in shards if s.shard_id >= start)
            n = self._insert_shards(job.name, seq, fresh, now)
            self._bump(job.name, "state", "queued", n)
            db.execute(
                "UPDATE shard_jobs SET next_shard = (SELECT COALESCE(MAX(shard_id), -1) + 1"
                " FROM shards WHERE job = ?), complete = ? WHERE job = ?",
                (job.name, int(final), job.name),
            )
        return row is None or n > 0

    def _insert_shards(self, job: str, seq: int, shards: Iterable[ShardSpec], now: float) -> int:
        count = 0

        def rows() -> Iterator[tuple[Any, ...]]:
            nonlocal count
            for s in shards:
                if s.job != job:
                    raise ValueError(f"shard {s.shard_id} belongs to {s.job!r}, not {job!r}")
                count += 1
                yield (job, s.shard_id, seq, s.to_json(), "queued", now)

        self._db.executemany(
            "INSERT INTO shards (job, shard_id, seq, spec, state, updated)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows(),
        )
        return count

    # -- leases -------------------------------------------------------------------------

    def claim(
        self, consumer: str, n: int, lease_s: float, jobs: Iterable[str] | None = None
    ) -> list[Lease]:
        """See :meth:`WorkQueue.claim`."""
        if n <= 0:
            return []
        now = self._clock()
        only = list(jobs) if jobs is not None else None
        if only == []:
            return []
        where = f" AND job IN ({_in(only)})" if only else ""
        args: list[Any] = list(only or [])
        with self._tx() as db:
            self._bury_expired(now - lease_s, where, args)
            picked = db.execute(
                "SELECT job, shard_id, spec, deliveries, state FROM shards"
                f" WHERE state = 'claimed' AND updated <= ?{where}"
                " ORDER BY updated LIMIT ?",
                [now - lease_s, *args, n],
            ).fetchall()
            if len(picked) < n:
                picked += db.execute(
                    "SELECT job, shard_id, spec, deliveries, state FROM shards"
                    f" WHERE state = 'queued'{where} ORDER BY seq, shard_id LIMIT ?",
                    [*args, n - len(picked)],
                ).fetchall()
            deadline = now + lease_s
            leases: list[Lease] = []
            for job, shard_id, spec, deliveries, state in picked:
                db.execute(
                    "UPDATE shards SET state = 'claimed', lease_owner = ?, lease_deadline = ?,"
                    " deliveries = ?, updated = ? WHERE job = ? AND shard_id = ?",
                    (consumer, deadline, deliveries + 1, now, job, shard_id),
                )
                if state == "queued":
                    self._move(job, "queued", "claimed")
                leases.append(
                    Lease(
                        shard=ShardSpec.from_json(job, shard_id, spec),
                        consumer=consumer,
                        token=str(deliveries + 1),
                        deadline=deadline,
                        deliveries=deliveries + 1,
                    )
                )
        return leases

    def _bury_expired(self, idle_since: float, where: str, args: list[Any]) -> None:
        """Expired leases of shards already delivered ``max_deliveries`` times: dead."""
        now = self._clock()
        rows = self._db.execute(
            "SELECT job, shard_id, deliveries, lease_owner FROM shards"
            f" WHERE state = 'claimed' AND updated <= ? AND deliveries >= ?{where}",
            [idle_since, self.max_deliveries, *args],
        ).fetchall()
        for job, shard_id, deliveries, owner in rows:
            self._db.execute(
                "UPDATE shards SET state = 'dead', lease_owner = NULL, last_error = ?,"
                " updated = ? WHERE job = ? AND shard_id = ?",
                (
                    f"lease expired on delivery {deliveries} of {self.max_deliveries}"
                    f" (held by {owner})",
                    now,
                    job,
                    shard_id,
                ),
            )
            self._move(job, "claimed", "dead")

    def _current(self, lease: Lease) -> bool:
        row = self._db.execute(
            "SELECT state, lease_owner, deliveries FROM shards WHERE job = ? AND shard_id = ?",
            (lease.shard.job, lease.shard.shard_id),
        ).fetchone()
        return row is not None and tuple(row) == ("claimed", lease.consumer, int(lease.token))

    def renew(self, lease: Lease, lease_s: float) -> Lease:
        """See :meth:`WorkQueue.renew`."""
        now = self._clock()
        with self._tx() as db:
            if not self._current(lease):
                raise LeaseLost(
                    f"shard {lease.shard.shard_id} of {lease.shard.job!r} is no longer leased "
                    f"to {lease.consumer}",
                    job=lease.shard.job,
                    shard=lease.shard.shard_id,
                )
            db.execute(
                "UPDATE shards SET lease_deadline = ?, updated = ? WHERE job = ? AND shard_id = ?",
                (now + lease_s, now, lease.shard.job, lease.shard.shard_id),
            )
        return Lease(lease.shard, lease.consumer, lease.token, now + lease_s, lease.deliveries)

    def ack(self, lease: Lease, summary: ShardSummary) -> None:
        """See :meth:`WorkQueue.ack`: counted the first time only, whoever acks."""
        job, shard_id = lease.shard.job, lease.shard.shard_id
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM shards WHERE job = ? AND shard_id = ?", (job, shard_id)
            ).fetchone()
            if row is None or row[0] == "done":
                return
            db.execute(
                "UPDATE shards SET state = 'done', lease_owner = NULL, lease_deadline = NULL,"
                " samples = ?, bytes = ?, updated = ? WHERE job = ? AND shard_id = ?",
                (json.dumps(dict(summary.samples)), summary.bytes, now, job, shard_id),
            )
            self._move(job, row[0], "done")
            for key, n in summary.samples.items():
                self._bump(job, "samples", key, n)
            self._bump(job, "bytes", "", summary.bytes)

    def nack(self, lease: Lease, error: str, requeue: bool = True) -> ShardState:
        """See :meth:`WorkQueue.nack`; a stale lease changes nothing."""
        job, shard_id = lease.shard.job, lease.shard.shard_id
        now = self._clock()
        with self._tx() as db:
            if not self._current(lease):
                row = db.execute(
                    "SELECT state FROM shards WHERE job = ? AND shard_id = ?", (job, shard_id)
                ).fetchone()
                return row[0] if row else "dead"
            state = "queued" if requeue and lease.deliveries < self.max_deliveries else "dead"
            db.execute(
                "UPDATE shards SET state = ?, lease_owner = NULL, lease_deadline = NULL,"
                " last_error = ?, updated = ? WHERE job = ? AND shard_id = ?",
                (state, error, now, job, shard_id),
            )
            self._move(job, "claimed", state)
        return state  # type: ignore[return-value]

    def recover(self, consumer: str) -> int:
        """See :meth:`WorkQueue.recover`."""
        now = self._clock()
        with self._tx() as db:
            rows = db.execute(
                "SELECT job, COUNT(*) FROM shards WHERE state = 'claimed' AND lease_owner = ?"
                " GROUP BY job",
                (consumer,),
            ).fetchall()
            db.execute(
                "UPDATE shards SET state = 'queued', lease_owner = NULL, lease_deadline = NULL,"
                " last_error = 'interrupted: the node restarted', updated = ?"
                " WHERE state = 'claimed' AND lease_owner = ?",
                (now, consumer),
            )
            for job, n in rows:
                self._move(job, "claimed", "queued", n)
        return sum(n for _, n in rows)

    # -- views --------------------------------------------------------------------------

    def counts(self, job: str) -> QueueCounts:
        """See :meth:`WorkQueue.counts`."""
        shards = {"queued": 0, "claimed": 0, "done": 0, "dead": 0}
        samples: dict[str, int] = {}
        nbytes = 0
        for kind, key, n in self._db.execute(
            "SELECT kind, key, n FROM shard_counters WHERE job = ?", (job,)
        ):
            if kind == "state":
                shards[key] = n
            elif kind == "samples":
                if n:
                    samples[key] = n
            else:
                nbytes = n
        return QueueCounts(shards, samples, nbytes)

    def dead(self, job: str) -> list[DeadShard]:
        """See :meth:`WorkQueue.dead`."""
        return [
            DeadShard(shard_id, deliveries, last_error or "")
            for shard_id, deliveries, last_error in self._db.execute(
                "SELECT shard_id, deliveries, last_error FROM shards"
                " WHERE job = ? AND state = 'dead' ORDER BY shard_id",
                (job,),
            )
        ]

    def shard_states(self, job: str) -> dict[int, str]:
        """Every shard id of ``job`` with its state (for tests and small jobs)."""
        return dict(
            self._db.execute("SELECT shard_id, state FROM shards WHERE job = ?", (job,)).fetchall()
        )

    # -- failures -----------------------------------------------------------------------

    def record_failures(self, job: str, shard_id: int, failures: Iterable[FailedSample]) -> None:
        """See :meth:`WorkQueue.record_failures`; ignored once the shard is done (the
        first ack's failures and counters stay together)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM shards WHERE job = ? AND shard_id = ?", (job, shard_id)
            ).fetchone()
            if row is None or row[0] == "done":
                return
            db.execute("DELETE FROM shard_failures WHERE job = ? AND shard_id = ?", (job, shard_id))
            db.executemany(
                "INSERT OR REPLACE INTO shard_failures VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (job, f.row, shard_id, f.url, f.cls, f.message, f.http_status, f.attempts)
                    for f in failures
                ),
            )

    def failures(self, job: str, classes: Iterable[str] | None = None) -> Iterator[FailedSample]:
        """See :meth:`WorkQueue.failures`: pages of rows, no cursor held between them."""
        only = sorted(set(classes)) if classes is not None else None
        where = f" AND class IN ({_in(only)})" if only else ""
        last = -1
        while True:
            page = self._db.execute(
                "SELECT row, url, class, message, http_status, attempts, shard_id"
                f" FROM shard_failures WHERE job = ? AND row > ?{where} ORDER BY row LIMIT ?",
                [job, last, *(only or []), _PAGE],
            ).fetchall()
            for r in page:
                yield FailedSample(r[0], r[1], r[2], r[3], r[4], r[5], r[6])
            if len(page) < _PAGE:
                return
            last = page[-1][0]

    def retry_failed(
        self, job: str, classes: Iterable[str] | None = None, shard_size: int = 10_000
    ) -> list[ShardSpec]:
        """See :meth:`WorkQueue.retry_failed`. Samples whose shard is still queued or
        claimed (a retry under way) are left alone."""
        only = sorted(set(classes)) if classes is not None else None
        where = f" AND f.class IN ({_in(only)})" if only else ""
        now = self._clock()
        with self._tx() as db:
            job_row = db.execute(
                "SELECT seq FROM shard_jobs WHERE job = ? AND complete = 1", (job,)
            ).fetchone()
            if job_row is None:
                return []
            picked = db.execute(
                "SELECT f.row, f.class FROM shard_failures f JOIN shards s"
                " ON s.job = f.job AND s.shard_id = f.shard_id"
                f" WHERE f.job = ? AND s.state IN ('done', 'dead'){where}",
                [job, *(only or [])],
            ).fetchall()
            if not picked:
                return []
            first = db.execute(
                "SELECT COALESCE(MAX(shard_id), -1) + 1 FROM shards WHERE job = ?", (job,)
            ).fetchone()[0]
            new = plan_retry_shards(job, first, (r for r, _ in picked), shard_size)
            self._insert_shards(job, job_row[0], new, now)
            self._bump(job, "state", "queued", len(new))
            db.execute(
                "UPDATE shard_jobs SET next_shard = ? WHERE job = ?", (new[-1].shard_id + 1, job)
            )
            db.executemany(
                "UPDATE shard_failures SET shard_id = ? WHERE job = ? AND row = ?",
                ((s.shard_id, job, row) for s in new for row in s.rows),
            )
            by_class: dict[str, int] = {}
            for _, klass in picked:
                by_class[klass] = by_class.get(klass, 0) + 1
            for klass, n in by_class.items():
                self._bump(job, "samples", klass, -n)
        return new

    def remove(self, job: str) -> None:
        """See :meth:`WorkQueue.remove`."""
        with self._tx() as db:
            for table in ("shard_jobs", "shards", "shard_failures", "shard_counters"):
                db.execute(f"DELETE FROM {table} WHERE job = ?", (job,))

"""The store's shard tables: migration beside the store's own schema, and scale."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from acquired.daemon.shardstore import SHARD_MIGRATIONS, SqliteWorkQueue, migrate, open_queue
from acquired.daemon.store import Store
from acquired.daemon.workqueue import QueueJob, ShardSummary, plan_shards


def test_migrate_is_idempotent_and_leaves_the_store_schema_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "acquired.db")
    conn = store._db
    before = store.schema_version
    assert migrate(conn) == len(SHARD_MIGRATIONS)
    assert migrate(conn) == len(SHARD_MIGRATIONS)
    assert store.schema_version == before
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"shards", "shard_failures", "shard_jobs", "shard_counters"} <= tables
    queue = SqliteWorkQueue(conn)
    queue.publish(QueueJob("j", "d"), plan_shards("j", 100, 10))
    assert queue.counts("j").shards["queued"] == 10
    store.close()
    # Reopened by the store (its own migrations run again): the shard rows are kept.
    store = Store(tmp_path / "acquired.db")
    migrate(store._db)
    assert SqliteWorkQueue(store._db).counts("j").shards_total == 10
    store.close()


def test_tables_newer_than_this_code_are_refused(tmp_path: Path) -> None:
    queue = open_queue(tmp_path / "q.db")
    queue._db.execute("UPDATE shard_schema SET version = 99")
    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        migrate(queue._db)
    queue.close()


def test_a_hundred_thousand_shards(tmp_path: Path) -> None:
    queue = open_queue(tmp_path / "q.db")
    job = QueueJob("laion", "d" * 64)
    started = time.perf_counter()
    assert queue.publish(job, plan_shards(job.name, 10**9, 10_000))
    elapsed = time.perf_counter() - started
    print(f"\nsqlite: published 100,000 shards in {elapsed:.2f} s ({1e5 / elapsed:,.0f}/s)")
    assert queue.counts(job.name).shards["queued"] == 100_000
    # Claiming from the middle of a large job reads an index, not the table.
    for _ in range(3):
        leases = queue.claim("n1", 100, 30)
        for lease in leases:
            queue.ack(lease, ShardSummary({"ok": 10_000}, 1))
    counts = queue.counts(job.name)
    assert counts.shards["done"] == 300 and counts.samples["ok"] == 3_000_000
    plan = queue._db.execute(
        "EXPLAIN QUERY PLAN SELECT job, shard_id FROM shards WHERE state = 'queued'"
        " ORDER BY seq, shard_id LIMIT 10"
    ).fetchall()
    assert "shards_queued" in " ".join(str(r) for r in plan)
    queue.close()

"""The URL-list work queue: both implementations in the same run.

    .venv/bin/python bench/bench_workqueue.py

For SQLite (the store) and Redis Streams (a redis-server started here on a free loopback
port): publishing 100,000 shards (10^9 URLs at 10,000 a shard), then the life of 2,000
shards as a node lives it (claimed 10 at a time, renewed once, failures recorded, acked),
and for Redis the commands executed per shard, by command, and the round trips.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.redis_server import RedisServer

from acquired.daemon.redisqueue import connect
from acquired.daemon.shardstore import open_queue
from acquired.daemon.workqueue import FailedSample, QueueJob, ShardSummary, plan_shards

SHARDS = 100_000
LIFE = 2_000


def run(q: Any, name: str) -> dict[str, float]:
    job = QueueJob("laion", "d" * 64, {"name": "laion"})
    t = time.perf_counter()
    q.publish(job, plan_shards(job.name, SHARDS * 10_000, 10_000))
    publish_s = time.perf_counter() - t
    t = time.perf_counter()
    done = 0
    while done < LIFE:
        for lease in q.claim("n1", 10, 300):
            lease = q.renew(lease, 300)
            failures = [FailedSample(lease.shard.start_row + 7, "http://x/7", "timeout")]
            q.record_failures(job.name, lease.shard.shard_id, failures)
            q.ack(lease, ShardSummary({"ok": 9_999, "timeout": 1}, 10**8))
            done += 1
    life_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(100):
        counts = q.counts(job.name)
    counts_ms = (time.perf_counter() - t) * 10
    assert counts.shards["done"] == LIFE and counts.samples["ok"] == LIFE * 9_999
    print(
        f"{name:7s} publish {SHARDS:,} shards: {publish_s:.2f} s ({SHARDS / publish_s:,.0f}/s); "
        f"claim+renew+failures+ack: {LIFE / life_s:,.0f} shards/s; counts(): {counts_ms:.2f} ms"
    )
    return {"publish_s": publish_s, "life_s": life_s}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        q = open_queue(Path(tmp) / "acquired.db")
        run(q, "sqlite")
        size = (Path(tmp) / "acquired.db").stat().st_size + (
            Path(tmp) / "acquired.db-wal"
        ).stat().st_size
        print(f"        database with {SHARDS:,} shard rows: {size / 1e6:.1f} MB")
        q.close()

        server = RedisServer(Path(tmp) / "redis").start()
        try:
            q = connect(server.url, node="n1")
            q.client.config_resetstat()
            before = q.round_trips
            run(q, "redis")
            stats = q.client.info("commandstats")
            memory = q.client.info("memory")["used_memory"]
            trips = q.round_trips - before
            # Per shard of the life above: subtract publishing (evalsha of PUBLISH + XADD).
            per = {
                k.removeprefix("cmdstat_"): v["calls"]
                for k, v in stats.items()
                if k not in ("cmdstat_info", "cmdstat_config|resetstat")
            }
            per["xadd"] -= SHARDS
            per["evalsha"] -= SHARDS // 1000
            per["hset"] -= SHARDS // 1000 + 1
            life = {k: v / LIFE for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0}
            total = sum(life.values())
            print(
                f"        per shard: {total:.1f} commands executed (inside scripts included), "
                f"{(trips - SHARDS // 1000 - 4) / LIFE:.1f} round trips; "
                + ", ".join(f"{k} {v:.2f}" for k, v in life.items() if v >= 0.05)
            )
            print(f"        memory with {SHARDS:,} entries: {memory / 1e6:.1f} MB")
            q.close()
        finally:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The WorkQueue contract, run against both implementations: SQLite (the store) and Redis
Streams (a real redis-server started for this module)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.redis_server import RedisServer

from acquired.daemon.workqueue import (
    FailedSample,
    JobConflict,
    Lease,
    LeaseLost,
    QueueJob,
    ShardSpec,
    ShardSummary,
    WorkQueue,
    plan_retry_shards,
    plan_shards,
)

ROOT = Path(__file__).resolve().parent.parent
JOB = QueueJob("laion-part0", "d" * 64, {"name": "laion-part0"})

MakeQueue = Callable[..., Any]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_queue(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeQueue]:
    """make_queue(node, max_deliveries) -> a queue on the same shared state as the others
    made in this test (another node, for Redis; another connection, for SQLite)."""
    opened: list[Any] = []
    where = str(tmp_path / "state" / "acquired.db")
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        where = server.url
        from acquired.daemon.redisqueue import connect

        first = connect(where, node="setup")
        first.client.flushall()
        first.close()

    def make(node: str = "n1", max_deliveries: int = 5) -> Any:
        if backend == "sqlite":
            from acquired.daemon.shardstore import open_queue

            q: Any = open_queue(Path(where), max_deliveries=max_deliveries)
        else:
            from acquired.daemon.redisqueue import connect

            q = connect(where, node=node, max_deliveries=max_deliveries)
        q.where = where
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


def publish(q: WorkQueue, shards: int = 10, size: int = 10, job: QueueJob = JOB) -> None:
    assert q.publish(job, plan_shards(job.name, shards * size, size)) is True


def claim_until(q: WorkQueue, consumer: str, n: int, lease_s: float) -> list[Lease]:
    """Poll until a lease expired elsewhere is handed over (Redis measures idle time on
    the server, so there is no clock to move); gives up after 20 s."""
    deadline = time.monotonic() + 20
    got: list[Lease] = []
    while len(got) < n and time.monotonic() < deadline:
        got += q.claim(consumer, n - len(got), lease_s)
        time.sleep(0.05)
    return got


def summary(ok: int, **failed: int) -> ShardSummary:
    return ShardSummary({"ok": ok, **failed}, bytes=ok * 1000)


def test_satisfies_protocol(make_queue: MakeQueue) -> None:
    assert isinstance(make_queue(), WorkQueue)


def test_publish_once_and_claim_in_order(make_queue: MakeQueue) -> None:
    q = make_queue()
    publish(q, shards=5)
    assert q.publish(JOB, plan_shards(JOB.name, 50, 10)) is False  # same manifest: one job
    with pytest.raises(JobConflict):
        q.publish(QueueJob(JOB.name, "e" * 64), plan_shards(JOB.name, 50, 10))
    counts = q.counts(JOB.name)
    assert dict(counts.shards) == {"queued": 5, "claimed": 0, "done": 0, "dead": 0}
    leases = q.claim("n1", 3, 30)
    assert [lease.shard.shard_id for lease in leases] == [0, 1, 2]
    assert leases[1].shard == ShardSpec(JOB.name, 1, 10, 20)
    assert all(lease.deliveries == 1 and lease.consumer == "n1" for lease in leases)
    assert [lease.shard.shard_id for lease in q.claim("n2", 10, 30)] == [3, 4]
    assert q.claim("n2", 10, 30) == []
    assert q.counts(JOB.name).shards["claimed"] == 5


def test_same_manifest_on_two_nodes_is_one_job(make_queue: MakeQueue) -> None:
    a, b = make_queue("a"), make_queue("b")
    publish(a, shards=4)
    assert b.publish(JOB, plan_shards(JOB.name, 40, 10)) is False
    with pytest.raises(JobConflict) as err:
        b.publish(QueueJob(JOB.name, "f" * 64), plan_shards(JOB.name, 40, 10))
    assert err.value.code == "queue.job_conflict" and err.value.hint
    assert b.counts(JOB.name).shards_total == 4


def test_publish_interrupted_half_way_is_completed_without_duplicates(
    make_queue: MakeQueue,
) -> None:
    q = make_queue()

    def broken() -> Iterator[ShardSpec]:
        for i, spec in enumerate(plan_shards(JOB.name, 3000 * 2, 2)):
            if i == 1500:
                raise OSError("input vanished")
            yield spec

    with pytest.raises(OSError):
        q.publish(JOB, broken())
    q.publish(JOB, plan_shards(JOB.name, 3000 * 2, 2))
    assert q.counts(JOB.name).shards_total == 3000
    ids = [lease.shard.shard_id for lease in q.claim("n1", 5000, 30)]
    assert sorted(ids) == list(range(3000))


def test_jobs_filter_and_oldest_job_first(make_queue: MakeQueue) -> None:
    q = make_queue()
    other = QueueJob("other", "a" * 64)
    publish(q, shards=2)
    publish(q, shards=2, job=other)
    assert [lease.shard.job for lease in q.claim("n1", 3, 30)] == [JOB.name, JOB.name, "other"]
    assert [lease.shard.job for lease in q.claim("n1", 3, 30, jobs=[JOB.name])] == []
    assert [lease.shard.job for lease in q.claim("n1", 3, 30, jobs=["other"])] == ["other"]


def test_expired_lease_is_taken_over_and_the_slow_ack_counts_once(make_queue: MakeQueue) -> None:
    a, b = make_queue("a"), make_queue("b")
    publish(a, shards=1)
    [slow] = a.claim("a", 1, 30)
    assert b.claim("b", 1, 30) == []  # A's lease is alive
    [fast] = claim_until(b, "b", 1, 0.2)
    assert fast.shard == slow.shard and fast.deliveries == 2
    with pytest.raises(LeaseLost):
        a.renew(slow, 30)
    b.renew(fast, 30)
    a.ack(slow, summary(9, timeout=1))  # the slow node comes back first
    b.ack(fast, summary(10))
    a.ack(slow, summary(9, timeout=1))
    counts = b.counts(JOB.name)
    assert dict(counts.shards) == {"queued": 0, "claimed": 0, "done": 1, "dead": 0}
    assert dict(counts.samples) == {"ok": 9, "timeout": 1}
    assert counts.bytes == 9000
    assert b.claim("b", 1, 0.01) == []


def test_renew_keeps_the_shard(make_queue: MakeQueue) -> None:
    a, b = make_queue("a"), make_queue("b")
    publish(a, shards=1)
    [lease] = a.claim("a", 1, 30)
    time.sleep(1.5)
    lease = a.renew(lease, 30)
    # Idle for 1.5 s before the renewal; a 1.2 s lease sees it as expired only if the
    # renewal did not reset it.
    assert b.claim("b", 1, 1.2) == []
    a.ack(lease, summary(10))
    assert a.counts(JOB.name).shards["done"] == 1


def test_nack_requeues_then_dead_letters_with_the_last_error(make_queue: MakeQueue) -> None:
    q = make_queue(max_deliveries=3)
    publish(q, shards=1)
    for attempt in range(1, 4):
        [lease] = q.claim("n1", 1, 30)
        assert lease.shard.shard_id == 0 and lease.deliveries == attempt
        state = q.nack(lease, f"disk error {attempt}")
        assert state == ("queued" if attempt < 3 else "dead")
    [dead] = q.dead(JOB.name)
    assert (dead.shard_id, dead.deliveries, dead.last_error) == (0, 3, "disk error 3")
    assert q.claim("n1", 5, 30) == []
    other = QueueJob("other", "a" * 64)
    publish(q, shards=1, job=other)
    [lease] = q.claim("n1", 5, 30)
    assert q.nack(lease, "unreadable input", requeue=False) == "dead"
    assert dict(q.counts("other").shards) == {"queued": 0, "claimed": 0, "done": 0, "dead": 1}
    assert q.claim("n1", 5, 30) == []


def test_lease_expiring_max_deliveries_times_dead_letters(make_queue: MakeQueue) -> None:
    q = make_queue(max_deliveries=2)
    publish(q, shards=1)
    assert len(q.claim("a", 1, 30)) == 1
    assert [lease.deliveries for lease in claim_until(q, "b", 1, 0.1)] == [2]
    # Once more past the lease: delivered twice already, so it is buried, not handed out.
    deadline = time.monotonic() + 20
    while not q.dead(JOB.name) and time.monotonic() < deadline:
        assert q.claim("c", 1, 0.1) == []
        time.sleep(0.05)
    [dead] = q.dead(JOB.name)
    assert dead.shard_id == 0 and "lease expired" in dead.last_error
    assert q.counts(JOB.name).shards["dead"] == 1


def test_ack_of_a_dead_shard_revives_it_as_done(make_queue: MakeQueue) -> None:
    q = make_queue(max_deliveries=1)
    publish(q, shards=1)
    [lease] = q.claim("a", 1, 30)
    assert q.nack(lease, "boom") == "dead"
    q.ack(lease, summary(10))
    assert dict(q.counts(JOB.name).shards) == {"queued": 0, "claimed": 0, "done": 1, "dead": 0}
    assert q.dead(JOB.name) == []


def test_recover_returns_a_restarted_nodes_shards_at_once(make_queue: MakeQueue) -> None:
    q = make_queue()
    publish(q, shards=4)
    assert len(q.claim("n1", 3, 300)) == 3
    assert q.recover("n1") == 3
    assert q.recover("n1") == 0
    again = q.claim("n2", 10, 300)
    assert sorted(lease.shard.shard_id for lease in again) == [0, 1, 2, 3]
    assert {lease.shard.shard_id: lease.deliveries for lease in again} == {
        0: 2,
        1: 2,
        2: 2,
        3: 1,
    }


def test_failures_are_replaced_per_shard_and_streamed(make_queue: MakeQueue) -> None:
    q = make_queue()
    publish(q, shards=2)
    [lease, _] = q.claim("n1", 2, 30)
    q.record_failures(JOB.name, 0, [FailedSample(3, "http://x/3", "timeout", "read timed out")])
    rows = [
        FailedSample(1, "http://x/1", "http_5xx", "503", 503, 3),
        FailedSample(4, "http://x/4", "timeout", "read timed out", None, 3),
        FailedSample(7, "http://x/7", "filtered_small", "64x64 < 100"),
    ]
    q.record_failures(JOB.name, 0, rows)  # a redo replaces the first attempt's
    q.ack(lease, summary(7, http_5xx=1, timeout=1, filtered_small=1))
    q.record_failures(JOB.name, 0, [])  # after the ack: ignored
    got = sorted(q.failures(JOB.name), key=lambda f: f.row)
    assert [(f.row, f.cls, f.shard_id) for f in got] == [
        (1, "http_5xx", 0),
        (4, "timeout", 0),
        (7, "filtered_small", 0),
    ]
    assert got[0] == FailedSample(1, "http://x/1", "http_5xx", "503", 503, 3, 0)
    only = sorted(f.row for f in q.failures(JOB.name, classes=["timeout", "http_5xx"]))
    assert only == [1, 4]


def test_retry_failed_refeeds_only_those_and_keeps_rows_accounted(make_queue: MakeQueue) -> None:
    q = make_queue()
    publish(q, shards=2)  # rows 0..19
    failures = {
        0: [FailedSample(1, "u1", "http_5xx"), FailedSample(4, "u4", "timeout")],
        1: [FailedSample(12, "u12", "timeout"), FailedSample(15, "u15", "http_4xx", "", 404)],
    }
    for lease in q.claim("n1", 2, 30):
        fs = failures[lease.shard.shard_id]
        q.record_failures(JOB.name, lease.shard.shard_id, fs)
        q.ack(lease, ShardSummary({"ok": 10 - len(fs), **{f.cls: 1 for f in fs}}, 100))
    assert sum(q.counts(JOB.name).samples.values()) == 20

    new = q.retry_failed(JOB.name, ["timeout", "http_5xx"], shard_size=2)
    assert [(s.shard_id, s.kind, s.rows) for s in new] == [
        (2, "retry", (1, 4)),
        (3, "retry", (12,)),
    ]
    assert q.retry_failed(JOB.name, ["timeout", "http_5xx"]) == []  # already re-fed
    counts = q.counts(JOB.name)
    assert dict(counts.samples) == {"ok": 16, "http_4xx": 1}
    assert counts.shards["queued"] == 2

    leases = {lease.shard.shard_id: lease for lease in q.claim("n2", 5, 30)}
    assert leases[2].shard == new[0]
    q.record_failures(JOB.name, 2, [FailedSample(4, "u4", "timeout", "again", None, 2)])
    q.ack(leases[2], ShardSummary({"ok": 1, "timeout": 1}, 10))
    q.record_failures(JOB.name, 3, [])
    q.ack(leases[3], ShardSummary({"ok": 1}, 10))
    counts = q.counts(JOB.name)
    assert dict(counts.samples) == {"ok": 18, "timeout": 1, "http_4xx": 1}
    assert sum(counts.samples.values()) == 20
    assert counts.finished and counts.shards["done"] == 4
    left = sorted((f.row, f.cls, f.shard_id, f.attempts) for f in q.failures(JOB.name))
    assert left == [(4, "timeout", 2, 2), (15, "http_4xx", 1, 1)]


def test_remove_forgets_the_job(make_queue: MakeQueue) -> None:
    q = make_queue()
    publish(q, shards=3)
    q.remove(JOB.name)
    assert q.counts(JOB.name).shards_total == 0
    assert q.claim("n1", 5, 30) == []
    publish(q, shards=1)  # the name is free again


def test_sigkilled_consumer_shard_goes_to_another_counted_once(
    make_queue: MakeQueue, backend: str
) -> None:
    q = make_queue("survivor")
    publish(q, shards=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    child = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/support/queue_child.py"),
            backend,
            q.where,
            "doomed",
            "1",
        ],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        held = json.loads(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert held == {"shard": 0, "deliveries": 1}
    [other] = q.claim("survivor", 1, 30)
    assert other.shard.shard_id == 1  # the doomed node's shard is not handed out yet
    [taken] = claim_until(q, "survivor", 1, 0.3)
    assert (taken.shard.shard_id, taken.deliveries) == (0, 2)
    for lease in (other, taken, taken):
        q.ack(lease, summary(10))
    counts = q.counts(JOB.name)
    assert counts.shards["done"] == 2 and counts.finished
    assert dict(counts.samples) == {"ok": 20}


def test_plan_retry_shards_groups_sorted_unique_rows() -> None:
    shards = plan_retry_shards("j", 7, [9, 3, 3, 100, 4], shard_size=2)
    assert [(s.shard_id, s.rows, s.start_row, s.stop_row) for s in shards] == [
        (7, (3, 4), 3, 5),
        (8, (9, 100), 9, 101),
    ]
    assert plan_retry_shards("j", 0, [], 5) == []
    with pytest.raises(ValueError):
        plan_retry_shards("j", 0, [1], 0)


@pytest.mark.parametrize(
    "spec",
    [
        ShardSpec("j", 0, 0, 10),
        ShardSpec("j", 3, 30, 40, byte_offset=123456),
        ShardSpec("j", 9, 5, 12, kind="retry", rows=(5, 7, 11)),
    ],
)
def test_shard_spec_round_trips(spec: ShardSpec) -> None:
    assert ShardSpec.from_json(spec.job, spec.shard_id, spec.to_json()) == spec


def test_summaries_add_up() -> None:
    total = summary(5, timeout=1) + summary(3, http_4xx=2) + ShardSummary()
    assert dict(total.samples) == {"ok": 8, "timeout": 1, "http_4xx": 2}
    assert total.total == 11 and total.bytes == 8000


def test_publish_in_slices_then_closed(make_queue: MakeQueue) -> None:
    q = make_queue()
    plan = list(plan_shards(JOB.name, 25 * 4, 4))  # 25 shards
    assert q.publish(JOB, plan[:10], final=False) is True
    assert q.retry_failed(JOB.name) == []  # not while the job is still being published
    assert q.publish(JOB, plan[5:20], final=False) is True  # 5..9 again: skipped
    assert q.publish(JOB, plan[20:], final=True) is True
    assert q.publish(JOB, plan) is False
    assert q.counts(JOB.name).shards_total == 25
    ids = [lease.shard.shard_id for lease in q.claim("n1", 100, 30)]
    assert sorted(ids) == list(range(25))

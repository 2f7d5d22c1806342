"""The Redis work queue beyond the shared contract (tests/test_workqueue.py): start-up
checks, Redis going away and coming back, AOF restarts, fleet views, cost per shard.
Each test runs against a real redis-server of its own on a free loopback port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.backoff import ExponentialWithJitterBackoff
from support.redis_server import RedisServer, free_port

from acquired.daemon.redisqueue import RedisWorkQueue, check_server_version, connect
from acquired.daemon.workqueue import (
    ClusterAuthFailed,
    ClusterConfigError,
    ClusterUnreachable,
    ClusterVersionTooOld,
    FailedSample,
    QueueJob,
    ShardSummary,
    plan_shards,
)

JOB = QueueJob("laion-part0", "d" * 64, {"name": "laion-part0", "kind": "urllist"})
FAST_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=0.5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.kill()


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis-aof", appendonly=True).start()
    yield s
    s.kill()


def wait_for(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("7.0.15", True),
        ("6.2.0", True),
        ("6.2.14", True),
        ("10.0.0", True),
        ("6.0.16", False),
        ("5.0.14", False),
        ("6.1.9", False),
        ("garbage", False),
    ],
)
def test_server_version_check(version: str, ok: bool) -> None:
    if ok:
        check_server_version(version)
    else:
        with pytest.raises(ClusterVersionTooOld) as err:
            check_server_version(version)
        assert err.value.code == "cluster.redis_too_old" and "6.2" in err.value.hint


def test_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret-pass").start()
    try:
        with pytest.raises(ClusterAuthFailed) as err:
            connect(f"redis://:wrong-one@127.0.0.1:{server.port}/0")
        assert err.value.code == "cluster.auth_failed" and "password_file" in err.value.hint
        assert "wrong-one" not in str(err.value)  # the URL is shown redacted
        with pytest.raises(ClusterAuthFailed):
            connect(server.url)  # the server wants one, none given
        good = tmp_path / "redis.pass"
        good.write_text("s3cret-pass\n")
        q = connect(server.url, node="n1", password_file=good)
        assert q.publish(JOB, plan_shards(JOB.name, 10, 5))
        q.close()
        bad = tmp_path / "bad.pass"
        bad.write_text("nope\n")
        with pytest.raises(ClusterAuthFailed):
            connect(server.url, password_file=bad)
    finally:
        server.kill()


def test_password_file_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match=r"missing\.pass"):
        connect("redis://127.0.0.1:1/0", password_file=tmp_path / "missing.pass")
    empty = tmp_path / "empty.pass"
    empty.write_text("\n")
    with pytest.raises(ClusterConfigError, match="one line"):
        connect("redis://127.0.0.1:1/0", password_file=empty)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379/0", "127.0.0.1:6379", "redis://:x@h:notaport/0"]
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ClusterConfigError) as err:
        connect(url)
    assert ":x@" not in str(err.value)


def test_unreachable_and_tls_urls(server: RedisServer) -> None:
    with pytest.raises(ClusterUnreachable) as err:
        connect(f"redis://127.0.0.1:{free_port()}/0", timeout=2)
    assert err.value.code == "cluster.unreachable" and err.value.retryable
    # rediss:// is accepted as a URL; this server speaks no TLS, so it does not answer.
    with pytest.raises(ClusterUnreachable):
        connect(f"rediss://127.0.0.1:{server.port}/0", timeout=2)


def test_redis_down_then_back_buffered_acks_are_delivered(aof_server: RedisServer) -> None:
    q = connect(aof_server.url, node="n1", backoff=FAST_BACKOFF)
    q.publish(JOB, plan_shards(JOB.name, 30, 10))
    first, second = q.claim("n1", 2, 30)
    aof_server.stop()
    # Down: the shards held are finished and their reports wait; claiming pauses.
    q.ack(first, ShardSummary({"ok": 10}, 100))
    q.record_failures(JOB.name, second.shard.shard_id, [FailedSample(12, "u", "timeout")])
    q.ack(second, ShardSummary({"ok": 9, "timeout": 1}, 90))
    status = q.status()
    assert status["connected"] is False and status["buffered"] == 3
    assert status["last_error"]
    assert q.claim("n1", 1, 30) == []
    with pytest.raises(ClusterUnreachable):
        q.renew(second, 30)
    time.sleep(2)  # a few seconds of outage, with attempts backing off meanwhile
    assert q.claim("n1", 1, 30) == []
    aof_server.start()
    wait_for(lambda: q.flush() == 0, "the buffered reports to be delivered")
    assert q.status()["connected"] is True
    counts = q.counts(JOB.name)
    assert dict(counts.shards) == {"queued": 1, "claimed": 0, "done": 2, "dead": 0}
    assert dict(counts.samples) == {"ok": 19, "timeout": 1}
    assert [f.row for f in q.failures(JOB.name)] == [12]
    [third] = q.claim("n1", 5, 30)
    assert third.shard.shard_id == 2
    q.close()


def test_aof_restart_keeps_the_job_and_its_leases(aof_server: RedisServer) -> None:
    q = connect(aof_server.url, node="n1", backoff=FAST_BACKOFF)
    q.publish(JOB, plan_shards(JOB.name, 40, 10))
    done, held = q.claim("n1", 2, 30)
    q.ack(done, ShardSummary({"ok": 10}, 100))
    aof_server.kill()  # SIGKILL: only what the AOF (fsync always) holds survives
    aof_server.start()
    wait_for(lambda: _reachable(q), "the client to reconnect")
    counts = q.counts(JOB.name)
    assert dict(counts.shards) == {"queued": 2, "claimed": 1, "done": 1, "dead": 0}
    assert counts.samples == {"ok": 10}
    assert q.publish(JOB, plan_shards(JOB.name, 40, 10)) is False
    q.renew(held, 30)  # the pending entry and its owner survived
    q.ack(held, ShardSummary({"ok": 10}, 100))
    assert [lease.shard.shard_id for lease in q.claim("n1", 5, 30)] == [2, 3]
    assert q.manifest(JOB.name) == (JOB.digest, dict(JOB.manifest or {}))
    q.close()


def _reachable(q: RedisWorkQueue) -> bool:
    try:
        q.counts(JOB.name)
    except ClusterUnreachable:
        return False
    return True


def test_heartbeats_nodes_and_shard_index(server: RedisServer) -> None:
    a = connect(server.url, node="alpha")
    b = connect(server.url, node="beta")
    a.publish(JOB, plan_shards(JOB.name, 40, 10))
    for q in (a, b):
        for lease in q.claim(q.node, 2, 30):
            q.ack(lease, ShardSummary({"ok": 10}, 100))
    assert a.shard_index(JOB.name) == {0: "alpha", 1: "alpha", 2: "beta", 3: "beta"}
    a.heartbeat({"samples_per_s": 120.5, "shards_held": 2}, ttl_s=60)
    b.heartbeat({"samples_per_s": 80.0, "shards_held": 1}, ttl_s=0.3)
    nodes = {n["node"]: n for n in a.nodes()}
    assert set(nodes) <= {"alpha", "beta"} and nodes["alpha"]["samples_per_s"] == 120.5
    wait_for(lambda: [n["node"] for n in a.nodes()] == ["alpha"], "beta's heartbeat to expire")
    assert b.manifest(JOB.name) == (JOB.digest, dict(JOB.manifest or {}))
    assert b.manifest("nope") is None
    a.close()
    b.close()


def test_fleet_reads_published_jobs_shard_figures_and_removes_only_the_forgotten(
    server: RedisServer,
) -> None:
    q = connect(server.url, node="alpha", backoff=FAST_BACKOFF)
    assert q.published() == {}
    q.publish(JOB, plan_shards(JOB.name, 20, 10))
    assert q.published() == {JOB.name: JOB.digest}
    q.record_shard(JOB.name, 1, {"node": "alpha", "ok": 9, "failed": 1})
    assert q.shard_figures(JOB.name) == {1: {"node": "alpha", "ok": 9, "failed": 1}}
    # Forgotten with another manifest's digest: the job published now stays.
    assert q.remove_if(JOB.name, "f" * 64) is False
    assert q.published() == {JOB.name: JOB.digest}
    assert q.remove_if(JOB.name, JOB.digest) is True
    assert q.published() == {} and q.shard_figures(JOB.name) == {}
    assert q.client.keys(f"{q.prefix}:job:{JOB.name}*") == []  # no key of the job left
    server.stop()
    with pytest.raises(ClusterUnreachable):  # a lost connection, as every queue call
        q.published()
    q.close()


def _commands(q: RedisWorkQueue) -> int:
    stats = q.client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if not k.endswith(("info", "config")))


def test_commands_per_shard_and_publish_rate(server: RedisServer) -> None:
    q = connect(server.url, node="n1")
    big = QueueJob("big", "b" * 64)
    started = time.perf_counter()
    assert q.publish(big, plan_shards(big.name, 10**9, 10_000))
    elapsed = time.perf_counter() - started
    assert q.counts(big.name).shards["queued"] == 100_000
    q.client.config_resetstat()
    before_rt = q.round_trips
    n = 0
    for _ in range(10):
        leases = q.claim("n1", 10, 300, jobs=[big.name])
        for lease in leases:
            lease = q.renew(lease, 300)
            q.record_failures(big.name, lease.shard.shard_id, [FailedSample(1, "u", "timeout")])
            q.ack(lease, ShardSummary({"ok": 9_999, "timeout": 1}, 10**8))
            n += 1
    calls = _commands(q)
    round_trips = q.round_trips - before_rt
    print(
        f"\nredis: published 100,000 shards in {elapsed:.2f} s ({1e5 / elapsed:,.0f}/s); "
        f"per shard (claimed 10 at a time, renewed once, failures, ack): "
        f"{calls / n:.1f} commands executed (scripts' included), {round_trips / n:.1f} round trips"
    )
    assert q.counts(big.name).shards["done"] == n == 100
    # A regression guard, far above what it is: per sample (10,000 a shard) it is nothing.
    assert calls / n < 40
    q.close()


def test_two_nodes_publishing_the_same_job_at_once_make_one_copy(server: RedisServer) -> None:
    import threading

    nodes = [connect(server.url, node=f"n{i}") for i in range(2)]
    results: list[bool] = []
    errors: list[BaseException] = []

    def publish(q: RedisWorkQueue) -> None:
        try:
            results.append(q.publish(JOB, plan_shards(JOB.name, 5_000 * 2, 2)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(q,)) for q in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert True in results
    entries = nodes[0].client.xrange(f"acq:job:{JOB.name}:stream")
    ids = [int(fields["s"]) for _, fields in entries]
    assert sorted(ids) == list(range(5_000))  # every shard once, none twice
    assert nodes[1].counts(JOB.name).shards["queued"] == 5_000
    for q in nodes:
        q.close()

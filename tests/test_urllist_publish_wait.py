"""A URL-list job planned while the fleet's Redis is away is published once Redis is
back, whole and once; a stop ends the wait. Against a real redis-server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.backoff import ExponentialWithJitterBackoff
from support.redis_server import RedisServer

from acquired.daemon.kinds import urllist_plan
from acquired.daemon.kinds.urllist_plan import publish_plan
from acquired.daemon.redisqueue import RedisWorkQueue, connect
from acquired.daemon.workqueue import QueueJob, plan_shards

JOB = QueueJob("waits", "e" * 64, {"name": "waits", "kind": "urllist"})
FAST = ExponentialWithJitterBackoff(base=0.05, cap=0.2)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield s
    s.kill()


def test_a_plan_made_while_redis_is_away_is_published_when_it_is_back(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllist_plan, "PUBLISH_RETRY_S", 0.1)
    shards = list(plan_shards(JOB.name, 2_500, 100))
    server.stop()
    attempts: list[float] = []
    done = threading.Event()
    result: list[bool] = []

    def pause(seconds: float) -> None:
        attempts.append(seconds)
        if len(attempts) == 5:
            server.start()
        threading.Event().wait(seconds)

    def opener() -> RedisWorkQueue:
        return connect(server.url, node="n1", timeout=1, backoff=FAST)

    def run() -> None:
        result.append(publish_plan(opener, JOB, shards, lambda: True, pause=pause))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "the plan was never published"
    assert result == [True] and len(attempts) >= 5
    q = opener()
    try:
        counts = q.counts(JOB.name)
        assert counts.shards_total == len(shards) == 25
        assert sorted(lease.shard.shard_id for lease in q.claim("n1", 100, 30)) == list(range(25))
    finally:
        q.close()


def test_a_stop_ends_the_wait(server: RedisServer) -> None:
    server.stop()
    calls: list[int] = []

    def wanted() -> bool:
        calls.append(1)
        return len(calls) < 3

    def opener() -> RedisWorkQueue:
        return connect(server.url, node="n1", timeout=1, backoff=FAST)

    shards = list(plan_shards(JOB.name, 10, 5))
    assert publish_plan(opener, JOB, shards, wanted, pause=lambda s: None) is False
    assert len(calls) == 3

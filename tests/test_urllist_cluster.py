"""Three daemons share one URL-list job through a real redis-server (the fleet's work
queue): every input row is accounted for exactly once across the nodes' outputs, and
every node's status shows the whole job."""

from __future__ import annotations

from pathlib import Path

from support import fleet
from support.image_server import ImageServer
from support.redis_server import RedisServer

ROWS = 3000


def test_three_daemons_share_one_job(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with ImageServer() as server:
            c = fleet.corpus(server, ROWS)
            with fleet.daemons(tmp_path, redis.url, ("a", "b", "c")) as nodes:
                fleet.submit(nodes, c, shard_size=100)
                figs = [d.wait_job(fleet.JOB, "done", timeout=150)["urllist"] for d in nodes]
            index = fleet.shard_index(redis.url)
    finally:
        redis.stop()
    per_node = fleet.account(nodes, index, c)
    assert len(index) == ROWS // 100
    for fig in figs:
        assert fig["samples_done"] == ROWS and fig["shards_done"] == fig["shards_total"] == 30
        assert fig["failures"] == {"http_4xx": len(c.missing)}, fleet.dumps(fig)
    print("shards per node:", {k: len(v) for k, v in per_node.items()})

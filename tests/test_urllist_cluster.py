"""Two daemons share one URL-list job through a real redis-server (the fleet's work
queue): every input row is accounted for exactly once across both nodes' outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

from support import urllist_jobs as uj
from support.daemon import DaemonProcess
from support.image_server import ImageServer
from support.redis_server import RedisServer


def test_two_daemons_share_one_job(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with ImageServer() as server:
            corpus = uj.build(server, good=60, slow=0.05)
            nodes = []
            for name in ("a", "b"):
                cluster = {"redis_url": redis.url, "node": name, "lease": 60}
                nodes.append(DaemonProcess(tmp_path / name, cluster=cluster))
            a, b = nodes
            with a, b:
                inp = uj.write_input(a.data / "fleet", "parquet", corpus)
                shutil.copytree(a.data / "fleet", b.data / "fleet")
                text = uj.manifest("fleet", inp, fmt="parquet", shard_size=8)
                a.drop("fleet.toml", text)
                b.drop("fleet.toml", text)
                figs = [d.wait_job("fleet", "done", timeout=120)["urllist"] for d in nodes]
            outputs = [uj.read_output(d.data / "fleet") for d in nodes]
            written = {d.root.name: sorted((d.data / "fleet").glob("*_stats.json")) for d in nodes}
    finally:
        redis.stop()
    n = len(corpus.urls)
    seen: dict[int, str] = {}
    for node, rows in zip(("a", "b"), outputs, strict=True):
        for row in rows:
            assert row not in seen, f"row {row} written by {seen[row]} and {node}"
            seen[row] = node
    assert sorted(seen) == list(range(n))
    for fig in figs:
        assert fig["samples_done"] == n and fig["shards_done"] == fig["shards_total"]
        assert fig["samples_ok"] + sum(fig["failures"].values()) == n
    print("shards per node:", {k: len(v) for k, v in written.items()})

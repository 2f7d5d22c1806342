"""The fleet seen from any node, through real daemons and a real redis-server: a job
dropped on one node only is found and worked on by the other; ``status`` and ``nodes``
on either show every node and the whole job; ``retry --failed`` on the other node
refetches only the healed URLs; ``index.parquet`` names every shard once with its node;
the control socket answers from the cached snapshot while Redis is down."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from rich.console import Console
from support import urllist_jobs as uj
from support.daemon import DaemonProcess
from support.image_server import ImageServer, Route
from support.redis_server import RedisServer

from acquired.daemon.commands.urllist import render_figures
from acquired.daemon.fleet_tui import fleet_line
from acquired.daemon.fleetview import node_rows, to_offer
from acquired.daemon.jobindex import index_rows
from acquired.daemon.kinds.urllist_fleet import freshest
from acquired.daemon.tui import render_status

HOLD = 1.5  # seconds each image waits at first: both nodes are caught holding shards


def _serve_fast(server: ImageServer, corpus: uj.Corpus) -> None:
    """Every image that waited now answers at once (the flaky ones still fail)."""
    for path, body in corpus.bodies.items():
        if path in corpus.flaky:
            continue
        ctype = "image/png" if path.endswith(".png") else "image/jpeg"
        server.route(path, Route(body=body, content_type=ctype))


def _fig(d: DaemonProcess, job: str) -> dict[str, Any]:
    entry = d.job(job)
    return dict(entry["urllist"]) if entry and entry.get("urllist") else {}


def _both_hold_shards(d: DaemonProcess) -> dict[str, Any] | None:
    fleet = d.call({"cmd": "nodes"})
    held = {n["node"]: n["shards_held"] for n in fleet["nodes"] if n["alive"]}
    return fleet if set(held) == {"a", "b"} and all(held.values()) else None


def _index(d: DaemonProcess, job: str, shards: int) -> list[dict[str, Any]] | None:
    path = d.data / job / "index.parquet"
    if not path.is_file():
        return None
    rows = pq.read_table(path).to_pylist()
    return rows if len(rows) == shards else None


def test_job_dropped_on_one_node_is_shared_seen_retried_and_indexed(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with ImageServer() as server:
            corpus = uj.build(server, good=60, slow=HOLD)
            a, b = (
                DaemonProcess(
                    tmp_path / n, cluster={"redis_url": redis.url, "node": n, "lease": 60}
                )
                for n in ("a", "b")
            )
            with a, b:
                inp = uj.write_input(a.data / "fleet", "parquet", corpus)
                # The input at the same path under each node's data root; the manifest
                # only on a.
                shutil.copytree(a.data / "fleet", b.data / "fleet")
                a.drop("fleet.toml", uj.manifest("fleet", inp, fmt="parquet", shard_size=8))

                # b finds the job in Redis and takes shards while a holds its own.
                fleet = b.wait_for(lambda: _both_hold_shards(b), 60, "a and b to hold shards")
                assert fleet["node"] == "b" and fleet["redis"] == "ok"
                during = b.wait_for(
                    lambda: len(_fig(b, "fleet").get("nodes") or []) == 2 and _fig(b, "fleet"),
                    30,
                    "b's status to show the job on both nodes",
                )
                assert {n["node"] for n in during["nodes"]} == {"a", "b"}
                out = b.ctl("nodes")
                assert out.returncode == 0, out.stderr
                listed = {
                    ln.split()[0]: ln.split()[1]
                    for ln in out.stdout.splitlines()
                    if ln.startswith(("a ", "b "))
                }
                assert listed == {"a": "yes", "b": "yes"}, out.stdout
                _serve_fast(server, corpus)

                n = len(corpus.urls)
                for d in (a, b):
                    d.wait_job("fleet", "done", timeout=60)
                    fig = d.wait_for(
                        lambda d=d: _fig(d, "fleet").get("samples_done") == n and _fig(d, "fleet"),
                        30,
                        "the whole job in status",
                    )
                    assert fig["shards_done"] == fig["shards_total"]
                    assert fig["failures"].get("http_5xx") == len(corpus.flaky)
                status = b.status()
                assert {x["node"] for x in status["fleet"]["nodes"] if x["alive"]} == {"a", "b"}
                shards = _fig(b, "fleet")["shards_total"]

                # The index on each node: every shard once, with the node that wrote it.
                for d in (a, b):
                    rows = d.wait_for(lambda d=d: _index(d, "fleet", shards), 30, "index.parquet")
                    assert sorted(r["shard"] for r in rows) == list(range(shards))
                    assert {r["node"] for r in rows} == {"a", "b"}
                    for r in rows:
                        writer = a if r["node"] == "a" else b
                        assert (writer.data / "fleet" / r["data"]).is_file(), r
                        stats = json.loads(
                            (writer.data / "fleet" / f"{r['shard']:05d}_stats.json").read_text()
                        )
                        assert r["samples_ok"] == stats["statuses"].get("ok", 0), r
                        assert r["samples_ok"] + r["samples_failed"] == stats["rows"], r
                assert sum(r["samples_ok"] for r in rows) == n - sum(fig["failures"].values())

                # Healed, the flaky URLs are fetched once more through b; nothing else is.
                corpus.heal(server)
                before = {p: server.hits(p) for p in corpus.bodies}
                ok_before = _fig(b, "fleet")["samples_ok"]
                out = b.ctl("retry", "fleet", "--failed")
                assert out.returncode == 0, out.stderr
                assert f"{len(corpus.flaky)} failed sample(s) queued again" in out.stdout
                for d in (a, b):
                    fig = d.wait_for(
                        lambda d=d: (
                            "http_5xx" not in _fig(d, "fleet").get("failures", {"x": 1})
                            and _fig(d, "fleet")["shards_done"] == _fig(d, "fleet")["shards_total"]
                            and _fig(d, "fleet")
                        ),
                        60,
                        "the retry shard to be done",
                    )
                    assert fig["samples_ok"] == ok_before + len(corpus.flaky)
                after = {p: server.hits(p) for p in corpus.bodies}
                for path in corpus.bodies:
                    extra = 1 if path in corpus.flaky else 0
                    assert after[path] == before[path] + extra, path
                rows = b.wait_for(lambda: _index(b, "fleet", shards + 1), 30, "the new index")
                assert sorted(r["shard"] for r in rows) == list(range(shards + 1))
                assert rows[-1]["samples_ok"] == len(corpus.flaky)

                # Forgotten on b: gone from Redis for every node.
                b.wait_job("fleet", "done", timeout=30)
                out = b.ctl("forget", "fleet")
                assert out.returncode == 0, out.stderr
                a.wait_for(lambda: redis_jobs(redis) == [], 30, "the job to leave Redis")
    finally:
        redis.stop()


def publish_elsewhere(redis: RedisServer, text: str) -> None:
    """Publish a job as another node's planner does: its manifest, digest, one shard."""
    from acquired.daemon.intake import digest_in_pieces
    from acquired.daemon.manifest import parse_manifest
    from acquired.daemon.redisqueue import connect
    from acquired.daemon.workqueue import QueueJob, ShardSpec

    manifest = parse_manifest(text.encode(), "ghost.toml")
    job = QueueJob(manifest.name, digest_in_pieces(manifest), manifest.model_dump(mode="json"))
    q = connect(redis.url, node="elsewhere")
    try:
        q.publish(job, [ShardSpec(manifest.name, 0, 0, 10)])
    finally:
        q.close()


def redis_jobs(redis: RedisServer) -> list[str]:
    """The jobs published in Redis, read with the queue's own client."""
    from acquired.daemon.redisqueue import connect

    q = connect(redis.url, node="test")
    try:
        return sorted(q.client.zrange("acq:jobs", 0, -1))
    finally:
        q.close()


def test_control_socket_answers_from_the_snapshot_while_redis_is_down(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        cluster = {"redis_url": redis.url, "node": "solo", "lease": 60}
        with DaemonProcess(tmp_path / "solo", cluster=cluster) as d:
            d.wait_for(
                lambda: (
                    d.status()["fleet"]["redis"] == "ok"
                    and [n["node"] for n in d.status()["fleet"]["nodes"]] == ["solo"]
                ),
                30,
                "the node's own heartbeat",
            )
            # A job published by another node whose input this node cannot read: a clear
            # error on that job alone.
            publish_elsewhere(redis, uj.manifest("ghost", "urls.txt", fmt="txt"))
            d.wait_job("ghost", "failed", timeout=30)
            error = d.call({"cmd": "show", "job": "ghost"})["job_steps"]["error"]
            assert error["code"] == "cluster.input_missing", error
            assert "urls.txt" in error["message"] and "same path" in error["hint"]
            started = time.monotonic()
            d.status()
            took = time.monotonic() - started
            print(f"status over the control socket with Redis running: {took:.3f} s")
            redis.stop()
            fleet = d.wait_for(
                lambda: (f := d.status()["fleet"])["redis"] == "unreachable" and f,
                30,
                "status to say Redis is unreachable",
            )
            assert fleet["down_since"] is not None and fleet["error"]
            # The last figures read are kept, with their age.
            assert [n["node"] for n in fleet["nodes"]] == ["solo"]
            started = time.monotonic()
            snapshot = d.status()
            took = time.monotonic() - started
            print(f"status over the control socket with Redis stopped: {took:.3f} s")
            console = Console(record=True, width=200)
            console.print(render_status(snapshot))
            assert "redis unreachable since" in console.export_text()
            out = d.ctl("nodes")
            assert out.returncode == 0, out.stderr
            assert "redis unreachable since" in " ".join(out.stdout.split()), out.stdout
    finally:
        redis.stop()


def test_a_local_job_gets_its_index_and_nodes_says_there_is_no_fleet(tmp_path: Path) -> None:
    with ImageServer() as server, DaemonProcess(tmp_path / "alone") as d:
        corpus = uj.build(server, good=10)
        inp = uj.write_input(d.data / "solo", "jsonl", corpus)
        d.drop("solo.toml", uj.manifest("solo", inp, fmt="jsonl", shard_size=8))
        assert d.status()["fleet"] is None
        out = d.ctl("nodes")
        assert out.returncode == 1
        assert "not part of a fleet" in out.stderr and "[cluster]" in out.stderr
        d.wait_job("solo", "done", timeout=60)
        shards = _fig(d, "solo")["shards_total"]
        rows = d.wait_for(lambda: _index(d, "solo", shards), 30, "index.parquet")
        assert [r["shard"] for r in rows] == list(range(shards))
        assert len({r["node"] for r in rows}) == 1
        assert sum(r["samples_ok"] + r["samples_failed"] for r in rows) == len(corpus.urls)


# -- pure parts ---------------------------------------------------------------------------


def test_to_offer_skips_offered_and_forgotten_with_the_same_manifest() -> None:
    published = {"j1": "d1", "j2": "d2", "j3": "d3", "j4": "d4"}
    offered = {"j1"}
    forgotten = {"j2": "d2", "j3": "old"}
    assert to_offer(published, offered, forgotten) == ["j3", "j4"]
    assert to_offer({}, set(), {}) == []


def test_node_rows_keep_nodes_whose_heartbeat_expired() -> None:
    alive = [{"node": "a", "ts": 95.0, "samples_per_s": 12.5, "shards_held": 2}]
    seen = {"a": alive[0], "b": {"node": "b", "ts": 40.0, "shards_held": 1}}
    rows = node_rows(alive, seen, now=100.0)
    assert [(r["node"], r["alive"], r["age"], r["shards_held"]) for r in rows] == [
        ("a", True, 5.0, 2),
        ("b", False, 60.0, 1),
    ]
    assert rows[0]["samples_per_s"] == 12.5


def test_index_rows_one_per_shard_in_order() -> None:
    index = {2: "b", 0: "a", 1: "a"}
    figures = {0: {"ok": 7, "failed": 1, "bytes": 100}, 2: {"ok": 3, "failed": 0, "bytes": 9}}
    rows = index_rows(index, figures, "webdataset")
    assert [(r["shard"], r["node"], r["samples_ok"], r["data"]) for r in rows] == [
        (0, "a", 7, "00000.tar"),
        (1, "a", None, "00001.tar"),
        (2, "b", 3, "00002.tar"),
    ]
    assert index_rows({4: "a"}, {}, "files")[0]["data"] == "00004"


def test_fleet_line_says_since_when_redis_is_unreachable() -> None:
    fleet = {
        "node": "a",
        "redis": "unreachable",
        "down_since": 0.0,
        "error": "Connection refused",
        "age": 12.0,
        "samples_per_s": 0.0,
        "nodes": [{"node": "a", "alive": True}, {"node": "b", "alive": False}],
    }
    text = fleet_line(fleet).plain
    assert "1 node(s) alive (a)" in text
    assert "redis unreachable since" in text and "Connection refused" in text
    assert "figures from 12 s ago" in text
    assert "redis ok (read 0 s ago)" in fleet_line({**fleet, "redis": "ok", "age": 0.2}).plain


def test_show_lists_the_nodes_of_a_clustered_job() -> None:
    fig = {
        "samples_done": 10,
        "samples_total": 20,
        "nodes": [
            {"node": "a", "samples_per_s": 120.4, "shards_held": 2},
            {"node": "b", "samples_per_s": 80.0, "shards_held": 1},
        ],
        "fleet_age": 0.6,
    }
    text = render_figures(fig)
    assert "nodes: a 120/s (2 held) · b 80/s (1 held) (fleet figures read 1 s ago)" in text


@pytest.mark.parametrize(
    ("local", "fleet", "shards_done", "samples_done"),
    [
        # The snapshot is behind the node's own last read: the node's counts win.
        (
            {"shards_done": 30, "samples_done": 3000},
            {"shards_done": 28, "samples_done": 2800},
            30,
            3000,
        ),
        # The snapshot is ahead (other nodes' shards since): the fleet's counts.
        (
            {"shards_done": 3, "samples_done": 300},
            {"shards_done": 28, "samples_done": 2800},
            28,
            2800,
        ),
        # Same shards, more samples in the local read (live figures).
        ({"shards_done": 5, "samples_done": 520}, {"shards_done": 5, "samples_done": 500}, 5, 520),
        # No local figures yet.
        ({}, {"shards_done": 2, "samples_done": 200}, 2, 200),
    ],
)
def test_freshest_counts_win_and_the_fleet_rates_stay(
    local: dict[str, Any], fleet: dict[str, Any], shards_done: int, samples_done: int
) -> None:
    fleet = dict(fleet, samples_per_s=12.5, nodes_marker=True)
    out = freshest(local, fleet)
    assert (out["shards_done"], out["samples_done"]) == (shards_done, samples_done)
    assert out["samples_per_s"] == 12.5 and out["nodes_marker"] is True

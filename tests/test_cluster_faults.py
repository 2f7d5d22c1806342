"""Faults of a fleet, through real daemons on a real redis-server: a node killed in the
middle of a shard, Redis away for ten seconds, and a [cluster] section that cannot work
(unreachable, wrong password, unparsable URL)."""

from __future__ import annotations

import hashlib
import logging
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from redis.backoff import NoBackoff
from support import fleet
from support.daemon import DaemonProcess, write_config
from support.image_server import ImageServer
from support.images import jpeg
from support.manifests import manifest as files_manifest
from support.redis_server import RedisServer, free_port

from acquired.daemon.redisqueue import connect
from acquired.daemon.runners.urllist_link import QueueLink, unreachable_reason
from acquired.daemon.workqueue import QueueJob, ShardSummary, plan_shards


def test_a_restarted_node_gives_its_shards_back_without_waiting_for_the_lease(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        before = connect(server.url, node="a")
        before.publish(QueueJob("j", "d1"), plan_shards("j", 40, 10))
        held = before.claim("a", 2, 300)
        before.close()  # killed: its two shards stay pending under "a"
        after = connect(server.url, node="a")
        other = connect(server.url, node="b")
        assert QueueLink(after, "j").recover("a") == 2
        taken = {lease.shard.shard_id for lease in other.claim("b", 4, 300)}
        assert taken == {0, 1, 2, 3}, taken
        assert {lease.shard.shard_id for lease in held} <= taken
        assert QueueLink(after, "j").recover("a") == 0
        after.close()
        other.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("error", "buffered", "reason"),
    [
        ("Connection refused.", 0, "waiting for Redis (claiming paused): Connection refused."),
        (
            "Connection refused.",
            3,
            "waiting for Redis (claiming paused; 3 shard report(s) buffered): Connection refused.",
        ),
    ],
)
def test_unreachable_reason(error: str, buffered: int, reason: str) -> None:
    assert unreachable_reason(error, buffered) == reason


def test_the_runner_s_link_through_an_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner's view of its queue while Redis is away: the last counts, the lease
    kept, the reports buffered and counted in the reason, then delivered."""
    caplog.set_level(logging.INFO, logger="acquired.urllist")
    server = RedisServer(tmp_path / "redis").start()
    try:
        q = connect(server.url, node="n1", backoff=NoBackoff())
        q.publish(QueueJob("j", "d1"), plan_shards("j", 30, 10))
        link = QueueLink(q, "j")
        before = link.refresh()
        assert link.fresh and before.shards["queued"] == 3 and link.hold() is None
        [lease] = q.claim("n1", 1, 30)
        server.stop()
        assert link.refresh() == before and not link.fresh and link.down
        assert link.renew(lease, 30) is lease
        assert link.call(lambda: q.dead("j"), "unknown") == "unknown"
        q.ack(lease, ShardSummary({"ok": 10}, 100))
        reason = link.hold()
        assert reason is not None
        assert reason.startswith("waiting for Redis (claiming paused; 1 shard report(s) buffered)")
        server.start()
        deadline = time.monotonic() + 30
        link.refresh()
        while not link.fresh:
            assert time.monotonic() < deadline, "the link did not come back"
            time.sleep(0.05)
            link.refresh()
        assert link.hold() is None and not link.down and link.buffered == 0
        assert link.counts.shards["done"] == 1 and dict(link.counts.samples) == {"ok": 10}
        q.close()
    finally:
        server.stop()
    said = [r.getMessage() for r in caplog.records]
    assert sum("Redis unreachable" in m for m in said) == 1, said
    assert sum("Redis reachable again" in m for m in said) == 1, said


def test_a_killed_node_s_shards_are_taken_over_after_the_lease(tmp_path: Path) -> None:
    rows, size = 600, 50
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with ImageServer() as server:
            # A shard takes a few seconds (50 images of 0.1 s, 2 at a time): a kill lands
            # inside one.
            c = fleet.corpus(server, rows, delay=0.1)
            with fleet.daemons(tmp_path, redis.url, ("a", "b"), lease=3) as nodes:
                a, b = nodes
                fleet.submit(nodes, c, shard_size=size, per_host=2)

                def half_way() -> list[str]:
                    # Node a's shards of which the server has answered some but not half.
                    started = fleet.started_shards(a)
                    return [
                        name
                        for name in started
                        if 0 < fleet.served(server, c, int(name), size) < size // 2
                    ]

                held = a.wait_for(half_way, 90, "node a in the middle of a shard")
                a.kill(signal.SIGKILL)
                fig = b.wait_job(fleet.JOB, "done", timeout=120)["urllist"]
            index = fleet.shard_index(redis.url)
    finally:
        redis.stop()
    fleet.account(nodes, index, c)
    for name in held:
        shard = int(name)
        assert index[shard] == "b", f"shard {name} is indexed to the dead node"
        again = [
            line for line in fleet.log_lines(b, f"shard {name} started") if "delivery 2" in line
        ]
        assert again, f"shard {name} was not delivered again after the lease"
    assert fig["samples_done"] == rows and fig["shards_done"] == rows // size
    assert fig["failures"] == {"http_4xx": len(c.missing)}, fleet.dumps(fig)


def test_redis_away_for_ten_seconds(tmp_path: Path) -> None:
    rows, size = 480, 40
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        with ImageServer() as server:
            c = fleet.corpus(server, rows, delay=0.1)
            with fleet.daemons(tmp_path, redis.url, ("a", "b")) as nodes:
                fleet.submit(nodes, c, shard_size=size, per_host=2)
                a = nodes[0]

                def working() -> bool:
                    return any(fleet.figures(d).get("in_progress") for d in nodes)

                a.wait_for(working, 90, "both nodes fetching")
                redis.stop()
                stopped = time.monotonic()
                reasons: dict[str, str] = {}

                def buffering() -> bool:
                    for d in nodes:
                        reasons[d.root.name] = fleet.reason(d)
                    return all("waiting for Redis" in r for r in reasons.values()) and any(
                        "buffered" in r for r in reasons.values()
                    )

                a.wait_for(buffering, 60, "both nodes waiting for Redis, acks buffered")
                time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
                redis.start()
                figs = [d.wait_job(fleet.JOB, "done", timeout=120)["urllist"] for d in nodes]
            index = fleet.shard_index(redis.url)
    finally:
        redis.stop()
    fleet.account(nodes, index, c)
    print("reasons while Redis was away:", reasons)
    for d in nodes:
        assert fleet.log_lines(d, "Redis unreachable"), d.log()
        assert fleet.log_lines(d, "Redis reachable again"), d.log()
    for fig in figs:
        assert fig["samples_done"] == rows and fig["shards_done"] == rows // size
        assert fig["failures"] == {"http_4xx": len(c.missing)}, fleet.dumps(fig)


def _local_job(server: ImageServer, node: DaemonProcess) -> None:
    """A job of plain files (no cluster involved) runs to the end."""
    body = jpeg(42)
    url = server.add("/local.jpg", body)
    text = files_manifest(
        "local", [{"path": "a.jpg", "sha256": hashlib.sha256(body).hexdigest(), "mirrors": [url]}]
    )
    node.drop("local.toml", text)
    node.wait_job("local", "done", timeout=60)
    assert (node.data / "local/a.jpg").read_bytes() == body


def _drop_urls_job(node: DaemonProcess) -> None:
    urls = node.data / "urls"
    urls.mkdir(parents=True, exist_ok=True)
    (urls / "urls.txt").write_text("http://127.0.0.1:9/x.jpg\n")
    node.drop(
        "urls.toml",
        'manifest_version = 1\nkind = "urllist"\nname = "urls"\ndestination = "urls"\n\n'
        '[urllist]\ninput = "urls.txt"\n',
    )


def _clustered_job_fails(node: DaemonProcess, code: str) -> None:
    """A URL-list job on a node whose [cluster] cannot work fails with the cluster's error
    (its code in the journal and the job's events), not a traceback."""
    _drop_urls_job(node)
    job = node.wait_job("urls", "failed", timeout=60)
    assert job["reason"], job
    show = node.call({"cmd": "show", "job": "urls"})
    assert any(e.get("code") == code for e in show["events"]), fleet.dumps(show["events"])
    assert "Traceback" not in node.log()


def _clustered_job_waits(node: DaemonProcess) -> None:
    """A URL-list job on a node whose Redis does not answer waits to be published (the
    journal says so with the code), and is not failed."""
    _drop_urls_job(node)
    line = node.wait_for(
        lambda: fleet.log_lines(node, "waiting for Redis to publish"), 60, "the wait"
    )[0]
    assert "cluster.unreachable" in line, line
    assert node.job("urls")["state"] != "failed"
    assert "Traceback" not in node.log()


def test_a_cluster_that_cannot_work_leaves_the_daemon_running(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", password="the-right-one").start()
    wrong = tmp_path / "redis.pass"
    wrong.write_text("not-the-password\n")
    try:
        with ImageServer() as server:
            gone = {"redis_url": f"redis://127.0.0.1:{free_port()}/0", "node": "gone"}
            refused = {"redis_url": redis.url, "node": "refused", "password_file": str(wrong)}
            d_gone = DaemonProcess(tmp_path / "gone", cluster=gone)
            d_refused = DaemonProcess(tmp_path / "refused", cluster=refused)
            with ExitStack() as stack:
                for d in (d_gone, d_refused):
                    fleet.start(d)
                    stack.push(d.__exit__)
                for d, code, hint in (
                    (d_gone, "cluster.unreachable", "Check that redis-server runs"),
                    (d_refused, "cluster.auth_failed", "password_file"),
                ):
                    line = d.wait_for(
                        lambda d=d: fleet.log_lines(d, "[cluster]"), 30, "the start-up check"
                    )[0]
                    assert code in line and hint in line, line
                    _local_job(server, d)
                    if d is d_gone:
                        _clustered_job_waits(d)
                    else:
                        _clustered_job_fails(d, code)
                # A reload with an unparsable URL is refused; the daemon goes on.
                config = dict(d_gone.config)
                config["cluster"] = {"redis_url": "redis://127.0.0.1:notaport/0"}
                write_config(d_gone.config_path, config)
                assert d_gone.proc is not None
                d_gone.proc.send_signal(signal.SIGHUP)
                d_gone.wait_for(
                    lambda: fleet.log_lines(d_gone, "configuration not reloaded"), 30, "reload"
                )
                assert fleet.log_lines(d_gone, "cluster.redis_url: has an invalid port")
                assert d_gone.call({"cmd": "ping"})
    finally:
        redis.stop()
    # Started with it, the daemon refuses at once, naming the file and the field.
    bad = tmp_path / "bad"
    bad.mkdir()
    config = dict(d_gone.config, state_dir=str(bad / "state"), runtime_dir=str(bad / "run"))
    config["cluster"] = {"redis_url": "redis://127.0.0.1:notaport/0"}
    write_config(bad / "acquired.toml", config)
    run = subprocess.run(
        [sys.executable, "-m", "acquired.daemon.main", "--config", str(bad / "acquired.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run
    assert "cluster.redis_url: has an invalid port" in run.stderr and "hint:" in run.stderr

"""URL-list jobs end to end through the real daemon, against a loopback image server:
every input row accounted once in four input formats, the failure queue and its retry,
a SIGKILL in the middle of a shard, and the per-job quota."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import urllist_jobs as uj
from support.daemon import DaemonProcess
from support.image_server import ImageServer
from support.procs import alive, descendants, parent_of

from acquired.daemon.shardstore import open_queue

FORMATS = ("txt", "csv", "jsonl", "parquet")


def check_job(out: Path, corpus: uj.Corpus, fig: dict, fmt: str, retried: int = 0) -> None:
    rows = uj.read_output(out)
    n = len(corpus.urls)
    assert sorted(rows) == list(range(n)), "every input row is in exactly one parquet row"
    assert fig["samples_total"] == n and fig["samples_done"] == n
    assert fig["shards_done"] == fig["shards_total"] == -(-n // 16) + retried
    got = Counter(r["error_class"] or "ok" for r in rows.values())
    assert got == Counter(corpus.expect)
    assert {k: v for k, v in got.items() if k != "ok"} == fig["failures"]
    assert fig["samples_ok"] == got["ok"]
    assert fig["duplicates"] == 2 and fig["filtered"] == 3
    copy = next(i for i, u in enumerate(corpus.urls) if u.endswith("/copy/1.jpg"))
    near = next(i for i, u in enumerate(corpus.urls) if u.endswith("/near/2.jpg"))
    for x, y in ((copy, 1), (near, 2)):
        # Shards run at once: whichever of the pair was seen first is the one kept.
        pair = {rows[x]["duplicate_of"], rows[y]["duplicate_of"]}
        assert pair in ({None, rows[x]["key"]}, {None, rows[y]["key"]}), (x, y)
    if fmt != "txt":
        assert rows[5]["caption"] == "caption 5"
    assert uj.no_partial_files(out) == []


def test_every_row_accounted_once_in_each_input_format(tmp_path: Path) -> None:
    with ImageServer() as server:
        corpus = uj.build(server, good=24)
        with DaemonProcess(tmp_path) as d:
            for fmt in FORMATS:
                name = uj.write_input(d.data / fmt, fmt, corpus)
                d.drop(f"{fmt}.toml", uj.manifest(fmt, name, fmt=fmt))
            jobs = {fmt: d.wait_job(fmt, "done", timeout=120) for fmt in FORMATS}
            text = d.ctl("status").stdout
        for fmt in FORMATS:
            check_job(d.data / fmt, corpus, jobs[fmt]["urllist"], fmt)
        # Each sample was fetched once per job, never twice.
        assert server.hits("/img/7.jpg") == len(FORMATS)
    assert "URL lists" in text and "shards" in text and "35/35" in text


def test_failures_listed_exported_and_only_those_retried(tmp_path: Path) -> None:
    with ImageServer() as server:
        corpus = uj.build(server, good=30)
        with DaemonProcess(tmp_path) as d:
            name = uj.write_input(d.data / "r", "csv", corpus)
            d.drop("r.toml", uj.manifest("r", name, fmt="csv"))
            before = d.wait_job("r", "done")["urllist"]
            assert before["failures"]["http_5xx"] == 3

            listed = d.ctl("failures", "r", "--class", "http_5xx", check=True).stdout
            assert "3 failed sample(s): http_5xx 3" in listed
            export = tmp_path / "failures.parquet"
            d.ctl("failures", "r", "--export", str(export), check=True)
            table = pq.read_table(export).to_pylist()
            assert Counter(r["class"] for r in table) == {
                k: v for k, v in before["failures"].items()
            }

            corpus.heal(server)
            hits = {u: server.hits(u.split(str(server.port), 1)[1]) for u in corpus.urls}
            said = d.ctl("retry", "r", "--failed", "--class", "http_5xx", check=True).stdout
            assert "3 failed sample(s) queued again" in said
            after = d.wait_job("r", "done")["urllist"]
            bad = d.ctl("failures", "r", "--class", "nonsense")
            shown = d.ctl("show", "r", check=True).stdout
        n = len(corpus.urls)
        assert "shards: " in shown and f"samples: {n}/{n}" in shown
        assert bad.returncode == 1 and "unknown failure class" in bad.stderr
        for url in corpus.urls:
            path = url.split(str(server.port), 1)[1]
            again = server.hits(path) - hits[url]
            assert again == (1 if path in corpus.flaky else 0), path
        assert after["samples_ok"] == before["samples_ok"] + 3
        assert "http_5xx" not in after["failures"]
        assert after["samples_done"] == len(corpus.urls)
        rows = uj.read_output(d.data / "r")
        assert sorted(rows) == list(range(len(corpus.urls)))
        assert sum(r["status"] == "ok" for r in rows.values()) == after["samples_ok"]


def test_sigkill_mid_shard_then_restart(tmp_path: Path) -> None:
    with ImageServer() as server:
        corpus = uj.build(server, good=40, slow=0.5)
        d = DaemonProcess(tmp_path)
        with d:
            name = uj.write_input(d.data / "k", "jsonl", corpus)
            d.drop("k.toml", uj.manifest("k", name, fmt="jsonl", per_host_connections=2))

            def mid_shard() -> dict | None:
                job = d.job("k")
                fig = (job or {}).get("urllist") or {}
                running = fig.get("shards_in_progress", 0)
                return job if fig.get("shards_done", 0) >= 1 and running else None

            d.wait_for(mid_shard, 90, "a shard done and another half-way")
            assert d.proc is not None
            family = descendants(d.proc.pid)
            assert family, "the daemon runs its shards in worker processes"
            d.kill()
            # The worker processes die with the daemon: none fetches or writes on.
            d.wait_for(lambda: not any(alive(p) for p in family), 20, "the workers to end")
            out = d.data / "k"
            # The shards the queue had acknowledged: never fetched again. (A shard killed
            # between its stats file and its ack is done again, to the same files.)
            queue = open_queue(d.state / "acquired.db")
            try:
                acked = {i for i, state in queue.shard_states("k").items() if state == "done"}
            finally:
                queue.close()
            kept = {
                p.name: p.stat().st_mtime_ns
                for p in out.glob("*_stats.json")
                if int(p.name.split("_")[0]) in acked
            }
            assert kept
            d.start()
            fig = d.wait_job("k", "done", timeout=120)["urllist"]
        for p in out.glob("*_stats.json"):
            if p.name in kept:
                assert p.stat().st_mtime_ns == kept[p.name], f"{p.name} was redone"
        check_job(out, corpus, fig, "jsonl")
        assert sum(fig["failures"].values()) + fig["samples_ok"] == len(corpus.urls)
        assert "interrupted by the last stop are queued again" in d.log()


def test_quota_pauses_the_job_with_its_reason(tmp_path: Path) -> None:
    with ImageServer() as server:
        corpus = uj.build(server, good=60)
        with DaemonProcess(tmp_path) as d:
            name = uj.write_input(d.data / "q", "txt", corpus)
            d.drop("q.toml", uj.manifest("q", name, fmt="txt", max_bytes_on_disk="1000"))
            job = d.wait_job("q", "paused", timeout=90)
            show = d.call({"cmd": "show", "job": "q"})
            # The operator's pause wins over the quota; resume leaves the quota's hold.
            d.ctl("pause", "q", check=True)
            d.wait_for(lambda: "paused by user" in (d.job("q") or {}).get("reason", ""), 30)
            d.ctl("resume", "q", check=True)
            d.wait_for(lambda: "quota reached" in (d.job("q") or {}).get("reason", ""), 30)
            d.ctl("cancel", "q", check=True)
            cancelled = d.wait_job("q", "failed", timeout=30)
            assert cancelled["reason"] == "cancelled by user"
            d.ctl("retry", "q", check=True)
            d.wait_job("q", "paused", timeout=60)
    assert "quota reached" in job["reason"] and "max_bytes_on_disk 1000" in job["reason"]
    fig = show["urllist"]
    assert fig["shards_done"] < fig["shards_total"]
    assert fig["bytes_written"] >= 1000
    assert os.path.isdir(d.data / "q")


@pytest.mark.parametrize("victim", ["worker", "dedupe manager"])
def test_a_worker_killed_mid_shard_is_replaced(tmp_path: Path, victim: str) -> None:
    with ImageServer() as server:
        corpus = uj.build(server, good=30, slow=0.3)
        with DaemonProcess(tmp_path) as d:
            name = uj.write_input(d.data / "w", "txt", corpus)
            d.drop("w.toml", uj.manifest("w", name, fmt="txt", per_host_connections=2))
            d.wait_for(
                lambda: ((d.job("w") or {}).get("urllist") or {}).get("shards_in_progress"),
                60,
                "a shard in progress",
            )
            assert d.proc is not None
            forked = [
                p
                for p in descendants(d.proc.pid)
                if "forkserver" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            ]
            server_pid = next(p for p in forked if parent_of(p) == d.proc.pid)
            # Below the forkserver: the job's dedupe manager (started with the pool), then
            # the workers (started as shards are submitted).
            children = sorted(p for p in forked if parent_of(p) == server_pid)
            os.kill(children[-1] if victim == "worker" else children[0], 9)
            fig = d.wait_job("w", "done", timeout=120)["urllist"]
            log = d.log()
    check_job(d.data / "w", corpus, fig, "txt")
    assert "a worker process died; starting new ones" in log

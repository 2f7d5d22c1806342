"""A fleet on one machine: one daemon against two daemons sharing the same URL-list job
through one redis-server, on the same corpus served by nginx on loopback.

    .venv/bin/python bench/bench_cluster.py            # run by `make bench`

Makes BENCH_CLUSTER_IMAGES (default 8,000) distinct JPEGs under bench/out/cluster/ (kept
between runs); starts a redis-server on a free loopback port (no persistence) and the real
daemons (``[cluster]`` set, 2 worker processes each: this machine has 2 cores, so two
daemons share the same CPUs and the figure is the cost of coordination); drops the same
manifest on every node and waits until every node says the job is done; checks the output
(every row in exactly one shard of the job's index, tar members = ok rows).

Figures per run: samples/s end to end (manifest dropped -> done on every node: planning
on each node, pool start-up, fetching) and over the fetch phase (first shard started ->
last shard done, from the daemons' logs); the ratio two/one; Redis commands (INFO
commandstats deltas, commands run inside the Lua scripts included and the script calls
counted apart) per shard and per sample; the memory of the job's keys.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from common import Nginx
from support.daemon import DaemonProcess
from support.redis_server import RedisServer

OUT = HERE / "out" / "cluster"
COUNT = int(os.environ.get("BENCH_CLUSTER_IMAGES", "8000"))
SHARD = int(os.environ.get("BENCH_CLUSTER_SHARD", "250"))
JOB = "bench"
ROUNDS = os.environ.get("BENCH_CLUSTER_ROUNDS", "1,2,2,1")
TICK = os.sysconf("SC_CLK_TCK")


class TreeCpu:
    """CPU seconds (user + system) of every process under some roots, sampled every 0.2 s
    from /proc while it runs (the daemons' workers are children of their fork server, whose
    figures never reach this process's RUSAGE_CHILDREN)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = set(roots)
        self.last: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds
        self._sample()  # the daemons' CPU so far (start-up) is the baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        procs: dict[int, tuple[int, int, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After the command: state ppid ... utime(12) stime(13) ... starttime(20).
            ppid, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK
            procs[int(entry.name)] = (ppid, int(fields[19]), cpu)
        inside = set(self.roots)
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _, _) in procs.items():
                if ppid in inside and pid not in inside:
                    inside.add(pid)
                    changed = True
        for pid in inside:
            if pid in procs:
                _, start, cpu = procs[pid]
                self.last[(pid, start)] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> float:
        """Stop sampling; the CPU seconds seen."""
        self._sample()
        self._stop.set()
        self._thread.join()
        return sum(self.last.values())


def make_corpus() -> list[str]:
    """Paths of COUNT distinct JPEGs (8-60 KB) under OUT/data, made once."""
    import io

    from PIL import Image, ImageDraw, ImageFilter

    data = OUT / "data"
    listing = OUT / f"paths-{COUNT}.json"
    if listing.exists():
        return list(json.loads(listing.read_text()))
    rng = random.Random(11)
    bases = []
    for _ in range(60):
        w = rng.choice([320, 400, 512])
        h = int(w * rng.uniform(0.6, 1.4))
        im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(8):
            x0, y0 = rng.randrange(w), rng.randrange(h)
            box = (x0, y0, x0 + rng.randrange(20, w // 2), y0 + rng.randrange(20, h // 2))
            draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        im.filter(ImageFilter.GaussianBlur(3)).save(buf, "JPEG", quality=85)
        bases.append(buf.getvalue())
    print(f"making {COUNT} images (once; kept under {data})", flush=True)
    paths = []
    for i in range(COUNT):
        name = f"{i // 1000:03d}/{i}.jpg"
        target = data / name
        target.parent.mkdir(parents=True, exist_ok=True)
        base = bases[i % len(bases)]
        # A comment segment after SOI: every file's bytes distinct, the same decode work.
        comment = f"acquired cluster bench {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        target.write_bytes(base[:2] + segment + base[2:])
        paths.append(name)
    listing.write_text(json.dumps(paths))
    return paths


def manifest() -> str:
    """The job: a text list, exact dedupe on (per node), no filters, no resize."""
    return (
        f'manifest_version = 1\nkind = "urllist"\nname = "{JOB}"\ndestination = "{JOB}"\n\n'
        f'[urllist]\ninput = "urls.txt"\nshard_size = {SHARD}\ntimeout = 10\nretries = 0\n'
        "per_host_connections = 64\n"
    )


def _stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def fetch_phase(nodes: list[DaemonProcess]) -> tuple[float, float]:
    """(first shard started, last shard done) over every node's log, in epoch seconds."""
    starts, ends = [], []
    for d in nodes:
        for line in d.log().splitlines():
            if " started (" in line and "shard " in line:
                starts.append(_stamp(line))
            elif " done: " in line and "shard " in line:
                ends.append(_stamp(line))
    return min(starts), max(ends)


def commandstats(client: Any) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def check(nodes: list[DaemonProcess], index: dict[int, str], rows: int) -> None:
    """Every row in exactly one indexed shard, on the node the index names."""
    import tarfile

    import pyarrow.parquet as pq

    by_name = {d.root.name: d for d in nodes}
    seen = 0
    for shard, node in index.items():
        folder = by_name[node].data / JOB
        table = pq.read_table(folder / f"{shard:05d}.parquet", columns=["key", "status"])
        ok = {r["key"] for r in table.to_pylist() if r["status"] == "ok"}
        with tarfile.open(folder / f"{shard:05d}.tar") as tar:
            assert {n.rsplit(".", 1)[0] for n in tar.getnames()} == ok
        seen += table.num_rows
    assert seen == rows, f"{seen} rows in the index's shards, {rows} in the input"


def run(count: int, urls: Path, work: Path) -> dict[str, Any]:
    """One run of ``count`` daemons on a fresh redis-server."""
    from acquired.daemon.redisqueue import connect

    shutil.rmtree(work, ignore_errors=True)
    redis = RedisServer(work / "redis").start()
    queue = connect(redis.url)
    client = queue.client
    nodes = [
        DaemonProcess(
            work / f"node{i}",
            cluster={"redis_url": redis.url, "node": f"node{i}", "lease": 60},
            log_level="info",
        )
        for i in range(count)
    ]
    try:
        for d in nodes:
            d.start(timeout=120)
            (d.data / JOB).mkdir(parents=True)
            shutil.copy(urls, d.data / JOB / "urls.txt")
        client.config_resetstat()
        mem0 = int(client.info("memory")["used_memory"])
        procs = [d.proc.pid for d in nodes if d.proc is not None]
        cpu = TreeCpu(procs)
        base = sum(cpu.last.values())
        t0 = time.time()
        for d in nodes:
            d.drop(f"{JOB}.toml", manifest())
        figs = [d.wait_job(JOB, "done", timeout=1800)["urllist"] for d in nodes]
        wall = time.time() - t0
        cpu_s = cpu.stop() - base
        stats = commandstats(client)
        keys = sorted(client.scan_iter(f"acq:job:{JOB}*"))
        key_bytes = {k.rsplit(":", 1)[-1]: int(client.memory_usage(k) or 0) for k in keys}
        mem1 = int(client.info("memory")["used_memory"])
        index = queue.shard_index(JOB)
        first, last = fetch_phase(nodes)
    finally:
        for d in nodes:
            d.stop()
        queue.close()
        redis.stop()
    rows = figs[0]["samples_done"]
    check(nodes, index, rows)
    per_node = {n: sum(1 for v in index.values() if v == n) for n in sorted(set(index.values()))}
    return {
        "daemons": count,
        "rows": rows,
        "ok": figs[0]["samples_ok"],
        "shards": len(index),
        "per_node": per_node,
        "wall": wall,
        "cpu": cpu_s,
        "fetch": last - first,
        "stats": stats,
        "key_bytes": key_bytes,
        "mem_delta": mem1 - mem0,
    }


def _script_inner(stats: dict[str, int]) -> int:
    return sum(v for k, v in stats.items() if k in ("evalsha", "eval", "script|load"))


def main() -> None:
    """One daemon, then two, on the same corpus; the figures as a table."""
    paths = make_corpus()
    nginx = Nginx(OUT, OUT / "data", {"img": ("127.0.0.1", None)})
    results = []
    try:
        urls = OUT / "urls.txt"
        # One URL in fifty answers 404: the failures the fleet keeps in Redis.
        listed = [p if i % 50 != 49 else f"missing/{i}.jpg" for i, p in enumerate(paths)]
        urls.write_text("".join(nginx.url("img", p) + "\n" for p in listed))
        print(f"{len(paths)} URLs, shards of {SHARD}; load: {os.getloadavg()}", flush=True)
        for i, count in enumerate(int(c) for c in ROUNDS.split(",")):
            r = run(count, urls, OUT / f"run-{i}-{count}")
            results.append(r)
            total = sum(r["stats"].values())
            print(
                f"{count} daemon(s): {r['rows'] / r['wall']:7.0f} samples/s end to end "
                f"({r['wall']:.1f} s), {r['rows'] / r['fetch']:7.0f} samples/s fetching "
                f"({r['fetch']:.1f} s), {r['rows'] / r['cpu']:7.0f} samples/CPU-s "
                f"({r['cpu']:.1f} CPU-s); shards per node {r['per_node']}; "
                f"{total} Redis commands = {total / r['shards']:.1f} per shard, "
                f"{total / r['rows']:.3f} per sample; load {os.getloadavg()}",
                flush=True,
            )
    finally:
        nginx.stop()
    print(
        "\n| daemons | samples/s end to end | samples/s fetching | samples/CPU-s | ok "
        "| shards per node |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['daemons']} | {r['rows'] / r['wall']:,.0f} | {r['rows'] / r['fetch']:,.0f} "
            f"| {r['rows'] / r['cpu']:,.0f} | {r['ok']}/{r['rows']} | {r['per_node']} |"
        )
    best = {
        n: {
            key: max(r["rows"] / r[key] for r in results if r["daemons"] == n)
            for key in ("wall", "fetch", "cpu")
        }
        for n in (1, 2)
    }
    print(
        "| two/one (best of each) | "
        + " | ".join(f"{best[2][k] / best[1][k]:.2f}x" for k in ("wall", "fetch", "cpu"))
        + " | | |"
    )
    for r in results[:2]:
        stats, shards, rows = r["stats"], r["shards"], r["rows"]
        total = sum(stats.values())
        calls = _script_inner(stats)
        print(
            f"\nRedis, {r['daemons']} daemon(s): {total} commands ({total / shards:.1f} per "
            f"shard, {total / rows:.4f} per sample), of which {calls} script calls; "
            f"job keys {sum(r['key_bytes'].values()):,} bytes {r['key_bytes']}; "
            f"{r['rows'] - r['ok']} failed samples; "
            f"used_memory +{r['mem_delta']:,} bytes"
        )
        for name, n in sorted(stats.items(), key=lambda kv: -kv[1]):
            print(f"  {name:16s} {n:6d}  {n / shards:6.2f}/shard")
    print(f"load average at the end: {os.getloadavg()} (2 cores shared with other work)")


if __name__ == "__main__":
    main()

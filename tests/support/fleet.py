"""A fleet of real daemons on one real redis-server, for the cluster's fault tests: a
corpus of a few thousand URLs on the loopback image server, a manifest dropped on every
node, and the check that every input row is in exactly one shard of the job's index."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from acquired.daemon.redisqueue import connect
from support import urllist_jobs as uj
from support.daemon import DaemonProcess
from support.image_server import ImageServer, Route
from support.images import jpeg

JOB = "fleet"


@dataclass
class FleetCorpus:
    """The URLs in input order; ``missing``: the rows that answer 404."""

    urls: list[str]
    missing: set[int]


def corpus(server: ImageServer, n: int, *, delay: float = 0.0, distinct: int = 40) -> FleetCorpus:
    """``n`` URLs: JPEGs (``distinct`` pictures under many URLs; the job has no dedupe)
    answering after ``delay`` seconds, and one 404 in fifty."""
    bodies = [jpeg(5000 + i, 160, 120) for i in range(distinct)]
    urls: list[str] = []
    missing: set[int] = set()
    for i in range(n):
        if i % 50 == 49:
            urls.append(server.url(f"/gone/{i}.jpg"))
            missing.add(i)
        else:
            route = Route(body=bodies[i % distinct], content_type="image/jpeg", delay=delay)
            urls.append(server.route(f"/f/{i}.jpg", route))
    return FleetCorpus(urls, missing)


def manifest(shard_size: int, per_host: int = 8) -> str:
    """A URL-list manifest for the fleet's corpus: no dedupe (it is per node until the
    finishing pass), no size filter, no retries."""
    return (
        "manifest_version = 1\n"
        'kind = "urllist"\n'
        f'name = "{JOB}"\n'
        f'destination = "{JOB}"\n\n'
        "[urllist]\n"
        'input = "urls.parquet"\n'
        f"shard_size = {shard_size}\n"
        "timeout = 30\n"
        "retries = 0\n"
        f"per_host_connections = {per_host}\n"
        'url_column = "url"\n'
        'caption_column = "caption"\n'
        'keep_columns = ["n"]\n'
    )


@contextmanager
def daemons(
    root: Path, redis_url: str, names: tuple[str, ...], *, lease: float = 60
) -> Iterator[list[DaemonProcess]]:
    """One started daemon per name, each with its own state, on the same Redis."""
    nodes = [
        DaemonProcess(root / name, cluster={"redis_url": redis_url, "node": name, "lease": lease})
        for name in names
    ]
    with ExitStack() as stack:
        for node in nodes:
            start(node)
            stack.push(node.__exit__)
        yield nodes


def start(node: DaemonProcess) -> DaemonProcess:
    """Start a daemon, waiting longer than usual for its socket: a fleet test starts
    several on a machine whose cores other tests share."""
    try:
        return node.start(timeout=90)
    except BaseException:
        node.stop()  # a daemon that never answered must not outlive the test
        raise


def submit(nodes: list[DaemonProcess], c: FleetCorpus, shard_size: int, per_host: int = 8) -> None:
    """The input on every node (node-local disks), then the same manifest dropped on every
    node: one job in the fleet."""
    first = nodes[0].data / JOB
    uj.write_input(first, "parquet", uj.Corpus(urls=c.urls))
    for node in nodes[1:]:
        shutil.copytree(first, node.data / JOB)
    text = manifest(shard_size, per_host)
    for node in nodes:
        node.drop(f"{JOB}.toml", text)


def shard_index(redis_url: str, job: str = JOB) -> dict[int, str]:
    """Which node wrote each done shard, as the fleet's Redis says."""
    queue = connect(redis_url)
    try:
        return queue.shard_index(job)
    finally:
        queue.close()


def read_shard(folder: Path, shard_id: int) -> list[dict[str, Any]]:
    """One finished shard's parquet rows, its tar checked against them."""
    stem = f"{shard_id:05d}"
    assert (folder / f"{stem}_stats.json").exists(), f"{folder}/{stem} is not finished"
    rows: list[dict[str, Any]] = pq.read_table(folder / f"{stem}.parquet").to_pylist()
    with tarfile.open(folder / f"{stem}.tar") as tar:
        members = Counter(m.name.split(".", 1)[0] for m in tar.getmembers())
    kept = {r["key"] for r in rows if r["status"] == "ok"}
    assert set(members) == kept, f"{folder}/{stem}: tar members differ from the ok rows"
    return rows


def finished_shards(folder: Path) -> set[int]:
    """The shard ids with a stats file (written last) in ``folder``."""
    return {int(p.name[: -len("_stats.json")]) for p in folder.glob("*_stats.json")}


def account(
    nodes: list[DaemonProcess], index: dict[int, str], c: FleetCorpus
) -> dict[str, list[int]]:
    """Check the job's output against its index: each indexed shard finished on the node
    that the index names; every input row in exactly one indexed shard, with the status
    its URL deserves; a shard also finished on another node (done twice) holds the same
    rows there. Returns the shard ids each node wrote per the index."""
    by_name = {n.root.name: n for n in nodes}
    seen: dict[int, int] = {}
    per_node: dict[str, list[int]] = {name: [] for name in by_name}
    for shard_id, node in sorted(index.items()):
        rows = read_shard(by_name[node].data / JOB, shard_id)
        per_node[node].append(shard_id)
        for r in rows:
            row = r["row_index"]
            assert row not in seen, f"row {row} in shard {shard_id} and in shard {seen[row]}"
            seen[row] = shard_id
            want = "http_4xx" if row in c.missing else None
            got = r["error_class"] if r["status"] != "ok" else None
            assert got == want, f"row {row}: {r['status']} {got} ({r['error_message']})"
        for other in nodes:
            if other.root.name != node and shard_id in finished_shards(other.data / JOB):
                twin = read_shard(other.data / JOB, shard_id)
                assert _rows(twin) == _rows(rows), f"shard {shard_id} differs on {other.root}"
    assert sorted(seen) == list(range(len(c.urls))), "rows missing from the index"
    return per_node


def _rows(rows: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    return sorted((r["row_index"], r["status"], r["sha256"]) for r in rows)


def figures(node: DaemonProcess) -> dict[str, Any]:
    """The URL-list figures of the job in a node's status ({} before it has any)."""
    job = node.job(JOB)
    return dict((job or {}).get("urllist") or {})


def reason(node: DaemonProcess) -> str:
    """The job's reason in a node's status (empty if none)."""
    job = node.job(JOB)
    return str((job or {}).get("reason") or "")


def started_shards(node: DaemonProcess) -> list[str]:
    """The names of the shards a node's log says it started, in order."""
    out = []
    for line in log_lines(node, " started ("):
        word = line.split("shard ", 1)[1].split(" ", 1)[0]
        out.append(word)
    return out


def served(server: ImageServer, c: FleetCorpus, shard_id: int, size: int) -> int:
    """How many of a shard's images the server has answered so far."""
    rows = range(shard_id * size, min((shard_id + 1) * size, len(c.urls)))
    return sum(server.hits(f"/f/{i}.jpg") for i in rows if i not in c.missing)


def log_lines(node: DaemonProcess, needle: str) -> list[str]:
    """The daemon's log lines (text or JSON) containing ``needle``."""
    return [line for line in node.log().splitlines() if needle in line]


def dumps(value: Any) -> str:
    """For assertion messages."""
    return json.dumps(value, indent=1, default=str)

"""One 100,000-URL job through the real daemon: its store's size and its memory.

    .venv/bin/python bench/bench_urllist_job.py          # run by `make bench`

Serves bench_urllist's corpus with nginx on loopback, writes BENCH_URLLIST_JOB_URLS
(default 100,000) URLs (the corpus repeated, a query string per copy, so each URL is a
new sample; exact dedupe off since the copies are the same bytes), starts `acquired` with
its own state folder, drops a kind = "urllist" manifest into the inbox and polls the
control socket until the job is done. Every half second it reads from /proc the RSS of
the daemon and of each process below it (forkserver, the job's dedupe manager, workers).
Reports samples/s, the peaks (RSS per process, PSS summed over the family) and the
store's size per URL, while running (database + WAL) and after the stop; every row of
the output is checked against the input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import bench_urllist
from common import Nginx
from support.daemon import DaemonProcess

URLS = int(os.environ.get("BENCH_URLLIST_JOB_URLS", "100000"))
WORK = HERE / "out" / "urllist-job"
PAGE = os.sysconf("SC_PAGESIZE")


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss(pid: int) -> int:
    """Proportional set size of ``pid``: pages shared with the forkserver's other children
    counted once over all of them (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def below(pid: int) -> list[int]:
    """Every process below ``pid``."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def store_bytes(state: Path) -> dict[str, int]:
    """Sizes of the store's files (database, WAL, shared memory)."""
    return {
        p.name: p.stat().st_size
        for p in state.iterdir()
        if p.is_file() and (".db" in p.name or ".sqlite" in p.name)
    }


MANIFEST = """manifest_version = 1
kind = "urllist"
name = "big"
destination = "big"

[urllist]
input = "urls.txt"
shard_size = 10000
timeout = 10
retries = 0
per_host_connections = 64

[urllist.dedupe]
exact = false
"""


def main() -> None:
    """Run the job once and print the figures."""
    data, listing, _ = bench_urllist.make_corpus()
    paths = json.loads(listing.read_text())["paths"]
    subprocess.run(["rm", "-rf", str(WORK / "daemon")], check=True)
    nginx = Nginx(WORK, data, {"img": ("127.0.0.1", None)})
    try:
        d = DaemonProcess(WORK / "daemon", log_level="info")
        out = d.data / "big"
        out.mkdir(parents=True)
        with (out / "urls.txt").open("w") as f:
            for i in range(URLS):
                copy, index = divmod(i, len(paths))
                f.write(f"{nginx.url('img', paths[index])}?copy={copy}\n")
        with d:
            assert d.proc is not None
            t0 = time.perf_counter()
            d.drop("big.toml", MANIFEST)
            peak_daemon = peak_family = peak_child = 0
            samples: list[tuple[float, int]] = []
            while True:
                job = d.job("big")
                if job and job["state"] in ("done", "failed"):
                    break
                kids = below(d.proc.pid)
                own = rss(d.proc.pid)
                child = max((rss(p) for p in kids), default=0)
                family = pss(d.proc.pid) + sum(pss(p) for p in kids)
                peak_daemon, peak_child = max(peak_daemon, own), max(peak_child, child)
                peak_family = max(peak_family, family)
                samples.append((time.perf_counter() - t0, own))
                time.sleep(0.5)
            wall = time.perf_counter() - t0
            show = d.call({"cmd": "show", "job": "big"})
            running = store_bytes(d.state)
        # Stopped: the WAL is checkpointed into the database.
        sizes = store_bytes(d.state)
        if job["state"] != "done":
            raise SystemExit(f"the job failed: {json.dumps(show, indent=1)[:2000]}")
        fig = show.get("urllist", {})
        rows = bench_urllist.check_output(out, URLS)
        total = sum(sizes.values())
        print(f"{URLS:,} URLs through the daemon: {wall:.1f} s, {URLS / wall:,.0f} samples/s")
        print(f"outcome {rows}; failures by class {fig.get('failures')}")
        print(
            f"peak RSS: daemon {peak_daemon / 1e6:.0f} MB, "
            f"largest child {peak_child / 1e6:.0f} MB, "
            f"daemon + children {peak_family / 1e6:.0f} MB PSS "
            f"(daemon at start {samples[0][1] / 1e6:.0f} MB)"
        )
        print(f"store while running: {running}")
        print(f"store after stop: {sizes} = {total:,} bytes, {total / URLS:.1f} bytes per URL")
    finally:
        nginx.stop()


if __name__ == "__main__":
    main()

"""Exact deduplication across a SIGKILL of the daemon: the job-wide index is rebuilt from
the finished shards, so a copy of a sample stored before the kill is not stored again."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from support import urllist_jobs as uj
from support.daemon import DaemonProcess
from support.image_server import ImageServer, Route
from support.images import encode, picture
from support.procs import alive, descendants

DISTINCT = 24
SHARD = 8


MANIFEST = f"""manifest_version = 1
kind = "urllist"
name = "x"
destination = "x"

[urllist]
input = "urls.txt"
shard_size = {SHARD}
timeout = 30
retries = 0
per_host_connections = 2

[urllist.dedupe]
exact = true
"""


def test_no_exact_duplicate_stored_twice_across_a_sigkill(tmp_path: Path) -> None:
    bodies = [encode(picture(300 + i, 160 + i, 140), "JPEG", quality=85) for i in range(DISTINCT)]
    with ImageServer() as server:
        # The same bodies twice under other URLs: the copies of shards 0-2 are in 3-5.
        urls = [
            server.route(f"/c{copy}/{i}.jpg", Route(body, "image/jpeg", delay=0.25))
            for copy in range(2)
            for i, body in enumerate(bodies)
        ]
        # One worker: one shard at a time, so the kill falls between finished shards.
        d = DaemonProcess(tmp_path, urllist={"workers": 1})
        with d:
            out = d.data / "x"
            out.mkdir(parents=True)
            (out / "urls.txt").write_text("".join(u + "\n" for u in urls))
            d.drop("x.toml", MANIFEST)

            def mid_job() -> dict | None:
                fig = ((d.job("x") or {}).get("urllist")) or {}
                return (
                    fig
                    if fig.get("shards_done", 0) >= 2 and fig.get("shards_in_progress")
                    else None
                )

            d.wait_for(mid_job, 90, "two shards done and a third under way")
            assert d.proc is not None
            workers = descendants(d.proc.pid)
            d.kill()
            d.wait_for(lambda: not any(alive(p) for p in workers), 20, "the workers to end")
            # Whatever index the daemon kept of its own is gone too, as a kill between a
            # shard's ack and the index's save leaves it: only the shards remain.
            for saved in (d.state / "urllist").glob("*.dedupe"):
                saved.unlink()
            d.start()
            d.wait_job("x", "done", timeout=120)
            log = d.log()
    assert "fetching shards with 1 worker(s)" in log
    rows = uj.read_output(out)
    assert sorted(rows) == list(range(2 * DISTINCT))
    stored = {r["key"]: r for r in rows.values() if r["status"] == "ok"}
    assert len({r["sha256"] for r in stored.values()}) == len(stored) == DISTINCT
    copies = [r for r in rows.values() if r["error_class"] == "duplicate"]
    assert len(copies) == DISTINCT
    assert all(r["duplicate_of"] in stored for r in copies)
    digests = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                f = t.extractfile(m)
                if m.name.endswith(".jpg") and f is not None:
                    digests.append(hashlib.sha256(f.read()).hexdigest())
    assert sorted(digests) == sorted({hashlib.sha256(b).hexdigest() for b in bodies})

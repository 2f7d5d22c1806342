"""Rebuilding a URL-list job's dedupe index from its finished shards, at 10^6 samples.

    .venv/bin/python bench/bench_urllist_rebuild.py     # run by `make bench`

Writes BENCH_REBUILD_SAMPLES (default 1,000,000) stored samples with distinct sha256 and
phash into 10,000-row shards under bench/out/ (kept between runs), then rebuilds the
index in a fresh process, exact only and exact + perceptual, and reports the time, the
peak RSS of that process and the RSS it held before reading (imports only), so the
difference is the index plus one record batch.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "urllist-rebuild"
SAMPLES = int(os.environ.get("BENCH_REBUILD_SAMPLES", "1000000"))
SHARD = 10_000


def make_shards(folder: Path) -> None:
    """``SAMPLES`` stored samples in finished shards (kept between runs)."""
    from acquired.sources.urllist.shards import SampleRecord, ShardWriter, sample_key

    done = folder / "done.json"
    if done.exists() and json.loads(done.read_text()) == SAMPLES:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    print(f"writing {SAMPLES:,} samples into shards (once; kept under {folder})", flush=True)
    for shard in range(-(-SAMPLES // SHARD)):
        writer = ShardWriter(folder, shard)
        for row in range(shard * SHARD, min(SAMPLES, (shard + 1) * SHARD)):
            digest = hashlib.sha256(row.to_bytes(8, "big")).digest()
            writer.add(
                SampleRecord(
                    key=sample_key(row, SHARD),
                    row_index=row,
                    url=f"http://127.0.0.1/{row}.jpg",
                    sha256=digest.hex(),
                    phash=digest[:8].hex(),
                )
            )
        writer.commit({"rows": SHARD})
    done.write_text(json.dumps(SAMPLES))


def child(folder: str, perceptual: bool) -> None:
    """In a fresh process: rebuild and print the figures as JSON."""
    import pyarrow as pa

    from acquired.sources.urllist.dedupe import DedupeIndex
    from acquired.sources.urllist.rebuild import rebuild_index

    def rss() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")

    # A rebuild of one shard first, so that what pyarrow sets up on first use is not
    # counted as the index's.
    with tempfile.TemporaryDirectory() as warm:
        for name in ("00000.parquet", "00000_stats.json"):
            shutil.copy(Path(folder) / name, Path(warm) / name)
        rebuild_index(DedupeIndex(exact=True, perceptual=perceptual), Path(warm))
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = rss()
    index = DedupeIndex(exact=True, perceptual=perceptual)
    t0, c0 = time.perf_counter(), time.process_time()
    shards, rows, samples = rebuild_index(index, Path(folder))
    indexed = len(index)  # also settles the bulk-loaded digests into their sorted arrays
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # What the batches allocated and freed goes back to the system, so the RSS left is
    # what the index holds.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    pa.default_memory_pool().release_unused()
    print(
        json.dumps(
            {
                "shards": shards,
                "rows": rows,
                "samples": samples,
                "indexed": indexed,
                "wall": wall,
                "cpu": cpu,
                "rss_before": before,
                "rss_after": rss(),
                "peak": peak,
            }
        )
    )


def main() -> None:
    """Write the shards once, then rebuild in a fresh process per setting."""
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "perceptual")
        return
    folder = OUT / f"shards-{SAMPLES}"
    make_shards(folder)
    for mode in ("exact", "perceptual"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), mode],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.splitlines()[-1])
        held = r["rss_after"] - r["rss_before"]
        print(
            f"rebuild {mode:10s}: {r['samples']:,} samples from {r['shards']} shards in "
            f"{r['wall']:.1f} s ({r['cpu']:.1f} CPU-s, {r['samples'] / r['wall']:,.0f}/s); "
            f"index held {held / 1e6:.0f} MB ({held / r['samples']:.0f} B/sample), "
            f"peak RSS {r['peak'] / 1e6:.0f} MB (imports {r['rss_before'] / 1e6:.0f} MB)",
            flush=True,
        )


if __name__ == "__main__":
    main()

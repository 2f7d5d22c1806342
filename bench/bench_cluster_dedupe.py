"""Cluster-wide exact dedupe: a Redis set of digests against a finishing pass over the
shards' parquet, at 10^6 samples.

    .venv/bin/python bench/bench_cluster_dedupe.py

- Redis: a redis-server on a free loopback port (no persistence); the digests of
  BENCH_DEDUPE_SAMPLES samples (default 1,000,000) are added to one job's set, a shard
  (10,000 samples) at a time as a node would: SMISMEMBER (which are already there) and
  SADD in one pipeline, one round trip per shard. Memory from INFO memory before/after,
  per digest width (8 and 16 bytes).
- Finishing pass: the shards written by bench_urllist_rebuild.py (same corpus, kept under
  bench/out/) are read and searched for exact and perceptual duplicates in a fresh
  process; time and its peak RSS above the imports.
Both are extrapolated to a 10^7-sample job and to LAION-5B (5.8e9 samples).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

SAMPLES = int(os.environ.get("BENCH_DEDUPE_SAMPLES", "1000000"))
SHARD = 10_000
SCALES = {"10^7-sample job": 1e7, "LAION-5B": 5.8e9}


def bench_redis(width: int) -> dict[str, float]:
    """Digests of ``width`` bytes into one set, a shard per round trip."""
    import hashlib
    import tempfile

    import redis
    from support.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            client = redis.Redis.from_url(server.url)
            key = "acq:job:bench:digests"
            before = int(client.info("memory")["used_memory"])
            trips = 0
            dup_found = 0
            t0 = time.perf_counter()
            for lo in range(0, SAMPLES, SHARD):
                digests = [
                    hashlib.sha256(i.to_bytes(8, "big")).digest()[:width]
                    for i in range(lo, min(SAMPLES, lo + SHARD))
                ]
                pipe = client.pipeline(transaction=True)
                pipe.smismember(key, digests)
                pipe.sadd(key, *digests)
                seen, _ = pipe.execute()
                trips += 1
                dup_found += sum(seen)
            wall = time.perf_counter() - t0
            after = int(client.info("memory")["used_memory"])
            client.close()
        finally:
            server.stop()
    return {
        "bytes_per_digest": (after - before) / SAMPLES,
        "wall": wall,
        "round_trips": trips,
        "duplicates": dup_found,
    }


def child(folder: str) -> None:
    """In a fresh process: the finishing pass; prints its figures as JSON."""
    from acquired.sources.urllist.finishing import counts, find_duplicates, read_shards

    def rss() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")

    before = rss()
    t0 = time.perf_counter()
    samples = read_shards(Path(folder))
    read = time.perf_counter() - t0
    exact = find_duplicates(samples, exact=True, perceptual=False)
    t_exact = time.perf_counter() - t0
    both = find_duplicates(samples, exact=True, perceptual=True, max_distance=4)
    t_both = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "shards": samples.shards,
                "rows": samples.rows,
                "read": read,
                "exact": t_exact,
                "exact_and_perceptual": t_both,
                "found_exact": counts(exact),
                "found_both": counts(both),
                "rss_before": before,
                "peak": peak,
            }
        )
    )


def main() -> None:
    """Both measurements, then the extrapolation."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    os.environ.setdefault("BENCH_REBUILD_SAMPLES", str(SAMPLES))
    from bench_urllist_rebuild import OUT, make_shards

    folder = OUT / f"shards-{SAMPLES}"
    make_shards(folder)
    for width in (8, 16):
        r = bench_redis(width)
        per = r["bytes_per_digest"]
        print(
            f"redis set, {width}-byte digests: {per:.1f} B/digest, {r['round_trips']} round "
            f"trips ({SAMPLES // r['round_trips']} samples each), {r['wall']:.1f} s "
            f"({SAMPLES / r['wall']:,.0f} samples/s), {r['duplicates']} duplicates",
            flush=True,
        )
        for name, n in SCALES.items():
            print(f"    {name}: {per * n / 1e9:,.1f} GB of Redis memory", flush=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(folder)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    r = json.loads(out.splitlines()[-1])
    held = r["peak"] - r["rss_before"]
    print(
        f"finishing pass over {r['rows']:,} rows in {r['shards']} shards: read "
        f"{r['read']:.1f} s, exact {r['exact']:.1f} s, exact+perceptual (distance 4) "
        f"{r['exact_and_perceptual']:.1f} s; peak RSS {r['peak'] / 1e6:.0f} MB "
        f"({held / r['rows']:.0f} B/row above the imports); found {r['found_both']}",
        flush=True,
    )
    for name, n in SCALES.items():
        scale = n / r["rows"]
        print(
            f"    {name}: exact {r['exact'] * scale / 3600:,.2f} h, "
            f"exact+perceptual >= {r['exact_and_perceptual'] * scale / 3600:,.2f} h, "
            f"{held * scale / 1e9:,.1f} GB in one pass",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""URL-list jobs against img2dataset on the same URL list, served by nginx on loopback.

    .venv/bin/python bench/bench_urllist.py            # run by `make bench`

Makes BENCH_URLLIST_IMAGES (default 20,000) distinct JPEGs of 8-200 KB under bench/out/
(kept between runs), plus a few per cent of URLs that fail (404, a non-image body, a
truncated JPEG); installs img2dataset into its own virtualenv under bench/out/ (pip from
PyPI, once); then runs, in one go, acquired's workers and img2dataset on the same list
without resizing and with resizing to 256 px (keep_ratio), 2 processes x 64 transfers
each, every output checked (every row accounted for, tars open, members = successes).
Figures: samples/s (input rows over wall time), samples per CPU-second (user + system of
the run's whole process tree), and the ratio. BENCH_URLLIST_REPEAT=N runs each tool N
times per mode in ABBA order and reports the best of each (on a shared machine other
work only ever slows a run down).
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import Nginx

OUT = HERE / "out" / "urllist"
I2D_VENV = HERE / "out" / "img2dataset-venv"
COUNT = int(os.environ.get("BENCH_URLLIST_IMAGES", "20000"))
ALONE = int(os.environ.get("BENCH_URLLIST_ALONE", "100000"))
SHARD = 2500
REPEAT = int(os.environ.get("BENCH_URLLIST_REPEAT", "1"))
PROCESSES = 2
THREADS = 64


# -- corpus ------------------------------------------------------------------------------


def _base_images(count: int, rng: random.Random) -> list[bytes]:
    """Distinct-looking JPEGs of 8-200 KB: blurred shapes plus noise of varying strength."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    out: list[bytes] = []
    nprng = np.random.default_rng(1)
    while len(out) < count:
        w = rng.choice([320, 400, 512, 640, 800, 1024])
        h = int(w * rng.uniform(0.6, 1.4))
        im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(8):
            x0, y0 = rng.randrange(w), rng.randrange(h)
            box = (x0, y0, x0 + rng.randrange(20, w // 2), y0 + rng.randrange(20, h // 2))
            draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        im = im.filter(ImageFilter.GaussianBlur(3))
        noise = rng.choice([0, 4, 10, 20, 35])
        if noise:
            arr = np.asarray(im, dtype=np.int16) + nprng.normal(0, noise, (h, w, 3)).astype(
                np.int16
            )
            im = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=rng.choice([75, 85, 92]))
        data = buf.getvalue()
        if 8_000 <= len(data) <= 200_000:
            out.append(data)
    return out


def make_corpus() -> tuple[Path, Path, dict[str, int]]:
    """Serve-ready folder and URL paths; the expected failures by kind."""
    data = OUT / "data"
    listing = OUT / f"paths-{COUNT}.json"
    if listing.exists():
        meta = json.loads(listing.read_text())
        return data, listing, meta["expect"]
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    print(f"making {COUNT} images (once; kept under {data})", flush=True)
    bases = _base_images(200, rng)
    paths: list[str] = []
    expect = {"missing": 0, "not_image": 0, "truncated": 0}
    for i in range(COUNT):
        name = f"{i // 1000:03d}/{i}.jpg"
        roll = rng.random()
        target = data / name
        target.parent.mkdir(exist_ok=True)
        base = bases[i % len(bases)]
        if roll < 0.02:
            expect["missing"] += 1  # never written: 404
        elif roll < 0.03:
            target.write_bytes(b"<html><body>moved</body></html>\n" * 20)
            expect["not_image"] += 1
        elif roll < 0.04:
            target.write_bytes(base[: len(base) // 2])
            expect["truncated"] += 1
        else:
            # A comment segment after SOI makes every file's bytes distinct (no exact
            # duplicates) while decoding the same amount of data.
            comment = f"acquired bench sample {i}".encode()
            segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
            target.write_bytes(base[:2] + segment + base[2:])
        paths.append(name)
    listing.write_text(json.dumps({"paths": paths, "expect": expect}))
    return data, listing, expect


# -- runners -----------------------------------------------------------------------------


def children_cpu() -> float:
    """CPU seconds (user + system) of every reaped descendant so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of the whole process tree, exit code."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    return time.perf_counter() - t0, children_cpu() - cpu0, rc


def ensure_img2dataset() -> Path:
    """The img2dataset executable of its own virtualenv (installed once from PyPI)."""
    exe = I2D_VENV / "bin" / "img2dataset"
    if not exe.exists():
        print("installing img2dataset into its own virtualenv (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(I2D_VENV)], check=True)
        subprocess.run([str(I2D_VENV / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    return exe


def run_acquired_child(urls: str, out: str, resize: str, exact: bool = True) -> None:
    """In a child process: the whole job through ShardPool; prints a JSON summary."""
    from acquired.sources.urllist.pool import ShardPool
    from acquired.sources.urllist.readers import plan_shards
    from acquired.sources.urllist.settings import (
        DedupeSettings,
        FetchSettings,
        FilterSettings,
        InputSettings,
        ResizeSettings,
        UrlListSettings,
    )
    from acquired.sources.urllist.worker import ShardTask

    dedupe = DedupeSettings(exact=exact, perceptual=False)
    settings = UrlListSettings(
        # One loopback host: the per-host cap is the whole concurrency, as in img2dataset.
        fetch=FetchSettings(
            timeout=10, retries=0, concurrency=THREADS, per_host_connections=THREADS
        ),
        filters=FilterSettings(),
        resize=ResizeSettings(mode="keep_ratio", size=256) if resize == "256" else None,
        dedupe=dedupe,
    )
    spec = InputSettings(urls, shard_size=SHARD)
    summary = {"statuses": {}, "classes": {}, "rows": 0}
    # spawn, not the daemon's forkserver: the workers are then this process's children and
    # their CPU time reaches the parent's RUSAGE_CHILDREN when they are reaped (forkserver
    # children are reaped by the fork server, whose figures would be lost).
    with ShardPool(dedupe, workers=PROCESSES, start_method="spawn") as pool:
        futures = [
            pool.submit(ShardTask(spec, s, settings, out)) for s in plan_shards(urls, None, SHARD)
        ]
        for f in futures:
            r = f.result()
            summary["rows"] += r.rows
            for k, v in r.statuses.items():
                summary["statuses"][k] = summary["statuses"].get(k, 0) + v
            for k, v in r.classes.items():
                summary["classes"][k] = summary["classes"].get(k, 0) + v
    print("SUMMARY " + json.dumps(summary))


def check_output(out: Path, rows: int, tool: str = "acquired") -> dict[str, int]:
    """Every row in a parquet, tar members = the rows that succeeded (acquired also writes
    a stats file per shard); counts by status."""
    import pyarrow.parquet as pq

    good = "ok" if tool == "acquired" else "success"
    statuses: dict[str, int] = {}
    seen = 0
    for parquet in sorted(out.glob("*.parquet")):
        table = pq.read_table(parquet, columns=["key", "status"]).to_pylist()
        ok = {r["key"] for r in table if r["status"] == good}
        with tarfile.open(out / f"{parquet.stem}.tar") as tar:
            members = {n.rsplit(".", 1)[0] for n in tar.getnames()}
        assert members == ok, f"{parquet}: tar members differ from the {good} rows"
        if tool == "acquired":
            assert (out / f"{parquet.stem}_stats.json").is_file()
        seen += len(table)
        for r in table:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    assert seen == rows, f"{tool} accounted {seen} rows of {rows}"
    return statuses


def main() -> None:
    """Run the comparison (or, with --acquired-child, one acquired job)."""
    if len(sys.argv) >= 5 and sys.argv[1] == "--acquired-child":
        run_acquired_child(sys.argv[2], sys.argv[3], sys.argv[4], exact=len(sys.argv) == 5)
        return
    data, listing, expect = make_corpus()
    paths = json.loads(listing.read_text())["paths"]
    i2d = ensure_img2dataset()
    nginx = Nginx(OUT, data, {"img": ("127.0.0.1", None)})
    results = []
    try:
        urls = OUT / "urls.txt"
        urls.write_text("".join(nginx.url("img", p) + "\n" for p in paths))
        rows = len(paths)
        print(f"{rows} URLs; expected failures {expect}; load: {os.getloadavg()}", flush=True)
        for mode in ("no", "256"):
            # ABBA order over the repeats, so a load that drifts during the run weighs on
            # both tools alike.
            order = [("img2dataset", "acquired"), ("acquired", "img2dataset")]
            tools = [t for r in range(REPEAT) for t in order[r % 2]]
            for tool in tools:
                out = OUT / f"run-{tool}-{mode}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                out.mkdir(parents=True)
                log = OUT / f"run-{tool}-{mode}.log"
                if tool == "acquired":
                    cmd = [sys.executable, __file__, "--acquired-child", str(urls), str(out), mode]
                else:
                    resize = (
                        ["--resize_mode", "no"]
                        if mode == "no"
                        else ["--resize_mode", "keep_ratio", "--image_size", "256"]
                    )
                    cmd = [
                        str(i2d),
                        "--url_list",
                        str(urls),
                        "--input_format",
                        "txt",
                        "--output_folder",
                        str(out),
                        "--output_format",
                        "webdataset",
                        "--processes_count",
                        str(PROCESSES),
                        "--thread_count",
                        str(THREADS),
                        "--number_sample_per_shard",
                        str(SHARD),
                        "--timeout",
                        "10",
                        "--retries",
                        "0",
                        "--enable_wandb",
                        "False",
                        *resize,
                    ]
                wall, cpu, rc = timed(cmd, log)
                if rc != 0:
                    raise SystemExit(f"{tool} failed (exit {rc}); see {log}")
                statuses = check_output(out, rows, tool)
                results.append((tool, mode, wall, cpu, statuses))
                print(
                    f"{tool:12s} resize={mode:3s} {wall:7.1f} s wall {cpu:7.1f} CPU-s "
                    f"{rows / wall:8.0f} samples/s {rows / cpu:8.0f} samples/CPU-s  {statuses}",
                    flush=True,
                )
        if ALONE:
            alone = run_alone(nginx, paths)
    finally:
        nginx.stop()
    print("\n| resize | tool | samples/s | samples/CPU-s | outcome |")
    print("| --- | --- | --- | --- | --- |")
    # Best of the repeats: the machine is shared, and other work only ever slows a run.
    by: dict[tuple[str, str], tuple[float, float, dict[str, int]]] = {}
    for t, m, w, c, s in results:
        old = by.get((t, m))
        by[(t, m)] = (min(w, old[0]), min(c, old[1]), s) if old else (w, c, s)
    for mode in ("no", "256"):
        for tool in ("img2dataset", "acquired"):
            w, c, s = by[(tool, mode)]
            print(f"| {mode} | {tool} | {rows / w:,.0f} | {rows / c:,.0f} | {s} |")
        (wi, ci, _), (wa, ca, _) = by[("img2dataset", mode)], by[("acquired", mode)]
        print(f"| {mode} | ratio acquired/img2dataset | {wi / wa:.2f}x | {ci / ca:.2f}x | |")
    if ALONE:
        print(alone)
    print(f"load average at the end: {os.getloadavg()} (2 cores shared with other work)")


def run_alone(nginx: Nginx, paths: list[str]) -> str:
    """acquired alone on ALONE URLs: the list repeated with a query string per copy (exact
    dedupe off, since the copies are the same bytes)."""
    urls = OUT / f"urls-{ALONE}.txt"
    with urls.open("w") as f:
        for i in range(ALONE):
            copy, index = divmod(i, len(paths))
            f.write(f"{nginx.url('img', paths[index])}?copy={copy}\n")
    out = OUT / "run-acquired-alone"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    log = OUT / "run-acquired-alone.log"
    cmd = [sys.executable, __file__, "--acquired-child", str(urls), str(out), "no", "noexact"]
    wall, cpu, rc = timed(cmd, log)
    if rc != 0:
        raise SystemExit(f"acquired failed (exit {rc}); see {log}")
    statuses = check_output(out, ALONE)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e9
    return (
        f"acquired alone, {ALONE:,} URLs, no resize: {ALONE / wall:,.0f} samples/s, "
        f"{ALONE / cpu:,.0f} samples/CPU-s, largest process peak RSS {rss:.0f} MB, "
        f"output {size:.2f} GB, {statuses}"
    )


if __name__ == "__main__":
    main()

"""The whole daemon against curl on many small files: a manifest of 1,000, 5,000 and
20,000 files of 8-64 KB served by nginx on loopback, from the moment the manifest lands
in the inbox to every file verified in place, against ``curl -Z --parallel-max 64``
fetching the same files from the same server in the same run. Prints files/s for each
and the ratio (above 1: the daemon is faster), so the cost per file is seen to stay flat.

The daemon runs with the embedded default configuration (only the folders, the log
level and a zero disk reserve are set).

Environment: BENCH_DAEMON_COUNTS (default "1000,5000,20000"), BENCH_DAEMON_DIR (work
folder; default a temporary one under /var/tmp), BENCH_DAEMON_TIMEOUT (seconds per
daemon run, default 1800). A quick check: ``BENCH_DAEMON_COUNTS=500``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.daemon import DaemonProcess

from common import Nginx

COUNTS = [int(n) for n in os.environ.get("BENCH_DAEMON_COUNTS", "1000,5000,20000").split(",")]
TIMEOUT = float(os.environ.get("BENCH_DAEMON_TIMEOUT", "1800"))


def make_files(folder: Path, n: int) -> list[tuple[str, int, str]]:
    """``n`` files of 8-64 KB (distinct contents); returns (name, size, sha256) of each."""
    rng = random.Random(7)
    block = os.urandom(1 << 20)
    out = []
    for i in range(n):
        size = rng.randint(8 << 10, 64 << 10)
        start = rng.randrange(0, len(block) - size)
        data = i.to_bytes(8, "little") + block[start + 8 : start + size]
        name = f"f{i:06d}.bin"
        (folder / name).write_bytes(data)
        out.append((name, size, hashlib.sha256(data).hexdigest()))
    return out


def run_curl(nginx: Nginx, files: list[tuple[str, int, str]], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = out.parent / "curl.cfg"
    config.write_text(
        "".join(
            f'url = "{nginx.url("local", name)}"\noutput = "{out / name}"\n' for name, _, _ in files
        )
    )
    t0 = time.monotonic()
    subprocess.run(
        [
            "curl",
            "-sS",
            "--no-progress-meter",
            "--fail",
            "-Z",
            "--parallel-max",
            "64",
            "-K",
            str(config),
        ],
        check=True,
    )
    seconds = time.monotonic() - t0
    for name, size, _ in files[:: max(len(files) // 50, 1)]:
        if (out / name).stat().st_size != size:
            raise SystemExit(f"curl's {name} has the wrong size")
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def run_daemon(work: Path, nginx: Nginx, files: list[tuple[str, int, str]]) -> float:
    root = work / f"daemon-{len(files)}"
    shutil.rmtree(root, ignore_errors=True)
    manifest = {
        "manifest_version": 1,
        "name": "small",
        "destination": "small",
        "files": [
            {
                "path": name,
                "size": size,
                "sha256": digest,
                "sources": {"mirrors": [nginx.url("local", name)]},
            }
            for name, size, digest in files
        ],
    }
    with DaemonProcess(root, log_level="info") as d:
        t0 = time.monotonic()
        d.drop("small.json", json.dumps(manifest))
        while True:
            job = d.job("small")
            if job is not None and job["state"] == "done":
                break
            if job is not None and job["state"] == "failed":
                raise SystemExit(f"the daemon failed: {d.call({'cmd': 'show', 'job': 'small'})}")
            if time.monotonic() - t0 > TIMEOUT:
                raise SystemExit(f"the daemon took over {TIMEOUT:.0f} s; last status: {job}")
            time.sleep(0.2)
        seconds = time.monotonic() - t0
        for name, size, _ in files[:: max(len(files) // 50, 1)]:
            if (d.data / "small" / name).stat().st_size != size:
                raise SystemExit(f"the daemon's {name} has the wrong size")
    shutil.rmtree(root, ignore_errors=True)
    return seconds


def main() -> int:
    if shutil.which("nginx") is None or shutil.which("curl") is None:
        raise SystemExit("needs nginx and curl (`make bench` installs them)")
    base = os.environ.get("BENCH_DAEMON_DIR")
    work = (
        Path(base) if base else Path(tempfile.mkdtemp(prefix="acq-bench-daemon-", dir="/var/tmp"))
    )
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    print(f"making {max(COUNTS)} files of 8-64 KB ...", flush=True)
    files = make_files(www, max(COUNTS))
    nginx = Nginx(work, www, {"local": ("127.0.0.1", None)})
    rows = []
    try:
        for n in COUNTS:
            subset = files[:n]
            curl_s = run_curl(nginx, subset, work / "curl-out")
            daemon_s = run_daemon(work, nginx, subset)
            rows.append((n, curl_s, daemon_s))
            print(f"  {n} files: curl {curl_s:.2f} s, acquired {daemon_s:.2f} s", flush=True)
    finally:
        nginx.stop()
        if not base:
            shutil.rmtree(work, ignore_errors=True)
    print("small files (8-64 KB) from nginx on loopback, inbox to verified files for acquired:")
    print(f"  {'files':>6}  {'curl -Z (64)':>14}  {'acquired':>14}  ratio (curl time / acquired)")
    for n, curl_s, daemon_s in rows:
        print(
            f"  {n:6d}  {curl_s:7.2f} s {n / curl_s:5.0f}/s"
            f"  {daemon_s:7.2f} s {n / daemon_s:5.0f}/s  {curl_s / daemon_s:.3f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

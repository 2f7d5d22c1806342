"""The whole daemon against ``curl -o``: one file from nginx on loopback, from the moment
its manifest lands in the inbox to a verified file in place, in the same run as curl
fetching the same file. Prints each as a throughput ratio to curl.

Environment: BENCH_DAEMON_SIZE (default 1G), BENCH_DAEMON_DIR (work folder; default a
temporary one under /var/tmp). A quick check: ``BENCH_DAEMON_SIZE=128M``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.daemon import DaemonProcess

from common import MiB, Nginx, parse_size, sha256_file

SIZE = parse_size(os.environ.get("BENCH_DAEMON_SIZE", "1G"))


def make_data(path: Path, size: int) -> str:
    """Incompressible data (so nothing on the way can shortcut it); returns its sha256."""
    h = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with path.open("wb") as f:
        for i in range(0, size, len(block)):
            chunk = i.to_bytes(8, "little") + block[8 : min(len(block), size - i)]
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def drop_caches_of(path: Path) -> None:
    """Forget a file's pages so that each contender writes to a cold target."""
    path.unlink(missing_ok=True)
    subprocess.run(["sync"], check=False)


def run_curl(url: str, out: Path) -> float:
    drop_caches_of(out)
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(out), url], check=True)
    return time.monotonic() - t0


def run_daemon(work: Path, url: str, digest: str, connections: int) -> float:
    root = work / f"daemon-{connections}"
    shutil.rmtree(root, ignore_errors=True)
    text = (
        f'manifest_version = 1\nname = "bench"\ndestination = "bench"\n\n[[files]]\n'
        f'path = "data.bin"\nsize = {SIZE}\nsha256 = "{digest}"\n'
        f'sources.mirrors = ["{url}"]\n'
    )
    with DaemonProcess(root, log_level="info", http={"connections_per_file": connections}) as d:
        subprocess.run(["sync"], check=False)
        t0 = time.monotonic()
        d.drop("bench.toml", text)
        while True:
            job = d.job("bench")
            if job is not None and job["state"] == "done":
                break
            if job is not None and job["state"] == "failed":
                raise SystemExit(f"the daemon failed: {d.call({'cmd': 'show', 'job': 'bench'})}")
            time.sleep(0.01)
        seconds = time.monotonic() - t0
        if sha256_file(d.data / "bench/data.bin") != digest:
            raise SystemExit("the daemon's file has the wrong digest")
    shutil.rmtree(root, ignore_errors=True)
    return seconds


def main() -> int:
    if shutil.which("nginx") is None or shutil.which("curl") is None:
        raise SystemExit("needs nginx and curl (`make bench` installs them)")
    base = os.environ.get("BENCH_DAEMON_DIR")
    work = (
        Path(base) if base else Path(tempfile.mkdtemp(prefix="acq-bench-daemon-", dir="/var/tmp"))
    )
    data_dir = work / "www"
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"making {SIZE / MiB:.0f} MiB of data ...", flush=True)
    digest = make_data(data_dir / "data.bin", SIZE)
    nginx = Nginx(work, data_dir, {"local": ("127.0.0.1", None)})
    try:
        url = nginx.url("local")
        curl_s = run_curl(url, work / "curl.out")
        if sha256_file(work / "curl.out") != digest:
            raise SystemExit("curl's file has the wrong digest")
        (work / "curl.out").unlink()
        one = run_daemon(work, url, digest, 1)
        eight = run_daemon(work, url, digest, 8)
    finally:
        nginx.stop()
        if not base:
            shutil.rmtree(work, ignore_errors=True)
    rate = SIZE / MiB
    print(f"{SIZE / MiB:.0f} MiB from nginx on loopback (inbox to verified file for acquired):")
    print(f"  curl -o                      {curl_s:6.2f} s  {rate / curl_s:7.0f} MiB/s  1.00x")
    for label, secs in (("acquired, 1 connection", one), ("acquired, 8 connections", eight)):
        print(f"  {label:28} {secs:6.2f} s  {rate / secs:7.0f} MiB/s  {curl_s / secs:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

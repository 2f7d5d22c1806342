"""Small-file cost of the HTTP engine: many files of 8-64 KB from nginx on loopback,
fetched with ``HttpDownload`` directly (no daemon), one after another and N at a time.

Prints files/s for each mode, every digest checked. Environment: BENCH_SMALL_FILES
(default 2000), BENCH_SMALL_PARALLEL (default 64), BENCH_SMALL_DIR (work folder; default
a temporary one under /var/tmp). ``.venv/bin/python bench/bench_http_small.py``.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Nginx

FILES = int(os.environ.get("BENCH_SMALL_FILES", "2000"))
PARALLEL = int(os.environ.get("BENCH_SMALL_PARALLEL", "64"))


def _make_files(data_dir: Path) -> dict[str, tuple[int, str]]:
    rng = random.Random(7)
    out: dict[str, tuple[int, str]] = {}
    for i in range(FILES):
        data = rng.randbytes(rng.randint(8 << 10, 64 << 10))
        name = f"f{i:05d}.bin"
        (data_dir / name).write_bytes(data)
        out[name] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def _run(nginx: Nginx, files: dict[str, tuple[int, str]], dest: Path, workers: int) -> float:
    from acquired.sources.http import FileRequest, HttpDownload, HttpOptions

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    options = HttpOptions(connections=8, per_host_connections=256)

    def one(name: str) -> None:
        size, digest = files[name]
        request = FileRequest(
            urls=[nginx.url("a", name)],
            dest=dest / name,
            size=size,
            digests={"sha256": digest},
        )
        HttpDownload(request, options, lambda event: None).run()

    started = time.monotonic()
    if workers == 1:
        for name in files:
            one(name)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, files))
    elapsed = time.monotonic() - started
    assert len(list(dest.iterdir())) == len(files)
    return len(files) / elapsed


def main() -> None:
    """Serve the files, fetch them twice (sequential, parallel), print files/s."""
    base = Path(os.environ.get("BENCH_SMALL_DIR") or tempfile.mkdtemp(dir="/var/tmp"))
    data_dir = base / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    files = _make_files(data_dir)
    nginx = Nginx(base, data_dir, {"a": ("127.0.0.1", None)})
    try:
        seq = _run(nginx, files, base / "out-seq", 1)
        par = _run(nginx, files, base / "out-par", PARALLEL)
    finally:
        nginx.stop()
        if not os.environ.get("BENCH_SMALL_DIR"):
            shutil.rmtree(base, ignore_errors=True)
    print(f"{FILES} files of 8-64 KB from nginx on loopback")
    print(f"one after another: {seq:8.1f} files/s")
    print(f"{PARALLEL} at a time:     {par:8.1f} files/s")


if __name__ == "__main__":
    main()

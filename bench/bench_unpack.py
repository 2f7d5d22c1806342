"""Unpack benchmark: an ImageNet-train-like archive (an outer tar of inner tars of
20-200 KB files), our verify + nested extraction against what a user would otherwise run:

* ``sha256sum`` on the archive vs :func:`acquired.unpack.verify` (target: >= 3x);
* GNU tar extracting the outer archive, then each inner one into a folder named after it
  (``mkdir n01; tar -xf n01.tar -C n01; rm n01.tar``) — as a serial loop and with
  ``xargs -P $(nproc)`` — vs :func:`acquired.unpack.process_file` (sha256 verify +
  extraction with ``nested=True``, as the daemon runs it; target: >= 1.0x the xargs
  loop).

Every contender ends with its data on disk: GNU tar runs are followed by ``sync``, as our
extraction flushes the filesystem (``syncfs``) before it writes its marker. Each run
starts from a flushed page cache state (``sync``) with the archive itself cached.

Sizes (environment): ACQ_BENCH_INNER (100 inner tars), ACQ_BENCH_FILES (400 files
each), ACQ_BENCH_MIN_KB / ACQ_BENCH_MAX_KB (20 / 200), ACQ_BENCH_ROUNDS (3),
ACQ_BENCH_DIR (a temporary folder under /var/tmp). A quick run:
``ACQ_BENCH_INNER=8 ACQ_BENCH_FILES=50 .venv/bin/python bench/bench_unpack.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from acquired.unpack import UnpackStep, process_file
from acquired.unpack.verify import verify

INNER = int(os.environ.get("ACQ_BENCH_INNER", "100"))
FILES = int(os.environ.get("ACQ_BENCH_FILES", "400"))
MIN_KB = int(os.environ.get("ACQ_BENCH_MIN_KB", "20"))
MAX_KB = int(os.environ.get("ACQ_BENCH_MAX_KB", "200"))
ROUNDS = int(os.environ.get("ACQ_BENCH_ROUNDS", "3"))
NPROC = len(os.sched_getaffinity(0))


def generate(outer: Path) -> str:
    """Write the outer tar; return its sha256. Data is random (incompressible), sliced
    from one pool so generation does not dominate the run."""
    rng = random.Random(1)
    pool = rng.randbytes(32 << 20)
    digest = hashlib.sha256()

    class Hashing(io.RawIOBase):
        def __init__(self, f: io.BufferedWriter) -> None:
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            digest.update(b)
            return self.f.write(b)

    with (
        open(outer, "wb") as raw,
        tarfile.open(fileobj=Hashing(raw), mode="w|", format=tarfile.GNU_FORMAT) as out,
    ):
        for i in range(INNER):
            wnid = f"n{10_000_000 + i * 7919:08d}"
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as inner:
                for j in range(FILES):
                    size = rng.randint(MIN_KB << 10, MAX_KB << 10)
                    start = rng.randrange(0, len(pool) - size)
                    info = tarfile.TarInfo(f"{wnid}_{j}.JPEG")
                    info.size = size
                    info.mtime = 1_700_000_000
                    info.mode = 0o644
                    inner.addfile(info, io.BytesIO(pool[start : start + size]))
            data = buf.getvalue()
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))
    return digest.hexdigest()


def sh(script: str) -> None:
    subprocess.run(["bash", "-c", script], check=True)


def timed(fn: Callable[[], None]) -> float:
    sh("sync")
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    if shutil.which("tar") is None or shutil.which("sha256sum") is None:
        print("needs GNU tar and sha256sum", file=sys.stderr)
        return 1
    base = Path(
        os.environ.get("ACQ_BENCH_DIR") or tempfile.mkdtemp(prefix="acq-bench-", dir="/var/tmp")
    )
    base.mkdir(parents=True, exist_ok=True)
    outer = base / "train.tar"
    t = time.perf_counter()
    sha = generate(outer)
    size = outer.stat().st_size
    print(
        f"archive: {INNER} inner tars x {FILES} files of {MIN_KB}-{MAX_KB} KB = "
        f"{size / 1e9:.2f} GB ({time.perf_counter() - t:.1f} s to generate); {NPROC} CPUs"
    )
    out = base / "out"

    def clean() -> None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(base / ".acquired", ignore_errors=True)
        out.mkdir()

    def gnu_serial() -> None:
        sh(
            f"cd {out} && tar -xf {outer} && for f in *.tar; do d=${{f%.tar}}; mkdir $d && "
            f'tar -xf "$f" -C "$d" && rm "$f"; done && sync'
        )

    def gnu_xargs() -> None:
        sh(
            f"cd {out} && tar -xf {outer} && ls *.tar | xargs -P {NPROC} -I{{}} sh -c "
            f'\'d=${{1%.tar}}; mkdir "$d" && tar -xf "$1" -C "$d" && rm "$1"\' _ {{}} && sync'
        )

    def ours() -> None:
        # What the daemon runs: the digest is checked while the archive is extracted
        # into staging; nothing is placed before it matches.
        process_file(
            outer,
            job_root=out,
            digests={"sha256": sha},
            steps=[UnpackStep(format="tar", into=".", nested=True)],
        )

    def sha256sum() -> None:
        sh(f"sha256sum {outer} > /dev/null")

    def our_sha() -> None:
        verify(outer, {"sha256": sha})

    times: dict[str, list[float]] = {
        k: [] for k in ("serial", "xargs", "ours", "sha256sum", "verify")
    }
    for _ in range(ROUNDS):
        for name, fn in (("serial", gnu_serial), ("xargs", gnu_xargs), ("ours", ours)):
            clean()
            times[name].append(timed(fn))
        times["sha256sum"].append(timed(sha256sum))
        times["verify"].append(timed(our_sha))
    clean()
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:10s} median {med[k]:7.2f} s  runs {', '.join(f'{x:.2f}' for x in v)}")
    ratio = med["xargs"] / med["ours"]
    print(f"extract: ours (verify+extract) vs GNU tar xargs -P{NPROC}: {ratio:.2f}x")
    print(
        f"extract: ours (verify+extract) vs GNU tar serial loop: {med['serial'] / med['ours']:.2f}x"
    )
    print(f"extract: GNU xargs vs GNU serial: {med['serial'] / med['xargs']:.2f}x")
    print(
        f"verify: ours {size / med['verify'] / 1e9:.2f} GB/s vs sha256sum "
        f"{size / med['sha256sum'] / 1e9:.2f} GB/s: {med['sha256sum'] / med['verify']:.2f}x"
    )
    if not os.environ.get("ACQ_BENCH_DIR"):
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

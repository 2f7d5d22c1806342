"""A SIGKILL in the middle of an extraction (flat, and nested with worker processes) is
cleaned up and redone by the next call; orphaned workers die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import archives as A
from support.procs import alive

from acquired.unpack.extract import default_meta_dir, extract

# The child blocks inside its first progress call past zero: the extraction has begun
# (or has finished writing to staging) and nothing is in place yet. Then it is killed.
CHILD = r"""
import sys, time
from pathlib import Path
from acquired.unpack.extract import extract

def progress(done, total):
    if done > 0:
        print("STARTED", flush=True)
        time.sleep(600)

if __name__ == "__main__":
    extract(Path(sys.argv[1]), Path(sys.argv[2]), nested=sys.argv[3] == "1",
            workers=int(sys.argv[4]), progress=progress, digest="sha256:x")
"""


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def run_and_kill(tmp_path: Path, archive: Path, target: Path, nested: bool) -> list[int]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(archive), str(target), "1" if nested else "0", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "STARTED", line
        workers = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return workers


def staging_dirs(target: Path) -> list[Path]:
    meta = default_meta_dir(target)
    return [p for p in meta.iterdir() if p.name.startswith("staging-") and p.is_dir()]


def test_sigkill_during_flat_extraction_is_redone(tmp_path: Path) -> None:
    files = {f"d{i % 20}/f{i:05d}.txt": b"%d\n" % i for i in range(6000)}
    archive = A.make_tar(tmp_path / "many.tar", files)
    target = tmp_path / "out"
    run_and_kill(tmp_path, archive, target, nested=False)
    # Killed: staging holds what was written, nothing is in place, no marker.
    assert staging_dirs(target)
    assert list(target.iterdir()) == []
    assert not (default_meta_dir(target) / "many.tar.json").exists()
    result = extract(archive, target, digest="sha256:x")
    assert not result.skipped
    assert A.read_tree(target) == files
    assert staging_dirs(target) == []
    assert extract(archive, target, digest="sha256:x").skipped


def test_sigkill_during_nested_extraction_is_redone(tmp_path: Path) -> None:
    inner = {
        f"n{i:08d}.tar": {f"n{i:08d}_{j}.JPEG": A.payload(i * 100 + j, 3000) for j in range(60)}
        for i in range(16)
    }
    outer = A.make_nested_tar(tmp_path / "train.tar", inner)
    target = tmp_path / "train"
    workers = run_and_kill(tmp_path, outer, target, nested=True)
    assert workers, "the nested extraction had started its worker processes"
    # Worker processes die with their parent (PR_SET_PDEATHSIG).
    deadline = time.monotonic() + 60
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers)
    assert list(target.iterdir()) == []
    result = extract(outer, target, nested=True, workers=2, digest="sha256:x")
    assert not result.skipped
    for name, files in inner.items():
        assert A.read_tree(target / name[:-4]) == files
    assert sorted(os.listdir(target)) == sorted(n[:-4] for n in inner)
    assert staging_dirs(target) == []


@pytest.mark.parametrize("nested", [False, True])
def test_second_call_waits_for_the_first(tmp_path: Path, nested: bool) -> None:
    # Two concurrent calls for the same step: the lock serialises them and the second
    # finds the first's marker.
    inner = {f"n{i}.tar": A.sample_tree(20, 0, 3000, seed=i) for i in range(6)}
    outer = A.make_nested_tar(tmp_path / "t.tar", inner)
    results = []

    def run() -> None:
        results.append(extract(outer, tmp_path / "out", nested=nested, workers=2, digest="d"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(r.skipped for r in results) == [False, True]

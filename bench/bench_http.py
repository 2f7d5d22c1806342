"""HTTP benchmark: acquired's HTTP engine (directly, without the daemon) against
``aria2c``, ``curl``, ``wget`` and a bare ``requests`` loop, all fetching the same file
from nginx on loopback in the same run, digests checked, ratios printed against aria2c.

Scenarios (nginx from apt: ``nginx-light``; ``limit_rate`` is per connection):

* ``unthrottled``: one mirror on 127.0.0.1. Targets: ours >= 3x ``aria2c -x16 -s16 -k1M``
  and >= 0.8x a single-stream requests loop with 1 MiB reads.
* ``far``: one mirror at 20 MiB/s per connection. Target: ours (16 connections) >= 1.2x
  ``aria2c -x16 -s16 -k1M``.
* ``two-far``: two such mirrors on two hosts (127.0.0.1 and 127.0.0.2: aria2c caps
  connections per host). Target: ours (32 connections) >= 1.3x ``aria2c -x16 -s32 -k1M``
  with both URLs.
* peak RSS of each process (target for ours: < 150 MB).
* ``sigkill``: killed at about 50% on the far mirror, then resumed: bytes fetched
  twice, ours vs aria2c's (which saves its control file every 60 s by default).

Environment: BENCH_HTTP_SIZE (bytes, K/M/G suffixes; default 2G), BENCH_HTTP_DIR (work
folder; default a temporary one under /var/tmp), BENCH_HTTP_RATE (per-connection limit of
the far mirrors; default 20m), BENCH_HTTP_TOOLS (comma list from
ours,aria2c,curl,wget,requests; default all), BENCH_HTTP_SCENARIOS (comma list from
unthrottled,far,two-far,sigkill; default all). A quick check:
``BENCH_HTTP_SIZE=128M .venv/bin/python bench/bench_http.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import MiB, Nginx, parse_size, sha256_file

ROOT = Path(__file__).resolve().parents[1]


SIZE = parse_size(os.environ.get("BENCH_HTTP_SIZE", "2G"))
RATE = os.environ.get("BENCH_HTTP_RATE", "20m")
TOOLS = os.environ.get("BENCH_HTTP_TOOLS", "ours,aria2c,curl,wget,requests").split(",")
SCENARIOS = os.environ.get("BENCH_HTTP_SCENARIOS", "unthrottled,far,two-far,sigkill").split(",")


# -- the child process running our engine ---------------------------------------------------
def child_main(spec_path: str) -> int:
    """Run HttpDownload as the daemon would (``--child SPEC``), persisting checkpoints."""
    from acquired.sources.http import Checkpoint, FileRequest, HttpDownload, HttpOptions, Progress

    spec = json.loads(Path(spec_path).read_text())
    state_path = Path(spec["state"])
    progress_path = Path(spec["progress"])
    resume = json.loads(state_path.read_text()) if state_path.exists() else None

    def on_event(event: object) -> None:
        if isinstance(event, Checkpoint):
            tmp = state_path.with_name(state_path.name + ".tmp")
            tmp.write_text(json.dumps(event.state))
            os.replace(tmp, state_path)
        elif isinstance(event, Progress):
            progress_path.write_text(str(event.done))

    request = FileRequest(
        urls=spec["urls"],
        dest=Path(spec["dest"]),
        size=spec["size"],
        digests={"sha256": spec["sha256"]},
        resume=resume,
    )
    options = HttpOptions(
        connections=spec["connections"],
        per_host_connections=16,
        read_timeout=60,
    )
    HttpDownload(request, options, on_event).run()
    return 0


# -- running the contenders -----------------------------------------------------------------
@dataclass
class Run:
    tool: str
    seconds: float
    rss_mb: float
    ok: bool
    note: str = ""

    @property
    def rate(self) -> float:
        return SIZE / self.seconds / MiB if self.ok and self.seconds > 0 else 0.0


def _hwm_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM), in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_measured(cmd: list[str], *, timeout: float) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB, sampled from /proc every few ms: the fork's own
    pre-exec pages would inflate ru_maxrss) and exit status of ``cmd``."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        hwm = _hwm_mb(proc.pid)
        if hwm is not None:
            peak = max(peak, hwm)
        if time.monotonic() - started > timeout:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.005)
    seconds = time.monotonic() - started
    return seconds, peak, proc.returncode


def command(tool: str, urls: list[str], out: Path, work: Path, connections: int) -> list[str]:
    if tool == "ours":
        spec = work / "spec.json"
        state = work / "state.json"
        state.unlink(missing_ok=True)
        spec.write_text(
            json.dumps(
                {
                    "urls": urls,
                    "dest": str(out),
                    "size": SIZE,
                    "sha256": DIGEST,
                    "connections": connections,
                    "state": str(state),
                    "progress": str(work / "progress"),
                }
            )
        )
        return [sys.executable, __file__, "--child", str(spec)]
    if tool == "aria2c":
        return [
            "aria2c",
            "-x16",
            f"-s{connections}",
            "-k1M",
            "--file-allocation=falloc",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--download-result=hide",
            "-d",
            str(out.parent),
            "-o",
            out.name,
            *urls,
        ]
    if tool == "curl":
        return ["curl", "-sS", "-o", str(out), urls[0]]
    if tool == "wget":
        return ["wget", "-q", "-O", str(out), urls[0]]
    if tool == "requests":
        code = (
            "import requests,sys\n"
            "r=requests.get(sys.argv[1],stream=True)\n"
            "r.raise_for_status()\n"
            "f=open(sys.argv[2],'wb')\n"
            "for c in r.iter_content(1<<20): f.write(c)\n"
            "f.close()\n"
        )
        return [sys.executable, "-c", code, urls[0], str(out)]
    raise ValueError(tool)


def contend(tool: str, urls: list[str], work: Path, connections: int, *, timeout: float) -> Run:
    out = work / "out" / f"{tool}.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.iterdir():
        stale.unlink()
    os.sync()
    cmd = command(tool, urls, out, work, connections)
    seconds, rss, code = run_measured(cmd, timeout=timeout)
    ok = code == 0 and out.exists() and out.stat().st_size == SIZE
    note = "" if code == 0 else f"exit {code}"
    if ok and tool != "ours":  # ours verifies its digest before the rename
        ok = sha256_file(out) == DIGEST
        note = note or ("" if ok else "DIGEST MISMATCH")
    if ok and tool == "ours":
        ok = sha256_file(out) == DIGEST  # double-check what it verified
        note = "" if ok else "DIGEST MISMATCH"
    out.unlink(missing_ok=True)
    return Run(tool, seconds, rss, ok, note)


def sigkill_refetch(
    tool: str, nginx: Nginx, url: str, work: Path, kill_after: float
) -> tuple[int, bool]:
    """Bytes fetched twice after a SIGKILL at ``kill_after`` seconds and a restart."""
    out = work / "out" / f"kill-{tool}.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.iterdir():
        stale.unlink()
    offset = nginx.log_offset()
    cmd = command(tool, [url], out, work, 16)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Restart: aria2c continues from its control file; ours from its persisted state.
    if tool == "aria2c":
        cmd = [*cmd[:1], "-c", *cmd[1:]]
        cmd = [c for c in cmd if c != "--allow-overwrite=true"]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False, timeout=3600)
    ok = out.exists() and sha256_file(out) == DIGEST
    served = nginx.served_since(offset)
    out.unlink(missing_ok=True)
    return served - SIZE, ok


# -- main -------------------------------------------------------------------------------------
def make_data(path: Path) -> str:
    h = hashlib.sha256()
    block = os.urandom(8 * MiB)
    with path.open("wb") as f:
        written = 0
        counter = 0
        while written < SIZE:
            # Distinct blocks: a misplaced range cannot go unnoticed by the digest.
            chunk = counter.to_bytes(8, "big") + block[8 : min(len(block), SIZE - written)]
            chunk = chunk[: SIZE - written]
            f.write(chunk)
            h.update(chunk)
            written += len(chunk)
            counter += 1
    path.chmod(0o644)
    return h.hexdigest()


DIGEST = ""


def main() -> int:
    global DIGEST
    missing = [t for t in ("nginx", "aria2c", "curl", "wget") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (make bench installs them)", file=sys.stderr)
        return 1
    base = os.environ.get("BENCH_HTTP_DIR")
    work = (
        Path(base)
        if base
        else Path(tempfile.mkdtemp(prefix="acquired-bench-http-", dir="/var/tmp"))
    )
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "www"
    data_dir.mkdir(exist_ok=True)
    os.chmod(work, 0o755)
    os.chmod(data_dir, 0o755)
    print(f"== HTTP benchmark: {SIZE / MiB:.0f} MiB file, far mirrors at {RATE}/connection")
    print(f"   {os.cpu_count()} CPUs; figures measured in one run (machine possibly under load)")
    DIGEST = make_data(data_dir / "data.bin")
    nginx = Nginx(
        work,
        data_dir,
        {"fast": ("127.0.0.1", None), "far1": ("127.0.0.1", RATE), "far2": ("127.0.0.2", RATE)},
    )
    timeout = max(600.0, SIZE / (5 * MiB))
    results: dict[str, dict[str, Run]] = {}
    try:
        plans = {
            "unthrottled": ([nginx.url("fast")], 16, 16),
            "far": ([nginx.url("far1")], 16, 16),
            "two-far": ([nginx.url("far1"), nginx.url("far2")], 32, 32),
        }
        for scenario, (urls, ours_conns, aria_split) in plans.items():
            if scenario not in SCENARIOS:
                continue
            runs: dict[str, Run] = {}
            for tool in TOOLS:
                if scenario == "two-far" and tool in ("curl", "wget", "requests"):
                    continue  # single-URL tools: the one-far-mirror figure applies
                conns = ours_conns if tool == "ours" else aria_split
                run = contend(tool, urls, work, conns, timeout=timeout)
                runs[tool] = run
                print(
                    f"   {scenario:12} {tool:9} {run.rate:9.1f} MiB/s  {run.seconds:7.2f} s  "
                    f"RSS {run.rss_mb:6.1f} MB  {'ok' if run.ok else 'FAILED ' + run.note}",
                    flush=True,
                )
            results[scenario] = runs
        print()
        print(f"{'scenario':12} {'tool':9} {'MiB/s':>9} {'vs aria2c':>10}")
        for scenario, runs in results.items():
            base_rate = runs["aria2c"].rate if "aria2c" in runs else 0.0
            for tool, run in runs.items():
                ratio = f"{run.rate / base_rate:.2f}x" if base_rate else "-"
                print(f"{scenario:12} {tool:9} {run.rate:9.1f} {ratio:>10}")
        targets = []
        un = results.get("unthrottled", {})
        if "ours" in un and "aria2c" in un and un["aria2c"].rate:
            targets.append(("unthrottled ours/aria2c", un["ours"].rate / un["aria2c"].rate, 3.0))
        if "ours" in un and "requests" in un and un["requests"].rate:
            targets.append(
                ("unthrottled ours/requests loop", un["ours"].rate / un["requests"].rate, 0.8)
            )
        for scenario, target in (("far", 1.2), ("two-far", 1.3)):
            runs = results.get(scenario, {})
            if "ours" in runs and "aria2c" in runs and runs["aria2c"].rate:
                targets.append(
                    (f"{scenario} ours/aria2c", runs["ours"].rate / runs["aria2c"].rate, target)
                )
        print()
        for name, value, target in targets:
            verdict = "met" if value >= target else "NOT met"
            print(f"target {name:32} {value:5.2f}x  (>= {target}x: {verdict})")
        peak = max(
            (r.rss_mb for runs in results.values() for t, r in runs.items() if t == "ours"),
            default=0.0,
        )
        if peak:
            verdict = "met" if peak < 150 else "NOT met"
            print(f"target ours peak RSS {peak:.0f} MB  (< 150 MB: {verdict})")
        if "sigkill" in SCENARIOS:
            far = results.get("far", {})
            print()
            for tool in ("ours", "aria2c"):
                duration = far[tool].seconds if tool in far else SIZE / (16 * 20 * MiB)
                refetched, ok = sigkill_refetch(tool, nginx, nginx.url("far1"), work, duration / 2)
                print(
                    f"sigkill at ~50%  {tool:7} fetched twice: {refetched / MiB:8.1f} MiB "
                    f"({100 * refetched / SIZE:5.1f}% of the file)  {'ok' if ok else 'FAILED'}"
                )
    finally:
        nginx.stop()
        if not base:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2]))
    sys.exit(main())

"""End to end: the real daemon in a subprocess, real loopback HTTP mirrors, the real
inbox, the real control socket and the real acquirectl."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, write_config
from support.http_server import Fault, HttpTestServer
from support.manifests import manifest


def payload(n: int, seed: int = 1) -> bytes:
    """Deterministic incompressible-enough bytes, fast to make."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


@pytest.fixture
def server() -> HttpTestServer:
    with HttpTestServer() as s:
        yield s


def test_manifest_to_done_with_acquirectl(tmp_path: Path, server: HttpTestServer) -> None:
    big, small = payload(5_000_000, 1), payload(1234, 2)
    url_big = server.add("/big.bin", big)
    url_small = server.add("/small.bin", small)
    text = manifest(
        "demo",
        [
            {
                "path": "big.bin",
                "size": len(big),
                "sha256": hashlib.sha256(big).hexdigest(),
                "mirrors": [url_big],
            },
            {
                "path": "sub/small.bin",
                "md5": hashlib.md5(small).hexdigest(),
                "mirrors": [url_small],
            },
        ],
    )
    with DaemonProcess(tmp_path) as d:
        d.drop("demo.toml", text)
        job = d.wait_job("demo", "done")
        assert job["files_done"] == 2 and job["bytes_total"] is None  # one size unknown
        assert (d.data / "demo/big.bin").read_bytes() == big
        assert (d.data / "demo/sub/small.bin").read_bytes() == small
        assert not list(d.data.rglob("*.part"))
        assert not (d.inbox / "demo.toml").exists()  # moved into the state dir
        assert (d.state / "manifests/demo.toml").read_text() == text

        out = d.ctl("status")
        assert out.returncode == 0, out.stderr
        assert "demo" in out.stdout and "done" in out.stdout
        shown = json.loads(d.ctl("show", "demo", "--json", check=True).stdout)
        assert [f["state"] for f in shown["files"]] == ["done", "done"]
        assert shown["files"][0]["digests"]["sha256"] == hashlib.sha256(big).hexdigest()
        status = json.loads(d.ctl("status", "--json", check=True).stdout)
        assert status["counts"]["done"] == 2

        # The same manifest again, reformatted, is the same job: nothing is fetched again.
        served = server.bytes_served()
        d.drop("again.toml", text.replace(" = ", "="))
        d.wait_for(lambda: not (d.inbox / "again.toml").exists(), 10, "the duplicate to go")
        assert len(d.status()["jobs"]) == 1
        assert server.bytes_served() == served


def test_sigkill_at_half_resumes_without_refetching(tmp_path: Path, server: HttpTestServer) -> None:
    size = 200 * 1000 * 1000
    data = payload(size, 7)
    url = server.add("/large.bin", data)
    # Drip so that "half-way" lasts long enough to be caught; one connection per file.
    server.fault("/large.bin", Fault(rate=40e6), times=None)
    text = manifest(
        "large",
        [
            {
                "path": "large.bin",
                "size": size,
                "sha256": hashlib.sha256(data).hexdigest(),
                "mirrors": [url],
            }
        ],
    )
    d = DaemonProcess(tmp_path, http={"connections_per_file": 1, "checkpoint_interval": 0.25})
    d.start()
    try:
        d.drop("large.toml", text)
        d.wait_for(
            lambda: (j := d.job("large")) and j["bytes_done"] >= size // 2, 60, "half of the file"
        )
        d.kill(signal.SIGKILL)
        half = server.bytes_served("/large.bin")
        assert half < size
        d.start()
        d.wait_job("large", "done", timeout=120)
    finally:
        d.stop()
    assert (
        hashlib.sha256((d.data / "large/large.bin").read_bytes()).hexdigest()
        == hashlib.sha256(data).hexdigest()
    )
    served = server.bytes_served("/large.bin")
    print(f"served {served} bytes for {size} ({served / size:.3f}x), {half} before the kill")
    assert served < 1.1 * size
    # The restart asked for the rest with the validator it first saw.
    resumed = [r for r in server.requests_for("/large.bin") if r.range and r.range != "bytes=0-"]
    assert resumed and resumed[-1].if_range is not None


def raw(
    name: str,
    *,
    version: int = 1,
    destination: str | None = None,
    lines: tuple[str, ...] = ('path = "a"',),
    mirror: str = "http://127.0.0.1:1/a",
    extra: str = "",
) -> str:
    """A manifest written by hand, so that it can be wrong in any one place."""
    return (
        f'manifest_version = {version}\nname = "{name}"\ndestination = "{destination or name}"\n'
        f"[[files]]\n" + "\n".join(lines) + f'\nsources.mirrors = ["{mirror}"]\n{extra}'
    )


# manifest file name -> (text, what its reason must name besides the file)
BROKEN = {
    "syntax.toml": ('manifest_version = 1\nname = "x\nfiles = [', "line"),
    "version.toml": (raw("v", version=2), "manifest_version"),
    "escape.toml": (raw("e", destination="../outside"), "destination"),
    "abs.toml": (raw("a", lines=('path = "/etc/passwd"',)), "files[0].path"),
    "ftp.toml": (raw("f", mirror="ftp://127.0.0.1/a"), "files[0].sources.mirrors[0]"),
    "digest.toml": (raw("d", lines=('path = "a"', 'sha256 = "abc"')), "files[0].sha256"),
    "unknown.toml": (raw("u", lines=('path = "a"', 'sha265 = "00"')), "sha265"),
    "dup.toml": (
        raw("p", extra='[[files]]\npath = "a"\nsources.mirrors = ["http://127.0.0.1:1/b"]\n'),
        "files[1].path",
    ),
    "negative.toml": (raw("n", lines=('path = "a"', "size = -1")), "files[0].size"),
    "binary.toml": ("\x00\x01\x02garbage", ""),
    "symlink.toml": (raw("s", destination="link/outside"), "destination"),
}


def test_broken_manifests_are_rejected_with_reasons(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    with DaemonProcess(tmp_path) as d:
        # A symlink inside the data root that points out of it.
        d.data.mkdir(parents=True, exist_ok=True)
        (d.data / "link").symlink_to(tmp_path)
        cases = BROKEN
        for name, (text, _) in cases.items():
            d.drop(name, text)
        rejected = d.inbox / "rejected"
        for name, (_, field) in cases.items():
            reason = d.wait_for(
                lambda n=name: (
                    (rejected / f"{n}.error.txt").exists()
                    and (rejected / f"{n}.error.txt").read_text()
                ),
                20,
                f"{name} to be rejected",
            )
            assert (rejected / name).exists()
            assert name in reason, reason  # names the manifest file
            assert field in reason, (name, reason)  # and the field
            assert "What to do" in reason
        assert d.call({"cmd": "ping"})  # still running
        assert d.status()["jobs"] == []
    assert not outside.exists()


def test_conflicting_manifest_needs_replace(tmp_path: Path, server: HttpTestServer) -> None:
    # 15 s at 100 kB/s keeps the job active while acquirectl starts, even on a busy machine.
    a, b = payload(1_500_000, 3), payload(400_000, 4)
    ua, ub = server.add("/a", a), server.add("/b", b)
    server.fault("/a", Fault(rate=100_000), times=None)
    first = manifest(
        "conf", [{"path": "a", "sha256": hashlib.sha256(a).hexdigest(), "mirrors": [ua]}]
    )
    second = manifest(
        "conf",
        [
            {"path": "a", "sha256": hashlib.sha256(a).hexdigest(), "mirrors": [ua]},
            {"path": "b", "sha256": hashlib.sha256(b).hexdigest(), "mirrors": [ub]},
        ],
    )
    with DaemonProcess(tmp_path) as d:
        d.drop("conf.toml", first)
        d.wait_job("conf", "fetching")
        d.drop("conf2.toml", second)
        reason = d.wait_for(
            lambda: (p := d.inbox / "rejected/conf2.toml.error.txt").exists() and p.read_text(),
            20,
            "the conflicting manifest to be rejected",
        )
        assert "--replace" in reason and "conf" in reason
        (tmp_path / "second.toml").write_text(second)
        out = d.ctl("add", str(tmp_path / "second.toml"))
        assert out.returncode == 1 and "--replace" in out.stderr
        server.clear_faults("/a")
        out = d.ctl("add", "--replace", str(tmp_path / "second.toml"))
        assert out.returncode == 0, out.stderr
        assert "replaced" in out.stdout
        job = d.wait_job("conf", "done")
        assert job["files_total"] == 2
        assert (d.data / "conf/b").read_bytes() == b


def test_pause_resume_cancel_retry(tmp_path: Path, server: HttpTestServer) -> None:
    data = payload(2_000_000, 5)
    url = server.add("/p.bin", data)
    server.fault("/p.bin", Fault(rate=200_000), times=None)
    text = manifest(
        "pr",
        [
            {
                "path": "p.bin",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "mirrors": [url],
            }
        ],
    )
    with DaemonProcess(tmp_path, http={"connections_per_file": 1, "checkpoint_interval": 0.2}) as d:
        d.drop("pr.toml", text)
        d.wait_for(lambda: (j := d.job("pr")) and j["bytes_done"] > 100_000, 30, "progress")
        assert d.ctl("pause", "pr").returncode == 0
        paused = d.wait_job("pr", "paused")
        assert paused["bytes_done"] > 0
        assert d.ctl("cancel", "pr").returncode == 0
        d.wait_job("pr", "cancelled")
        served_before_retry = server.bytes_served("/p.bin")
        server.clear_faults("/p.bin")
        assert d.ctl("retry", "pr").returncode == 0
        d.wait_job("pr", "done")
        assert (d.data / "pr/p.bin").read_bytes() == data
        # Progress was kept through pause and cancel: the retry fetched only the rest.
        refetched = server.bytes_served("/p.bin") - served_before_retry
        assert refetched < len(data)
        out = d.ctl("pause", "nosuchjob")
        assert out.returncode == 1 and "nosuchjob" in out.stderr and "hint" in out.stderr


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_digest_mismatch_fails_with_expected_and_actual(
    tmp_path: Path, server: HttpTestServer, algorithm: str
) -> None:
    data = payload(100_000, 6)
    url = server.add("/m.bin", data)
    wrong = "0" * len(hashlib.new(algorithm).hexdigest())
    text = manifest("mm", [{"path": "m.bin", algorithm: wrong, "mirrors": [url]}])
    with DaemonProcess(tmp_path) as d:
        d.call({"cmd": "add", "name": "mm.toml", "text": text})
        d.wait_for(
            lambda: d.job("mm") and d.job("mm")["state"] in ("queued", "failed"), 30, "the mismatch"
        )
        shown = d.call({"cmd": "show", "job": "mm"})
        f = shown["files"][0]
        err = f["error"]
        # The first retry waits a random 0-5 s (full jitter): when it is short, the second
        # identical result may already have failed the file as a wrong manifest checksum.
        assert err["code"] in ("verify.digest_mismatch", "manifest.checksum_likely_wrong"), f
        assert err["details"]["expected"] == wrong
        assert err["details"]["algorithm"] == algorithm
        assert err["details"]["actual"] == hashlib.new(algorithm, data).hexdigest()
        assert not (d.data / "mm/m.bin").exists()  # never renamed into place


def test_control_socket_permissions_and_not_running(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path) as d:
        mode = stat.S_IMODE(os.stat(d.socket).st_mode)
        assert mode & 0o007 == 0, oct(mode)  # not world-accessible
        assert stat.S_ISSOCK(os.stat(d.socket).st_mode)
    out = subprocess.run(
        [sys.executable, "-m", "acquired.daemon.cli", "--socket", str(d.socket), "status"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "not running" in out.stderr and "hint" in out.stderr


def test_sigterm_stops_promptly_and_resumes(tmp_path: Path, server: HttpTestServer) -> None:
    data = payload(3_000_000, 8)
    url = server.add("/t.bin", data)
    server.fault("/t.bin", Fault(rate=300_000), times=1)
    text = manifest(
        "term",
        [
            {
                "path": "t.bin",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "mirrors": [url],
            }
        ],
    )
    d = DaemonProcess(tmp_path, http={"connections_per_file": 1, "checkpoint_interval": 0.2})
    d.start()
    try:
        d.drop("term.toml", text)
        d.wait_for(lambda: (j := d.job("term")) and j["bytes_done"] > 200_000, 30, "progress")
        assert d.kill(signal.SIGTERM) == 0
        assert not d.socket.exists()
        d.start()
        d.wait_job("term", "done")
    finally:
        d.stop()
    assert (d.data / "term/t.bin").read_bytes() == data
    assert server.bytes_served("/t.bin") < 1.5 * len(data)


def test_sighup_reloads_and_bad_config_keeps_old(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path) as d:
        assert d.proc is not None
        d.config["max_concurrent_files"] = 2
        write_config(d.config_path, d.config)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda: "configuration reloaded" in d.log(), 10, "the reload")
        d.config_path.write_text("max_concurrent_files = 0\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda: "configuration not reloaded" in d.log(), 10, "the refusal")
        assert "max_concurrent_files" in d.log()
        assert d.call({"cmd": "ping"})


def test_metrics_endpoint_counts_what_the_daemon_did(
    tmp_path: Path, server: HttpTestServer
) -> None:
    import re
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = payload(3_000_000, 9)
    url = server.add("/m.bin", data)
    text = manifest(
        "met", [{"path": "m.bin", "sha256": hashlib.sha256(data).hexdigest(), "mirrors": [url]}]
    )
    with DaemonProcess(tmp_path, metrics={"listen": f"127.0.0.1:{port}"}) as d:
        d.drop("met.toml", text)
        d.wait_job("met", "done")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        # Gauges follow the status tick (every 2 s); counters move at once.
        body = d.wait_for(lambda: 'acquired_files{state="done"} 1.0' in (t := scrape()) and t, 10)
        got = re.search(r'acquired_bytes_total\{source="http"\} (\S+)', body)
        assert got is not None and float(got.group(1)) >= len(data), body
        assert f"metrics on http://127.0.0.1:{port}/metrics" in d.log()
        assert "not started" not in d.log()


def test_a_signal_during_start_up_does_not_kill_the_daemon(tmp_path: Path) -> None:
    """SIGHUP the moment the control socket exists (before the daemon says it is ready):
    the daemon must have its handlers by then, not die of the default action."""
    d = DaemonProcess(tmp_path)
    d.root.mkdir(parents=True, exist_ok=True)
    write_config(d.config_path, d.config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "acquired.daemon.main", "--config", str(d.config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=d.env,
    )
    d.proc = proc
    try:
        deadline = time.monotonic() + 20
        while not d.socket.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda: d._pingable(), 20, "the daemon to answer after the early SIGHUP")
        assert proc.poll() is None
    finally:
        d.stop()
    assert proc.returncode == 0

"""Every tick of the state thread is guarded: one file that cannot start fails alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from support.daemon import DaemonProcess
from support.http_server import HttpTestServer


def _manifest(files: dict[str, tuple[bytes, str]]) -> str:
    lines = ["manifest_version = 1", 'name = "mixed"', 'destination = "mixed"']
    for path, (data, url) in files.items():
        lines += [
            "\n[[files]]",
            f'path = "{path}"',
            f"size = {len(data)}",
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"',
            f"sources.mirrors = {json.dumps([url])}",
        ]
    return "\n".join(lines) + "\n"


def failures(d: DaemonProcess) -> list[dict[str, object]]:
    events = d.call({"cmd": "show", "job": "mixed"})["events"]
    return [e for e in events if e["code"] == "os.error" and e["level"] == "error"]


def test_a_file_whose_folder_cannot_be_created_fails_alone(tmp_path: Path) -> None:
    good = {f"ok{i}.bin": bytes([i]) * (20_000 + i) for i in range(3)}
    bad = b"x" * 1000
    with HttpTestServer() as server:
        files = {name: (data, server.add(f"/{name}", data)) for name, data in good.items()}
        files["blocked/bad.bin"] = (bad, server.add("/bad.bin", bad))
        d = DaemonProcess(tmp_path, max_concurrent_files=2)
        # A plain file where the folder of one file must go: creating it fails.
        (d.data / "mixed").mkdir(parents=True)
        (d.data / "mixed/blocked").write_text("in the way")
        with d:
            d.drop("mixed.toml", _manifest(files))
            job = d.wait_job("mixed", "failed")
            assert job["files_done"] == 3
            for name, data in good.items():
                assert (d.data / "mixed" / name).read_bytes() == data
            shown = d.call({"cmd": "show", "job": "mixed"})
            states = {f["path"]: f["state"] for f in shown["files"]}
            assert states["blocked/bad.bin"] == "failed"
            error = next(f["error"] for f in shown["files"] if f["path"] == "blocked/bad.bin")
            assert error["code"] == "os.error" and error["hint"]
            assert d.call({"cmd": "ping"})["pid"] == d.proc.pid  # type: ignore[union-attr]
        # A restart with the failed row, then a retry of it: the daemon stays up.
        with d:
            assert d.job("mixed")["state"] == "failed"  # type: ignore[index]
            out = d.ctl("retry", "mixed")
            assert out.returncode == 0, out.stderr
            d.wait_for(
                lambda: len(failures(d)) >= 2 and d.job("mixed")["state"] == "failed",  # type: ignore[index]
                30,
                "the retried file to fail again",
            )
            assert d.call({"cmd": "status"})["counts"]["done"] == 3
        assert "Traceback" not in d.log()

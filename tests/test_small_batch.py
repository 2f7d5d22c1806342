"""The small-file runner through a real daemon and a loopback server with faults:
thousands of files in place with the right bytes, one bad file in a flush failing or
retrying alone, and a kill -9 mid-flush losing no file already shown done."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from support.daemon import DaemonProcess
from support.http_server import Fault, HttpTestServer

RUNNER_LINE = "small-file runner:"


def blobs(n: int, seed: int, low: int = 512, high: int = 6000) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        f"d{i // 500:02d}/s{i:05d}.bin": i.to_bytes(4, "little")
        + rng.randbytes(rng.randint(low, high))
        for i in range(n)
    }


def entry(
    server: HttpTestServer, name: str, data: bytes, sha256: str | None = None
) -> dict[str, Any]:
    return {
        "path": name,
        "size": len(data),
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "sources": {"mirrors": [server.add(f"/{name}", data)]},
    }


def job_text(name: str, files: list[dict[str, Any]]) -> str:
    return json.dumps({"manifest_version": 1, "name": name, "destination": name, "files": files})


def states(d: DaemonProcess, job: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in d.call({"cmd": "show", "job": job})["files"]}


def test_thousands_of_small_files_in_place_with_their_bytes(tmp_path: Path) -> None:
    data = blobs(2000, seed=1)
    with HttpTestServer() as server:
        files = [entry(server, name, body) for name, body in data.items()]
        with DaemonProcess(tmp_path) as d:
            d.drop("many.json", job_text("many", files))
            job = d.wait_job("many", "done", timeout=240)
            assert job["files_done"] == len(data)
            for name, body in data.items():
                assert (d.data / "many" / name).read_bytes() == body
            leftovers = [p for p in (d.data / "many").rglob("*.part")]
            assert leftovers == []
            # They went through the small-file runner, many to a message.
            assert RUNNER_LINE in d.log()


def test_a_bad_digest_a_404_and_a_reset_in_one_flush_end_alone(tmp_path: Path) -> None:
    data = blobs(300, seed=2)
    names = list(data)
    bad, missing, reset = names[10], names[20], names[30]
    with HttpTestServer() as server:
        files = []
        for name, body in data.items():
            wrong = hashlib.sha256(b"other bytes").hexdigest() if name == bad else None
            files.append(entry(server, name, body, wrong))
        server.remove(f"/{missing}")
        # The first answer breaks off after a few bytes; the next one is whole.
        server.fault(f"/{reset}", Fault(reset_after=100), times=1)
        with DaemonProcess(tmp_path) as d:
            d.drop("mixed.json", job_text("mixed", files))
            d.wait_job("mixed", "failed", timeout=120)
            seen = states(d, "mixed")
            assert seen[bad]["state"] == "failed"
            assert seen[bad]["error"]["code"] == "manifest.checksum_likely_wrong"
            assert seen[missing]["state"] == "failed"
            assert seen[missing]["error"]["code"] == "http.not_found"
            assert not (d.data / "mixed" / bad).exists()
            assert not (d.data / "mixed" / missing).exists()
            for name, body in data.items():
                if name in (bad, missing):
                    continue
                assert seen[name]["state"] == "done", (name, seen[name])
                assert (d.data / "mixed" / name).read_bytes() == body
            assert RUNNER_LINE in d.log()
        assert len(server.requests_for(f"/{reset}")) >= 2


def test_kill_mid_flush_keeps_every_file_shown_done_and_resumes(tmp_path: Path) -> None:
    data = blobs(800, seed=3, low=2000, high=4000)
    root = tmp_path / "d"
    with HttpTestServer() as server:
        files = [entry(server, name, body) for name, body in data.items()]
        # Slow answers keep the job in flight long enough to stop it in the middle.
        for name in data:
            server.fault(f"/{name}", Fault(rate=4000), times=1)
        d = DaemonProcess(root).start()
        try:
            d.drop("slow.json", job_text("slow", files))
            d.wait_for(
                lambda: (job := d.job("slow")) is not None and job["files_done"] >= 40,
                120,
                "some files done",
            )
            done_before = {n for n, f in states(d, "slow").items() if f["state"] == "done"}
            assert len(done_before) < len(data)
            d.kill()
        finally:
            d.stop()
        server.clear_faults()
        # Every file shown done is in place, whole, right after the kill.
        for name in done_before:
            assert (d.data / "slow" / name).read_bytes() == data[name]
        with DaemonProcess(root) as again:
            again.wait_job("slow", "done", timeout=180)
            after = states(again, "slow")
            assert all(f["state"] == "done" for f in after.values())
            for name, body in data.items():
                assert (again.data / "slow" / name).read_bytes() == body
            assert [p for p in (again.data / "slow").rglob("*.part")] == []
            assert os.path.isdir(again.data / "slow")


def test_pause_stops_the_files_in_flight_and_resume_finishes_them(tmp_path: Path) -> None:
    data = blobs(400, seed=4, low=2000, high=4000)
    with HttpTestServer() as server:
        files = [entry(server, name, body) for name, body in data.items()]
        for name in data:
            server.fault(f"/{name}", Fault(rate=4000), times=1)
        with DaemonProcess(tmp_path) as d:
            d.drop("held.json", job_text("held", files))
            d.wait_for(
                lambda: (job := d.job("held")) is not None and job["files_done"] >= 20,
                120,
                "some files done",
            )
            assert d.ctl("pause", "held").returncode == 0
            d.wait_job("held", "paused", timeout=60)
            seen = states(d, "held")
            assert {f["state"] for f in seen.values()} <= {"done", "paused"}
            assert any(f["state"] == "paused" for f in seen.values())
            for name, f in seen.items():
                if f["state"] == "paused":
                    assert not (d.data / "held" / name).exists()
            server.clear_faults()
            assert d.ctl("resume", "held").returncode == 0
            d.wait_job("held", "done", timeout=120)
            for name, body in data.items():
                assert (d.data / "held" / name).read_bytes() == body

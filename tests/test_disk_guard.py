"""The disk guard on a real, small filesystem: a tmpfs mounted by the test (root only)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from support.daemon import DaemonProcess
from support.http_server import Blob, Fault, HttpTestServer, payload
from support.manifests import manifest

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs as the data root"
)


def fill(path: Path, nbytes: int) -> None:
    with path.open("wb") as f:
        f.write(b"\0" * nbytes)


def test_waits_for_space_then_completes(tmp_path: Path, small_fs: Path) -> None:
    data = payload(20 * MiB, 11)
    ballast = small_fs / "ballast"
    fill(ballast, 25 * MiB)  # leaves ~15 MiB: the 20 MiB file does not fit
    with HttpTestServer() as server:
        url = server.add("/f.bin", data)
        text = manifest(
            "dg",
            [
                {
                    "path": "f.bin",
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "mirrors": [url],
                }
            ],
        )
        with DaemonProcess(tmp_path, data_root=str(small_fs / "data"), disk_reserve="2MiB") as d:
            d.drop("dg.toml", text)
            job = d.wait_for(
                lambda: (
                    (j := d.job("dg")) and j["reason"] and "waiting for disk" in j["reason"] and j
                ),
                20,
                "the job to wait for disk",
            )
            assert "need 21.0 MB" in job["reason"]
            assert job["state"] == "queued"
            assert server.bytes_served() == 0  # it did not start
            ballast.unlink()
            d.wait_job("dg", "done")
        assert (small_fs / "data/dg/f.bin").read_bytes() == data


def test_full_disk_pauses_keeps_data_and_resumes(tmp_path: Path, small_fs: Path) -> None:
    """The size is unknown, so the file starts and runs into ENOSPC: it pauses with its
    data kept, and resumes from there when space returns."""
    data = payload(24 * MiB, 12)
    ballast = small_fs / "ballast"
    fill(ballast, 24 * MiB)  # ~16 MiB left: the 24 MiB file runs out of space
    with HttpTestServer() as server:
        server.add("/u.bin", Blob.of(data))
        server.fault("/u.bin", Fault(rate=8 * MiB), times=None)
        url = server.url("/u.bin")
        text = manifest(
            "full",
            [{"path": "u.bin", "sha256": hashlib.sha256(data).hexdigest(), "mirrors": [url]}],
        )
        config = {"data_root": str(small_fs / "data"), "disk_reserve": 0}
        with DaemonProcess(
            tmp_path, http={"connections_per_file": 1, "checkpoint_interval": 0.2}, **config
        ) as d:
            d.drop("full.toml", text)
            d.wait_job("full", "paused", timeout=30)
            shown = d.call({"cmd": "show", "job": "full"})
            f = shown["files"][0]
            assert "waiting for disk" in f["reason"], f
            part = small_fs / "data/full/u.bin.part"
            kept = part.stat().st_size
            assert kept > 0
            served_before = server.bytes_served("/u.bin")
            ballast.unlink()
            d.wait_job("full", "done", timeout=60)
        assert (
            hashlib.sha256((small_fs / "data/full/u.bin").read_bytes()).digest()
            == hashlib.sha256(data).digest()
        )
        # The resume asked for the rest, not the whole file again.
        assert server.bytes_served("/u.bin") - served_before < len(data)


def test_a_disk_wait_is_logged_when_it_starts_not_on_every_change(
    tmp_path: Path, small_fs: Path
) -> None:
    data = payload(20 * MiB, 12)
    pieces = [small_fs / f"ballast{i}" for i in range(25)]
    for piece in pieces:
        fill(piece, MiB)  # leaves ~15 MiB: the 20 MiB file does not fit
    with HttpTestServer() as server:
        url = server.add("/f.bin", data)
        entry = {
            "path": "f.bin",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "mirrors": [url],
        }
        with DaemonProcess(tmp_path, data_root=str(small_fs / "data"), disk_reserve="2MiB") as d:
            d.drop("dw.toml", manifest("dw", [entry]))
            seen = set()
            d.wait_for(
                lambda: (j := d.job("dw")) and "waiting for disk" in (j["reason"] or ""),
                20,
                "the job to wait for disk",
            )
            # Free space grows a MiB at a time, and the shown reason follows it ...
            for piece in pieces[:4]:
                piece.unlink()
                reason = d.wait_for(
                    lambda: (j := d.job("dw")) and j["reason"] not in seen and j["reason"],
                    20,
                    "the reason to show the new free space",
                )
                seen.add(reason)
            for piece in pieces[4:]:
                piece.unlink()
            d.wait_job("dw", "done")
            events = d.call({"cmd": "show", "job": "dw"})["events"]
    # ... but the log says it once when the wait starts, and once when it ends.
    waits = [e["message"] for e in events if "waiting for disk" in e["message"]]
    assert len(seen) == 4
    assert len(waits) == 1, waits
    assert any("space is there" in e["message"] for e in events)

"""A file that waits says why, through the daemon: behind the slot limit it names the
files already running."""

from __future__ import annotations

import hashlib
from pathlib import Path

from support.daemon import DaemonProcess
from support.http_server import Fault, HttpTestServer, payload
from support.manifests import manifest


def _one_file(name: str, url: str, data: bytes) -> str:
    entry = {
        "path": f"{name}.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "mirrors": [url],
    }
    return manifest(name, [entry])


def test_a_job_behind_the_slot_limit_says_what_it_waits_for(tmp_path: Path) -> None:
    # Over 1 MiB: these files use the general slots, not the small-file lane.
    big = payload(3_000_000, 1)
    other = payload(3_000_000, 2)
    with HttpTestServer() as server:
        url = server.add("/big.bin", big)
        other_url = server.add("/other.bin", other)
        server.fault("/big.bin", Fault(rate=200_000), times=None)
        with DaemonProcess(tmp_path, max_concurrent_files=1) as d:
            d.drop("first.toml", _one_file("first", url, big))
            d.wait_for(lambda: (j := d.job("first")) and j["state"] == "fetching", 30, "first")
            d.drop("second.toml", _one_file("second", other_url, other))
            job = d.wait_for(
                lambda: (j := d.job("second")) and j["reason"] and j, 30, "a reason for second"
            )
            assert job["state"] == "queued"
            assert job["reason"] == "queued: 1 file already running"
            server.clear_faults("/big.bin")
            d.wait_job("second", "done")

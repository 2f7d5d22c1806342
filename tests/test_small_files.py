"""Many small files: fetched in the small-file lane, summed up in job-level events."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from support.daemon import DaemonProcess
from support.http_server import HttpTestServer


def test_small_files_are_summed_up_per_job(tmp_path: Path) -> None:
    blobs = {
        f"s{i:03d}.bin": hashlib.sha256(str(i).encode()).digest() * (40 + i) for i in range(120)
    }
    with HttpTestServer() as server:
        files = [
            {
                "path": name,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "sources": {"mirrors": [server.add(f"/{name}", data)]},
            }
            for name, data in blobs.items()
        ]
        text = json.dumps(
            {"manifest_version": 1, "name": "many", "destination": "many", "files": files}
        )
        with DaemonProcess(tmp_path) as d:
            d.drop("many.json", text)
            d.wait_job("many", "done", timeout=120)
            for name, data in blobs.items():
                assert (d.data / "many" / name).read_bytes() == data
            # The summary comes at most every 10 s; it is there once the job is done
            # and a summary period has passed.
            d.wait_for(
                lambda: any(
                    "small file(s) done" in e["message"]
                    for e in d.call({"cmd": "show", "job": "many"})["events"]
                ),
                30,
                "the job-level event for the small files",
            )
            events = d.call({"cmd": "show", "job": "many"})["events"]
            summed = sum(
                int(e["message"].split()[0]) for e in events if "small file(s) done" in e["message"]
            )
            assert summed == len(blobs)
            assert not [e for e in events if e["message"].startswith("done (")]
            assert not [e for e in events if e["message"].startswith("fetching from")]

"""A manifest of 100,000 files is taken in off the state thread: while it goes in, the
control socket keeps answering and the watchdog keeps being pinged."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from support.daemon import DaemonProcess
from support.notify_socket import NotifySocket

from acquired.daemon.control import request

FILES = 100_000


def big_manifest(n: int) -> str:
    digest = "ab" * 32
    files = [
        {
            "path": f"d{i // 1000:03d}/f{i:06d}.bin",
            "size": 10,
            "sha256": digest,
            "sources": {"mirrors": [f"http://127.0.0.1:9/f{i}.bin"]},
        }
        for i in range(n)
    ]
    return json.dumps({"manifest_version": 1, "name": "big", "destination": "big", "files": files})


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def test_intake_of_100000_files_keeps_the_daemon_responsive(tmp_path: Path) -> None:
    text = big_manifest(FILES)
    with NotifySocket() as notify:
        # A reserve larger than any disk: no file starts, only the intake is measured.
        daemon = DaemonProcess(
            tmp_path, env={**notify.env(), "WATCHDOG_USEC": "3000000"}, disk_reserve="1000TiB"
        )
        with daemon as d:
            assert d.proc is not None
            notify.wait_for("WATCHDOG", "1", timeout=30)
            t0 = time.monotonic()
            d.drop("big.json", text)
            answers: list[tuple[float, str]] = []
            total, accepted = 0, 0.0
            while total < FILES:
                asked = time.monotonic()
                status = request(d.socket, {"cmd": "status"}, timeout=30)
                job = next((j for j in status["jobs"] if j["id"] == "big"), None)
                phase = "parsing" if job is None else "filling"
                answers.append((time.monotonic() - asked, phase))
                if job is not None:
                    accepted = accepted or time.monotonic() - t0
                    total = job["files_total"]
                assert time.monotonic() - t0 < 300, "the intake did not finish"
                time.sleep(0.05)
            intake = time.monotonic() - t0
            pings = [m.received for m in notify.messages if m.fields.get("WATCHDOG") == "1"]
            during = [p for p in pings if p >= t0 - 3]
            gaps = [b - a for a, b in itertools.pairwise(during)]
            gaps.append(time.monotonic() - during[-1])
            rss, peak = rss_kib(d.proc.pid)
            worst, phase = max(answers)
            print(
                f"\n100,000-file manifest ({len(text) / 1e6:.1f} MB): intake {intake:.1f} s"
                f" (parsed off the state thread in {accepted:.1f} s, rows in"
                f" {intake - accepted:.1f} s); {len(answers)} status answers,"
                f" worst {worst * 1000:.0f} ms (while {phase});"
                f" worst watchdog gap {max(gaps):.2f} s; RSS {rss / 1024:.0f} MiB"
                f" (peak {peak / 1024:.0f} MiB)"
            )
            shown = d.call({"cmd": "show", "job": "big"})
            assert shown["files_total"] == FILES
            # Generous bounds only: the machine may be shared.
            assert worst < 5.0
            assert max(gaps) < 10.0

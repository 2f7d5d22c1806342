"""The status screen: golden text on fixed snapshots, and ``top`` against a real daemon."""

from __future__ import annotations

import copy
import io
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from acquired.daemon.tui import render_status, render_unreachable
from acquired.daemon.units import format_duration

SNAPSHOT: dict[str, Any] = {
    "daemon": {
        "version": "0.1.0",
        "pid": 812,
        "uptime": 3725.0,
        "data_root": "/srv/acquired/data",
        "disk_free": 91_200_000_000,
        "disk_reserve": 1_073_741_824,
        "dht_nodes": 312,
    },
    "counts": {"active": 2, "queued": 1, "done": 12, "failed": 1, "paused": 0},
    "jobs": [
        {
            "id": "cifar10",
            "state": "fetching",
            "files_total": 1,
            "files_done": 0,
            "bytes_total": 170498071,
            "bytes_done": 70_000_000,
            "speed": 1.5e6,
            "eta": 67.0,
            "source": "http",
            "reason": None,
        },
        {
            "id": "imagenet-val",
            "state": "failed",
            "files_total": 2,
            "files_done": 1,
            "bytes_total": 6_744_924_160,
            "bytes_done": 6_400_000_000,
            "speed": 0,
            "eta": None,
            "source": None,
            "reason": "verify.digest_mismatch: sha256 differs",
        },
    ],
    "active": [
        {
            "job": "cifar10",
            "file": "cifar-10-python.tar.gz",
            "state": "fetching",
            "bytes_total": 170498071,
            "bytes_done": 70_000_000,
            "speed": 1.5e6,
            "eta": 67.0,
            "source": "http 2 mirrors",
            "detail": "",
            "step": None,
        },
        {
            "job": "lsun",
            "file": "church_outdoor_train_lmdb.zip",
            "state": "fetching",
            "bytes_total": None,
            "bytes_done": 1_600_000,
            "speed": 1.6e6,
            "eta": None,
            "source": "torrent 14 peers (3 seeds)",
            "detail": "",
            "step": None,
        },
    ],
    "events": [
        {
            "ts": 1700000000.0,
            "level": "info",
            "job": "cifar10",
            "file": None,
            "message": "job added from cifar10.toml",
        },
        {
            "ts": 1700000060.0,
            "level": "error",
            "job": "imagenet-val",
            "file": "ILSVRC2012_img_val.tar",
            "message": "sha256 mismatch",
        },
    ],
}

EMPTY: dict[str, Any] = {
    "daemon": {
        "version": "0.1.0",
        "pid": 7,
        "uptime": 12.0,
        "data_root": "/d",
        "disk_free": None,
        "disk_reserve": 0,
        "dht_nodes": None,
    },
    "counts": {"active": 0, "queued": 0, "done": 0, "failed": 0, "paused": 0},
    "jobs": [],
    "active": [],
    "events": [],
}


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def text_of(renderable: Any, width: int) -> str:
    console = Console(width=width, color_system=None, record=True, file=io.StringIO())
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


GOLDEN_100 = """\
acquired 0.1.0 · pid 812 · up 1h02m · data /srv/acquired/data
jobs 2: 1 active · 1 failed
files: 2 active · 3.1 MB/s · 1 queued · 12 done · 1 failed
disk 91.2 GB free (reserve 1.1 GB) · DHT 312 nodes
transfers ──────────────────────────────────────────────────────────────────────────────────────────
file                        progress             %          bytes     speed    ETA  source
cifar10/cifar-10-python.t…  ━━━━━━╸            41%  70.0/170.5 MB  1.5 MB/s  1m07s  http 2 mirrors
lsun/church_outdoor_train…                                 1.6 MB  1.6 MB/s      -  torrent 14 peer…
jobs ───────────────────────────────────────────────────────────────────────────────────────────────
job                   state     files          bytes     speed    ETA  source / note
cifar10               fetching    0/1  70.0/170.5 MB  1.5 MB/s  1m07s  http
imagenet-val          failed      1/2     6.4/6.7 GB         -      -  verify.digest_mismatch: sha2…
recent events ──────────────────────────────────────────────────────────────────────────────────────
22:13:20 info    cifar10  job added from cifar10.toml
22:14:20 error   imagenet-val/ILSVRC2012_img_val.tar  sha256 mismatch"""

GOLDEN_64 = """\
acquired 0.1.0 · pid 812 · up 1h02m · data /srv/acquired/data
jobs 2: 1 active · 1 failed
files: 2 active · 3.1 MB/s · 1 queued · 12 done · 1 failed
disk 91.2 GB free (reserve 1.1 GB) · DHT 312 nodes
transfers ──────────────────────────────────────────────────────
file                %          bytes     speed    ETA  source
cifar10/cifar-…   41%  70.0/170.5 MB  1.5 MB/s  1m07s  http 2 m…
lsun/church_ou…               1.6 MB  1.6 MB/s      -  torrent …
jobs ───────────────────────────────────────────────────────────
job           state     files          bytes  source / note
cifar10       fetching    0/1  70.0/170.5 MB  http
imagenet-val  failed      1/2     6.4/6.7 GB  verify.digest_mis…
recent events ──────────────────────────────────────────────────
22:13:20 info    cifar10  job added from cifar10.toml
22:14:20 error   imagenet-val/ILSVRC2012_img_val.tar  sha256 mi…"""

GOLDEN_EMPTY = """\
acquired 0.1.0 · pid 7 · up 12s · data /d
jobs 0
files: 0 active · 0 B/s · 0 done · 0 failed
transfers ──────────────────────────────────────────────────────────────────────
no active transfers"""


def test_golden_wide() -> None:
    assert text_of(render_status(SNAPSHOT), 100) == GOLDEN_100


def test_golden_narrow_drops_the_bar_column() -> None:
    assert text_of(render_status(SNAPSHOT), 64) == GOLDEN_64


def test_golden_idle_daemon() -> None:
    assert text_of(render_status(EMPTY), 80) == GOLDEN_EMPTY


def test_every_width_fits() -> None:
    for width in (40, 60, 80, 120, 200):
        for line in text_of(render_status(SNAPSHOT), width).splitlines():
            assert len(line) <= width, (width, line)


def test_disk_low_and_full_are_words() -> None:
    snap = copy.deepcopy(SNAPSHOT)
    snap["daemon"] |= {"disk_free": 1_500_000_000, "disk_reserve": 1_000_000_000}
    assert "disk 1.5 GB free (reserve 1.0 GB) LOW · DHT 312 nodes" in text_of(
        render_status(snap), 100
    )
    snap["daemon"]["disk_free"] = 900_000_000
    assert "disk 900.0 MB free (reserve 1.0 GB) FULL: downloads wait for space" in text_of(
        render_status(snap), 120
    )


def test_state_and_step_shown_for_non_fetching_files() -> None:
    snap = copy.deepcopy(SNAPSHOT)
    snap["active"] = [
        {
            "job": "mnist",
            "file": "train.gz",
            "state": "unpacking",
            "bytes_total": 100,
            "bytes_done": 100,
            "speed": 0,
            "eta": None,
            "source": None,
            "detail": "12 of 60000 entries",
            "step": "1/2",
        }
    ]
    out = text_of(render_status(snap), 160)
    row = next(line for line in out.splitlines() if line.startswith("mnist/train.gz"))
    assert re.search(r"100%\s+100/100 B\s+-\s+-\s+unpacking 1/2 · 12 of 60000 entries$", row), row


def _job(i: int, state: str) -> dict[str, Any]:
    return {"id": f"job{i:02d}", "state": state, "files_total": 1, "files_done": 1}


def test_unfinished_and_recent_jobs_first_all_with_all() -> None:
    snap = copy.deepcopy(EMPTY)
    # oldest first, as the daemon lists them: 18 finished, then two just added
    snap["jobs"] = [_job(i, "failed" if i == 3 else "done") for i in range(18)]
    snap["jobs"] += [_job(18, "queued"), _job(19, "fetching")]
    out = text_of(render_status(snap), 80)
    rows = [line.split()[0] for line in out.splitlines() if re.match(r"job\d\d ", line)]
    assert rows[:4] == ["job19", "job18", "job03", "job17"], out
    assert len(rows) == 12 and "job06" not in rows
    assert "… 8 more (--all)" in out
    assert "jobs 20: 1 active · 1 queued · 1 failed · 17 done" in out
    everything = text_of(render_status(snap, all_jobs=True), 80)
    assert all(f"job{i:02d} " in everything for i in range(20))
    assert "more (--all)" not in everything


def test_unreachable_keeps_the_last_picture() -> None:
    out = text_of(render_unreachable("/run/acquired/acquired.sock", "gone", 1700000000.0), 100)
    assert out == (
        "daemon not reachable at /run/acquired/acquired.sock since 22:13:20, retrying: gone"
    )
    out = text_of(render_unreachable("/s", "gone", 1700000000.0, SNAPSHOT), 100)
    first, *rest = out.splitlines()
    assert first == "daemon not reachable at /s since 22:13:20, retrying: gone"
    assert "\n".join(rest) == GOLDEN_100


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-1, "-"),
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (86399, "23h59m"),
        (90000, "1d01h"),
    ],
)
def test_human_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_seeding_torrents_show_ratio_and_peers() -> None:
    snap = {
        **EMPTY,
        "seeding": [{"key": "k", "job": "imagenet", "ratio": 0.42, "peers": 3, "upload": 1.2e6}],
    }
    out = text_of(render_status(snap), 80)
    assert "seeding" in out
    assert "imagenet  ratio 0.42 · 3 peers · up 1.2 MB/s" in out

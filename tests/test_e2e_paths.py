"""Through the running daemon: a folder of the destination swapped for a link while a job
is paused, a completed copy placed into a swapped destination, a failed file's leftovers.
Nothing is written outside the destination (a neighbouring dataset is snapshotted)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from support.archives import tar_gz_bytes as tar_gz
from support.daemon import DaemonProcess
from support.fstree import snapshot
from support.http_server import Fault, HttpTestServer, payload


def manifest(job: str, path: str, url: str, data: bytes, unpack: str = "") -> str:
    return f"""
manifest_version = 1
name = "{job}"
destination = "{job}"

[[files]]
path = "{path}"
size = {len(data)}
sha256 = "{hashlib.sha256(data).hexdigest()}"
sources.mirrors = ["{url}"]
{unpack}
"""


def neighbour(d: DaemonProcess) -> Path:
    folder = d.data / "neighbour"
    (folder / "train").mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("another dataset")
    return folder


def error_of(d: DaemonProcess, job: str) -> dict[str, object]:
    show = d.call({"cmd": "show", "job": job})
    error: dict[str, object] = show["files"][0]["error"]
    return error


def test_unpack_target_swapped_for_a_link_while_paused(tmp_path: Path) -> None:
    archive = tar_gz({"img/a.bin": payload(300_000, 1), "img/b.bin": payload(300_000, 2)})
    with HttpTestServer() as server:
        url = server.add("/t.tar.gz", archive)
        server.fault("/t.tar.gz", Fault(rate=100_000), times=None)
        unpack = 'unpack = [{ format = "tar.gz", into = "train" }]'
        with DaemonProcess(
            tmp_path / "d", http={"connections_per_file": 1, "checkpoint_interval": 0.2}
        ) as d:
            other = neighbour(d)
            before = snapshot(other)
            d.drop("sw.toml", manifest("sw", "t.tar.gz", url, archive, unpack))
            d.wait_for(lambda: (j := d.job("sw")) and j["bytes_done"] > 50_000, 30, "progress")
            assert d.ctl("pause", "sw").returncode == 0
            d.wait_job("sw", "paused")
            # The accepted job's folder gets a link where the archive is to be extracted.
            os.symlink("../neighbour/train", d.data / "sw" / "train")
            server.clear_faults("/t.tar.gz")
            assert d.ctl("resume", "sw").returncode == 0
            d.wait_job("sw", "failed")
            error = error_of(d, "sw")
            assert error["code"] == "path.escapes_destination", error
            assert "train" in str(error["message"]) and error["hint"]
            assert d.status()["daemon"]["pid"]
            assert snapshot(other) == before


def test_watched_copy_into_a_swapped_destination_is_refused(tmp_path: Path) -> None:
    data = payload(400_000, 3)
    watched = tmp_path / "complete"
    watched.mkdir()
    with HttpTestServer() as server:
        url = server.add("/w.bin", data)
        server.fault("/w.bin", Fault(stall_after=1000), times=None)
        with DaemonProcess(
            tmp_path / "d",
            http={"connections_per_file": 1},
            unpack={"watch_dirs": [str(watched)]},
        ) as d:
            other = neighbour(d)
            d.drop("wd.toml", manifest("wd", "w.bin", url, data))
            d.wait_for(lambda: (j := d.job("wd")) and j["state"] == "fetching", 30, "fetching")
            assert d.ctl("pause", "wd").returncode == 0
            d.wait_job("wd", "paused")
            # The destination itself becomes a link to the neighbouring dataset.
            shutil.rmtree(d.data / "wd")
            os.symlink("neighbour", d.data / "wd")
            before = snapshot(other)
            (tmp_path / "w.bin").write_bytes(data)
            os.rename(tmp_path / "w.bin", watched / "w.bin")
            d.wait_job("wd", "failed")
            assert error_of(d, "wd")["code"] == "path.escapes_destination"
            assert snapshot(other) == before


def test_a_failed_file_leaves_no_empty_part(tmp_path: Path) -> None:
    data = payload(10_000, 4)
    with HttpTestServer() as server:
        url = server.add("/gone.bin", data)
        server.fault("/gone.bin", Fault(status=404), times=None)
        with DaemonProcess(tmp_path / "d", http={"max_tries": 1}) as d:
            d.drop("gone.toml", manifest("gone", "sub/gone.bin", url, data))
            d.wait_job("gone", "failed")
            leftovers = [p.name for p in (d.data / "gone").rglob("*") if p.is_file()]
            assert leftovers == []


def test_download_folder_swapped_for_a_link_while_paused(tmp_path: Path) -> None:
    # The .part and the final rename are opened beneath the data root: a folder of the
    # destination replaced by a link while the download is paused sends nothing outside.
    data = payload(2_000_000, 5)
    with HttpTestServer() as server:
        url = server.add("/big.bin", data)
        server.fault("/big.bin", Fault(rate=100_000), times=None)
        with DaemonProcess(
            tmp_path / "d", http={"connections_per_file": 1, "checkpoint_interval": 0.2}
        ) as d:
            other = neighbour(d)
            d.drop("dl.toml", manifest("dl", "sub/big.bin", url, data))
            d.wait_for(lambda: (j := d.job("dl")) and j["bytes_done"] > 50_000, 30, "progress")
            assert d.ctl("pause", "dl").returncode == 0
            d.wait_job("dl", "paused")
            shutil.rmtree(d.data / "dl" / "sub")
            os.symlink("../neighbour/train", d.data / "dl" / "sub")
            before = snapshot(other)
            server.clear_faults("/big.bin")
            assert d.ctl("resume", "dl").returncode == 0
            d.wait_job("dl", "failed")
            error = error_of(d, "dl")
            assert str(error["code"]).startswith("path."), error
            assert "sub" in str(error["message"]) and error["hint"]
            assert snapshot(other) == before
            assert not (other / "train" / "big.bin").exists()
            assert d.status()["daemon"]["pid"]

"""The daemon with torrent sources: a real libtorrent seeder, tracker-free peer hints, a
fake Academic Torrents endpoint and loopback HTTP mirrors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import DaemonProcess
from support.http_server import Fault, HttpTestServer
from support.torrent_swarm import AcademicTorrents, Seeder, make_torrent, write_files

MB = 1 << 20


@pytest.fixture
def seeder() -> Iterator[Seeder]:
    s = Seeder()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def academic() -> Iterator[AcademicTorrents]:
    at = AcademicTorrents()
    try:
        yield at
    finally:
        at.close()


def toml_list(values: list[str]) -> str:
    return json.dumps(values)


def test_academic_torrents_infohash_to_done(
    tmp_path: Path, seeder: Seeder, academic: AcademicTorrents
) -> None:
    data = write_files(tmp_path / "seed", {"set.bin": 3 * MB})["set.bin"]
    torrent = make_torrent(tmp_path / "seed" / "set.bin")
    infohash = academic.publish(torrent)
    seeder.seed(torrent, tmp_path / "seed")
    text = f"""
manifest_version = 1
name = "at"
destination = "at"

[[files]]
path = "set.bin"
sha256 = "{hashlib.sha256(data).hexdigest()}"
sources.torrent = {{ academic_torrents = "{infohash}", peers = ["127.0.0.1:{seeder.port}"] }}
"""
    with DaemonProcess(tmp_path / "d", torrent={"academic_torrents_url": academic.url}) as d:
        d.drop("at.toml", text)
        d.wait_job("at", "done", timeout=60)
        assert (d.data / "at/set.bin").read_bytes() == data
        shown = d.call({"cmd": "show", "job": "at"})
        f = shown["files"][0]
        assert f["source"] == "torrent"
        assert f["digests"]["sha256"] == hashlib.sha256(data).hexdigest()
        # The finished torrent is seeded from its final place.
        assert any(s["job"] == "at" for s in d.status()["seeding"])
        # The .torrent fetched by infohash is cached in the state dir.
        assert list((d.state / "torrent").rglob("*.torrent"))


def test_two_of_five_files_from_a_multi_file_torrent(tmp_path: Path, seeder: Seeder) -> None:
    names = {f"set/part{i}.bin": (i + 1) * 256 * 1024 for i in range(5)}
    files = write_files(tmp_path / "seed", names)
    torrent = make_torrent(tmp_path / "seed" / "set")
    (tmp_path / "set.torrent").write_bytes(torrent)
    seeder.seed(torrent, tmp_path / "seed")
    wanted = ["set/part1.bin", "set/part3.bin"]
    entries = "".join(
        f"""
[[files]]
path = "{name.split("/")[1]}"
sha256 = "{hashlib.sha256(files[name]).hexdigest()}"
sources.torrent.path = "{tmp_path / "set.torrent"}"
sources.torrent.file = "{name}"
sources.torrent.peers = ["127.0.0.1:{seeder.port}"]
"""
        for name in wanted
    )
    text = f'manifest_version = 1\nname = "multi"\ndestination = "multi"\n{entries}'
    with DaemonProcess(tmp_path / "d") as d:
        d.drop("multi.toml", text)
        job = d.wait_job("multi", "done", timeout=60)
        assert job["files_done"] == 2
        for name in wanted:
            assert (d.data / "multi" / name.split("/")[1]).read_bytes() == files[name]
        present = sorted(p.name for p in (d.data / "multi").rglob("*.bin"))
        assert present == ["part1.bin", "part3.bin"]  # the other three were not fetched


def test_swarm_without_data_falls_back_to_the_mirror(tmp_path: Path) -> None:
    """No peer ever has the data: the probe sees the mirror failing (one 503) and picks the
    torrent, which then stalls for the configured window; the daemon switches to the
    mirror and completes."""
    data = write_files(tmp_path / "seed", {"lone.bin": 2 * MB})["lone.bin"]
    torrent = make_torrent(tmp_path / "seed" / "lone.bin")
    (tmp_path / "lone.torrent").write_bytes(torrent)
    with HttpTestServer() as server:
        url = server.add("/lone.bin", data)
        server.fault("/lone.bin", Fault(status=503), times=1)  # the probe's request
        text = f"""
manifest_version = 1
name = "fallback"
destination = "fallback"

[[files]]
path = "lone.bin"
sha256 = "{hashlib.sha256(data).hexdigest()}"
sources.mirrors = ["{url}"]
sources.torrent = {{ path = "{tmp_path / "lone.torrent"}" }}
"""
        torrent_cfg = {"probe_window": 0.5, "stall_window": 2}
        with DaemonProcess(tmp_path / "d", torrent=torrent_cfg) as d:
            d.drop("fallback.toml", text)
            d.wait_job("fallback", "done", timeout=60)
            shown = d.call({"cmd": "show", "job": "fallback"})
            f = shown["files"][0]
            assert f["plan"]["source"] == "http", f
            assert "falling back to http" in f["plan"]["reason"]
            messages = " ".join(e["message"] for e in shown["events"])
            assert "chose torrent" in messages and "switching source" in messages
        assert (d.data / "fallback/lone.bin").read_bytes() == data


def test_doctor_through_acquirectl(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path) as d:
        out = d.ctl("doctor", "--json")
        assert out.returncode in (0, 1), out.stderr
        report = json.loads(out.stdout)
        assert report["findings"], report
        assert report["session"] is not None
        text = d.ctl("doctor")
        assert text.stdout.strip(), text.stderr

"""The daemon runs a file's unpack steps after the fetch: real archives over loopback HTTP."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from support.daemon import DaemonProcess
from support.http_server import HttpTestServer
from support.pypi import build_wheel, make_index


def tar_gz(members: dict[str, bytes], *, evil: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if evil is not None:
            info = tarfile.TarInfo(evil)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return buf.getvalue()


def manifest(name: str, url: str, data: bytes) -> str:
    return f"""
manifest_version = 1
name = "{name}"
destination = "{name}"

[[files]]
path = "{name}.tar.gz"
sha256 = "{hashlib.sha256(data).hexdigest()}"
sources.mirrors = ["{url}"]
unpack = [{{ format = "tar.gz", into = "extracted" }}]
"""


def test_archive_is_extracted_after_the_fetch(tmp_path: Path) -> None:
    members = {"set/a.txt": b"alpha" * 1000, "set/sub/b.bin": bytes(range(256)) * 100}
    archive = tar_gz(members)
    with HttpTestServer() as server:
        url = server.add("/set.tar.gz", archive)
        with DaemonProcess(tmp_path) as d:
            d.drop("set.toml", manifest("set", url, archive))
            d.wait_job("set", "done")
            for name, data in members.items():
                assert (d.data / "set/extracted" / name).read_bytes() == data
            assert (d.data / "set/set.tar.gz").exists()  # kept by default
            shown = d.call({"cmd": "show", "job": "set"})
            assert "unpacking" in " ".join(e["message"] for e in shown["events"])


def test_hostile_archive_is_refused_and_nothing_escapes(tmp_path: Path) -> None:
    archive = tar_gz({"ok.txt": b"fine"}, evil="../../escaped.txt")
    with HttpTestServer() as server:
        url = server.add("/evil.tar.gz", archive)
        with DaemonProcess(tmp_path) as d:
            d.drop("evil.toml", manifest("evil", url, archive))
            d.wait_job("evil", "failed")
            f = d.call({"cmd": "show", "job": "evil"})["files"][0]
            assert f["error"]["code"].startswith("unpack."), f
            assert f["error"]["hint"]
            assert d.call({"cmd": "ping"})  # the daemon stays up
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "data/evil/extracted/ok.txt").exists()  # nothing half-placed


def test_job_steps_check_sums_and_counts_once_every_file_is_done(tmp_path: Path) -> None:
    members = {f"set/{i}.txt": f"item {i}\n".encode() * 50 for i in range(6)}
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name.split('/')[1]}\n"
        for name, data in members.items()
    )
    archive = tar_gz({**members, "set/SHA256SUMS": sums.encode()})
    steps = """
[[checksums]]
file = "extracted/set/SHA256SUMS"

[[listing]]
root = "extracted/set"
expect_files = {count}
"""
    with HttpTestServer() as server:
        url = server.add("/set.tar.gz", archive)
        with DaemonProcess(tmp_path) as d:
            d.drop("good.toml", manifest("good", url, archive) + steps.format(count=7))
            d.wait_job("good", "done")
            shown = d.call({"cmd": "show", "job": "good"})
            assert shown["job_steps"]["state"] == "done"
            assert "done (job steps)" in " ".join(e["message"] for e in shown["events"])

            d.drop("bad.toml", manifest("bad", url, archive) + steps.format(count=99))
            d.wait_job("bad", "failed")
            shown = d.call({"cmd": "show", "job": "bad"})
            assert [f["state"] for f in shown["files"]] == ["done"]  # the data is fine
            error = shown["job_steps"]["error"]
            assert error["code"] == "layout.count_mismatch", error
            assert "99" in error["message"]


def test_completed_copy_in_a_watched_folder_is_verified_and_extracted(tmp_path: Path) -> None:
    members = {"w/a.txt": b"watched" * 100}
    archive = tar_gz(members)
    watch = tmp_path / "client-done"
    dead = "http://127.0.0.1:9/nowhere.tar.gz"  # nothing listens: the mirror keeps failing
    with DaemonProcess(tmp_path / "d", unpack={"watch_dirs": [str(watch)]}) as d:
        d.drop("w.toml", manifest("w", dead, archive))
        d.wait_for(lambda: (j := d.job("w")) and j["state"] in ("queued", "fetching"), 10, "job")
        # A damaged copy under the right name is refused, and said so.
        (watch / "sub").mkdir(parents=True)
        (watch / "sub" / "w.tar.gz").write_bytes(archive[:-10] + b"0123456789")
        d.wait_for(lambda: "not used" in d.log(), 15, "the damaged copy to be refused")
        assert d.job("w")["state"] != "done"
        (watch / "sub" / "w.tar.gz").unlink()
        # A good copy moved in completes the job without the mirror.
        staged = tmp_path / "staged.tar.gz"
        staged.write_bytes(archive)
        staged.rename(watch / "w.tar.gz")
        d.wait_job("w", "done", timeout=30)
        assert (d.data / "w/extracted/w/a.txt").read_bytes() == members["w/a.txt"]
        f = d.call({"cmd": "show", "job": "w"})["files"][0]
        assert f["source"] == "watched"
    assert (watch / "w.tar.gz").exists()  # the watched copy itself is left alone


def test_pip_section_prefetches_wheels_from_the_best_index(tmp_path: Path) -> None:
    name, wheel = build_wheel("tinypkg", "1.0")
    root = make_index(tmp_path / "index", {"tinypkg": [(name, wheel)]})
    data = b"payload"
    with HttpTestServer() as server:
        server.add_tree("/", root)
        url = server.add("/data.bin", data)
        text = f"""
manifest_version = 1
name = "py"
destination = "py"

[[files]]
path = "data.bin"
sha256 = "{hashlib.sha256(data).hexdigest()}"
sources.mirrors = ["{url}"]

[pip]
requirements = ["tinypkg==1.0"]
target = "wheels"
index_urls = ["http://127.0.0.1:9/simple", "{server.url("/simple")}"]
"""
        with DaemonProcess(tmp_path / "d") as d:
            d.drop("py.toml", text)
            d.wait_job("py", "done", timeout=120)
            assert (d.data / "py/wheels" / name).read_bytes() == wheel

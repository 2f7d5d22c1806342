"""acquirectl as a new user runs it: finding the daemon from anywhere, adding URLs and
torrents directly, forgetting jobs, commands that do nothing saying why, and logs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
from support.control import run_ctl
from support.daemon import DaemonProcess
from support.http_server import Fault, HttpTestServer
from support.torrent_swarm import make_torrent, write_files


@pytest.fixture
def server() -> HttpTestServer:
    with HttpTestServer() as s:
        yield s


def _env(d: DaemonProcess) -> dict[str, str]:
    env = {k: v for k, v in d.env.items() if k != "ACQUIRED_SOCKET"}
    return env


def test_acquirectl_finds_a_daemon_started_by_hand_from_any_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    d = DaemonProcess(tmp_path / "d").start()
    try:
        env = _env(d)
        records = list((tmp_path / "d/xdg/acquired").glob("daemon-*.json"))
        assert len(records) == 1
        assert json.loads(records[0].read_text())["socket"] == str(d.socket)
        out = run_ctl("status", "--json", env=env, cwd=elsewhere)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["daemon"]["pid"] == d.proc.pid  # type: ignore[union-attr]
    finally:
        d.stop()
    assert not records[0].exists(), "the record goes when the daemon stops"

    out = run_ctl("status", env=env, cwd=elsewhere)
    assert out.returncode == 1
    assert "acquired is not running; tried" in out.stderr
    assert "/run/acquired/acquired.sock (the system service" in out.stderr
    assert f"{elsewhere}/var/run/acquired.sock (./var/run: no socket)" in out.stderr

    # --json on a daemon that is not running is still JSON
    out = run_ctl("status", "--json", env=env, cwd=elsewhere)
    assert out.returncode == 1
    reply = json.loads(out.stdout)
    assert reply["ok"] is False and reply["error"]["code"] == "control.not_running"


def test_add_takes_urls_magnets_infohashes_and_torrent_files(
    tmp_path: Path, server: HttpTestServer
) -> None:
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    a = server.add("/a/data-v1.tar.gz", data)
    b = server.add("/b/data-v1.tar.gz", data)
    content = tmp_path / "content"
    write_files(content, {"ds/x.bin": 70_000, "ds/sub/y.bin": 1000})
    torrent = tmp_path / "ds.torrent"
    torrent.write_bytes(make_torrent(content / "ds"))
    with DaemonProcess(tmp_path / "d") as d:
        shown = d.ctl("add", a, b, "--sha256", digest, "--print")
        assert shown.returncode == 0, shown.stderr
        assert 'name = "data-v1"' in shown.stdout
        assert f"sources.mirrors = {json.dumps([a, b])}" in shown.stdout
        assert f'sha256 = "{digest}"' in shown.stdout
        assert d.status()["jobs"] == [], "--print submits nothing"

        added = d.ctl("add", a, b, "--sha256", digest, "--dest", "sets/one", "--name", "one")
        assert added.returncode == 0, added.stderr
        assert "one: job added" in added.stdout
        d.wait_job("one", "done")
        assert (d.data / "sets/one/data-v1.tar.gz").read_bytes() == data
        kept = d.state / "manifests/one.toml"
        assert a in kept.read_text() and f"manifest kept as {kept}" in added.stdout

        out = d.ctl("add", str(torrent), "--print")
        assert out.returncode == 0, out.stderr
        assert 'name = "ds"' in out.stdout
        assert 'path = "ds/x.bin"' in out.stdout and "size = 70000" in out.stdout
        assert f'sources.torrent = {{ path = "{torrent}", file = "ds/sub/y.bin" }}' in out.stdout

        magnet = "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=imgs.tar"
        out = d.ctl("add", magnet, "--unpack", "--print")
        assert out.returncode == 0, out.stderr
        assert 'path = "imgs.tar"' in out.stdout
        assert 'unpack = [{ format = "auto", into = "." }]' in out.stdout

        infohash = "cd" * 20
        out = d.ctl("add", infohash)
        assert out.returncode == 1 and "give --path NAME" in out.stderr
        out = d.ctl("add", infohash, "--path", "val.tar", "--print")
        assert f'academic_torrents = "{infohash}"' in out.stdout

        binary = tmp_path / "blob.bin"
        binary.write_bytes(b"\xff\xfe\x00" * 100)
        out = d.ctl("add", str(binary))
        assert out.returncode == 1
        assert "neither a manifest" in out.stderr and "Traceback" not in out.stderr


def _slow_job(d: DaemonProcess, server: HttpTestServer, name: str) -> None:
    data = os.urandom(2_000_000)
    url = server.add(f"/{name}.bin", data)
    server.fault(f"/{name}.bin", Fault(rate=20_000), times=None)
    out = d.ctl("add", url, "--name", name)
    assert out.returncode == 0, out.stderr
    d.wait_job(name, "fetching")


def test_commands_that_do_nothing_say_why_and_forget_removes_finished_jobs(
    tmp_path: Path, server: HttpTestServer
) -> None:
    with DaemonProcess(tmp_path / "d", http={"connections_per_file": 1}) as d:
        _slow_job(d, server, "slow")
        out = d.ctl("forget", "slow")
        assert out.returncode == 1
        assert "job 'slow' is fetching" in out.stderr and "acquirectl cancel slow" in out.stderr

        assert d.ctl("cancel", "slow").returncode == 0
        d.wait_job("slow", "cancelled")
        out = d.ctl("resume", "slow")
        assert out.returncode == 1, out.stdout
        assert "nothing to resume: job 'slow' is cancelled" in out.stderr
        assert "acquirectl retry slow" in out.stderr
        out = d.ctl("cancel", "slow")
        assert out.returncode == 1 and "acquirectl forget slow" in out.stderr

        assert (d.data / "slow").is_dir()
        out = d.ctl("forget", "slow", "--delete-data")
        assert out.returncode == 0, out.stderr
        assert "slow: forgotten (it was cancelled)" in out.stdout
        assert d.status()["jobs"] == []
        assert not (d.data / "slow").exists()
        assert d.ctl("forget", "slow").returncode == 1


def test_logs_lines_unknown_jobs_and_a_missing_journal(
    tmp_path: Path, server: HttpTestServer
) -> None:
    data = b"z" * 1000
    url = server.add("/small.bin", data)
    with DaemonProcess(tmp_path / "d") as d:
        assert d.ctl("add", url, "--name", "small").returncode == 0
        d.wait_job("small", "done")
        args = ("--config", str(d.config_path), "logs")
        out = run_ctl(*args, "small", env=_env(d))
        assert out.returncode == 0, out.stderr
        assert "[small] job added" in out.stdout
        assert not re.search(r"\[small[^\]]*\] \[small", out.stdout), out.stdout

        out = run_ctl(*args, "nosuchjob", env=_env(d))
        assert out.returncode == 1
        assert "no job named 'nosuchjob'" in out.stderr

        out = run_ctl(*args, "--from", "journal", env=_env(d))
        assert out.returncode == 1
        assert "journal" in out.stderr and out.stdout == ""


def test_a_destination_outside_the_data_root_names_the_data_root(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.toml"
    manifest.write_text(
        'manifest_version = 1\nname = "bad"\ndestination = "../x"\n'
        '[[files]]\npath = "f"\nsources.mirrors = ["http://127.0.0.1:9/f"]\n'
    )
    with DaemonProcess(tmp_path / "d") as d:
        out = d.ctl("add", str(manifest))
        assert out.returncode == 1
        assert "paths must stay inside the data root" in out.stderr
        assert "inside the destination" not in out.stderr


def test_readme_sizes_say_what_the_parser_does() -> None:
    from acquired.daemon.units import parse_size

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert parse_size("10G") == 10**10
    assert "`10G` = 10⁹" not in readme
    assert "`1G` = 10⁹" in readme and "`1GiB` = 2³⁰" in readme


def test_a_killed_daemons_record_is_pruned_by_the_next_one(tmp_path: Path) -> None:
    xdg = {"XDG_RUNTIME_DIR": str(tmp_path / "xdg")}
    records = tmp_path / "xdg/acquired"
    first = DaemonProcess(tmp_path / "one", env=xdg).start()
    first.kill(signal.SIGKILL)
    assert len(list(records.glob("daemon-*.json"))) == 1, "a killed daemon cannot clean up"
    with DaemonProcess(tmp_path / "two", env=xdg) as second:
        left = [json.loads(p.read_text()) for p in records.glob("daemon-*.json")]
        assert [r["socket"] for r in left] == [str(second.socket)]

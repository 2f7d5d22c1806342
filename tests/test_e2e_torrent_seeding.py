"""Seeding outlives a restart of the daemon: after SIGTERM or SIGKILL a finished torrent
under its seeding policy is in the session again, checked against the files on disk, and
a fresh peer downloads it from the daemon alone; a file changed on disk is not seeded."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

from support.daemon import DaemonProcess
from support.torrent_swarm import Seeder, leech, make_torrent, write_files

SIZE = 2_000_000
POLICY = {"seed_ratio": 5.0, "seed_time": 0}


def _finish_one(tmp_path: Path) -> tuple[DaemonProcess, bytes, bytes]:
    data = write_files(tmp_path / "seed", {"s.bin": SIZE})["s.bin"]
    torrent = make_torrent(tmp_path / "seed" / "s.bin")
    (tmp_path / "s.torrent").write_bytes(torrent)
    seeder = Seeder()
    try:
        seeder.seed(torrent, tmp_path / "seed")
        text = f"""
manifest_version = 1
name = "seeded"
destination = "seeded"

[[files]]
path = "s.bin"
sha256 = "{hashlib.sha256(data).hexdigest()}"
sources.torrent = {{ path = "{tmp_path / "s.torrent"}", peers = ["127.0.0.1:{seeder.port}"] }}
"""
        d = DaemonProcess(tmp_path / "d", torrent=POLICY).start()
        d.drop("seeded.toml", text)
        d.wait_job("seeded", "done", timeout=60)
    finally:
        seeder.close()  # from now on the daemon is the only copy in the swarm
    return d, data, torrent


def _seeding(d: DaemonProcess) -> list[str]:
    return [s["job"] for s in d.status()["seeding"]]


def _session(d: DaemonProcess) -> dict[str, object]:
    out = d.ctl("doctor", "--json")
    session: dict[str, object] = json.loads(out.stdout)["session"]
    return session


def _restart_and_check(
    d: DaemonProcess, sig: signal.Signals, torrent: bytes, data: bytes, ratio: float
) -> None:
    d.kill(sig)
    d.start()
    d.wait_for(lambda: _seeding(d) == ["seeded"], 20, f"seeding after {sig.name}")
    session = _session(d)
    assert session["torrents"] == 1, session
    port = int(str(session["listen_port"]))
    folder = d.root.parent / f"leech-{sig.name}"
    got = leech(torrent, folder, ("127.0.0.1", port))
    assert (folder / "s.bin").read_bytes() == data
    assert got >= SIZE
    # The share ratio counts on from the resume data; the policy (5.0) keeps it seeding.
    d.wait_for(lambda: d.status()["seeding"][0]["ratio"] >= ratio, 10, f"ratio {ratio}")
    print(
        f"\nafter {sig.name}: seeding {d.status()['seeding']}, doctor {session['torrents']}"
        f" torrent(s); a fresh peer fetched {got} bytes from the daemon alone"
    )


def test_seeding_survives_restarts_and_stops_for_a_changed_file(tmp_path: Path) -> None:
    """SIGKILL right after the download, then SIGTERM: seeding each time; then a file
    edited while the daemon is stopped: checked by libtorrent, not seeded, not overwritten."""
    d, data, torrent = _finish_one(tmp_path)
    try:
        assert _seeding(d) == ["seeded"]
        records = list((d.state / "torrent" / "resume").glob("*.seeding.json"))
        assert len(records) == 1
        assert json.loads(records[0].read_text())["seed_ratio"] == POLICY["seed_ratio"]
        # Killed right after "done": the resume data of the finished torrent is on disk.
        _restart_and_check(d, signal.SIGKILL, torrent, data, ratio=1.0)
        # A clean stop saves the upload counted since: the next leecher makes it 2.0.
        _restart_and_check(d, signal.SIGTERM, torrent, data, ratio=2.0)

        d.stop()
        target = d.data / "seeded" / "s.bin"
        changed = bytearray(data)
        changed[SIZE // 2 : SIZE // 2 + 16] = b"edited by a user"
        target.write_bytes(bytes(changed))  # same size, new mtime
        d.start()

        def dropped() -> bool:
            events = d.status()["events"]
            return any("stopped seeding" in e["message"] for e in events)

        d.wait_for(dropped, 30, "the changed file to be dropped from seeding")
        assert _seeding(d) == []
        assert _session(d)["torrents"] == 0
        assert target.read_bytes() == bytes(changed)  # checked, never overwritten
        assert not list((d.state / "torrent" / "resume").glob("*.seeding.json"))
        assert "changed on disk" in d.log()
    finally:
        d.stop()

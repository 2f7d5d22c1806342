"""Run as acquired.service's ExecStart (a drop-in replaces it) inside the container, to show
that what the daemon does works under the unit's sandbox: libtorrent (interfaces
enumerated over netlink, listening on all addresses, DHT on, a download from a loopback
seeder) and safe extraction of a .tar.zst and a .zip with acquired.unpack (which starts
worker processes). Prints one ``probe: NAME ok|FAILED ...`` line per check, sends READY=1
and exits 0 only when all passed."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libtorrent as lt
import zstandard
from support.torrent_swarm import Seeder, make_torrent, write_files

from acquired.unpack import extract
from systemd import daemon

WORK = Path(os.environ.get("STATE_DIRECTORY", "/tmp")) / "probe"


def check_libtorrent() -> str:
    seed_dir, get_dir = WORK / "seed", WORK / "get"
    files = write_files(seed_dir, {"payload/a.bin": 3 * 1024 * 1024 + 17})
    torrent = make_torrent(seed_dir / "payload")
    seeder = Seeder()
    seeder.seed(torrent, seed_dir)
    # the daemon's kind of session: every interface, DHT on (no bootstrap without network)
    session = lt.session(
        {
            "listen_interfaces": "0.0.0.0:0,[::]:0",
            "enable_dht": True,
            "dht_bootstrap_nodes": "",
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "allow_multiple_connections_per_ip": True,
        }
    )
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = str(get_dir)
    handle = session.add_torrent(atp)
    handle.connect_peer(seeder.endpoint)
    deadline = time.monotonic() + 60
    while not handle.status().is_seeding:
        if time.monotonic() > deadline:
            raise RuntimeError(f"download stuck: {handle.status().state}")
        time.sleep(0.1)
    got = (get_dir / "payload/a.bin").read_bytes()
    if got != files["payload/a.bin"]:
        raise RuntimeError("downloaded bytes differ")
    port = session.listen_port()
    seeder.close()
    return f"{len(got)} bytes over loopback, listening on port {port}"


def check_extract() -> str:
    members = {f"d/{i}.txt": os.urandom(1000 + i) for i in range(20)}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = WORK / "a.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    zipped = WORK / "b.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    for source, target in ((archive, WORK / "out-zst"), (zipped, WORK / "out-zip")):
        extract(source, target)
        for name, data in members.items():
            if (
                hashlib.sha256((target / name).read_bytes()).digest()
                != hashlib.sha256(data).digest()
            ):
                raise RuntimeError(f"{source.name}: {name} differs after extraction")
    return f"{len(members)} members from .tar.zst and .zip"


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    checks: dict[str, Callable[[], str]] = {
        "libtorrent": check_libtorrent,
        "extract": check_extract,
    }
    failed = 0
    for name, check in checks.items():
        try:
            print(f"probe: {name} ok: {check()}", flush=True)
        except Exception:
            failed += 1
            print(f"probe: {name} FAILED\n{traceback.format_exc()}", flush=True)
    if failed:
        return 1
    daemon.notify("READY=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())

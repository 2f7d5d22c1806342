"""Loopback BitTorrent helpers for tests and benchmarks: torrents made on the spot, a
libtorrent seeder, a tiny HTTP tracker, a fake Academic Torrents endpoint and an HTTP file
server with Range support (web seeds). Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import libtorrent as lt

from acquired.sources.torrent import TorrentSettings

LOOPBACK_SESSION: dict[str, Any] = {
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "listen_system_port_fallback": False,
    "allow_multiple_connections_per_ip": True,
    "dht_bootstrap_nodes": "",
    "alert_mask": int(lt.alert_category.error | lt.alert_category.status),
    "enable_outgoing_utp": False,
}
# Two DHT nodes on one address are normally distrusted; on loopback they are all we have.
LOOPBACK_DHT: dict[str, Any] = {
    "dht_restrict_routing_ips": False,
    "dht_restrict_search_ips": False,
    "dht_ignore_dark_internet": False,
    "dht_prefer_verified_node_ids": False,
}


def loopback_settings(**overrides: Any) -> TorrentSettings:
    """Engine settings that keep everything on 127.0.0.1 with a system-chosen port."""
    extra = {"allow_multiple_connections_per_ip": True, **overrides.pop("extra", {})}
    base: dict[str, Any] = {
        "listen_port": 0,
        "listen_interfaces": ("127.0.0.1",),
        "dht": False,
        "dht_bootstrap": (),
        "tick_interval": 0.2,
        "resume_interval": 1.0,
        "extra": extra,
    }
    base.update(overrides)
    return TorrentSettings(**base)


def write_files(root: Path, sizes: dict[str, int], seed: int = 1) -> dict[str, bytes]:
    """Write pseudo-random files under ``root``; returns their contents by relative path."""
    import random

    rng = random.Random(seed)
    out = {}
    for name, size in sizes.items():
        data = rng.randbytes(size)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[name] = data
    return out


def make_torrent(
    content: Path,
    piece_size: int = 64 * 1024,
    trackers: tuple[str, ...] = (),
    web_seeds: tuple[str, ...] = (),
    v1_only: bool = True,
    comment: str = "",
) -> bytes:
    """A .torrent for a file or folder ``content`` (bencoded bytes)."""
    flags = lt.create_torrent.v1_only if v1_only else 0
    ct = lt.create_torrent(lt.list_files(str(content)), piece_size, flags)
    for i, url in enumerate(trackers):
        ct.add_tracker(url, i)
    for url in web_seeds:
        ct.add_url_seed(url)
    if comment:
        ct.set_comment(comment)
    lt.set_piece_hashes(ct, str(content.parent))
    return bytes(lt.bencode(ct.generate()))


def infohash_of(torrent: bytes) -> str:
    return str(lt.torrent_info(torrent).info_hashes().v1)


class Seeder:
    """A libtorrent session on 127.0.0.1 seeding given torrents (data already on disk)."""

    def __init__(self, upload_rate_limit: int = 0, **settings: Any) -> None:
        pack = {**LOOPBACK_SESSION, "listen_interfaces": "127.0.0.1:0", **settings}
        if upload_rate_limit:
            pack["upload_rate_limit"] = upload_rate_limit
            pack["ignore_limits_on_local_network"] = False
        self.session = lt.session(pack)
        self.handles: list[lt.torrent_handle] = []

    @property
    def port(self) -> int:
        return int(self.session.listen_port())

    @property
    def endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def seed(self, torrent: bytes, save_path: Path) -> lt.torrent_handle:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(torrent)
        atp.save_path = str(save_path)
        atp.flags = (atp.flags | lt.torrent_flags.seed_mode) & ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        handle = self.session.add_torrent(atp)
        self.handles.append(handle)
        return handle

    def uploaded(self) -> int:
        return sum(h.status().total_payload_upload for h in self.handles)

    def close(self) -> None:
        for h in self.handles:
            self.session.remove_torrent(h)
        self.handles.clear()
        del self.session


def leech(torrent: bytes, save_path: Path, peer: tuple[str, int], timeout: float = 30.0) -> int:
    """Download ``torrent`` into ``save_path`` from ``peer`` alone, with a fresh loopback
    session; returns the payload bytes that came from it (raises when it does not finish)."""
    ses = lt.session({**LOOPBACK_SESSION, "listen_interfaces": "127.0.0.1:0"})
    try:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(torrent)
        atp.save_path = str(save_path)
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        handle = ses.add_torrent(atp)
        deadline = time.monotonic() + timeout
        while not handle.status().is_seeding:
            if time.monotonic() > deadline:
                st = handle.status()
                raise AssertionError(
                    f"nothing seeded it: {st.total_wanted_done} of {st.total_wanted} bytes"
                    f" in {timeout} s from {peer}"
                )
            if handle.status().num_peers == 0:
                handle.connect_peer(peer)
            time.sleep(0.1)
        return int(handle.status().total_payload_download)
    finally:
        del ses


def dht_node(port: int = 0, bootstrap: str = "") -> lt.session:
    """A bare DHT node on 127.0.0.1 (helps an engine's DHT in tests)."""
    return lt.session(
        {
            **LOOPBACK_SESSION,
            **LOOPBACK_DHT,
            "enable_dht": True,
            "listen_interfaces": f"127.0.0.1:{port}",
            "dht_bootstrap_nodes": bootstrap,
        }
    )


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:0 run in a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/octet-stream") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # The client may go away (libtorrent's 'stopped' announce at shutdown).
        with contextlib.suppress(OSError):
            self.wfile.write(body)


@dataclass
class _Peer:
    ip: str
    port: int
    seed: bool
    seen: float = field(default_factory=time.monotonic)


class Tracker(_Server):
    """A minimal HTTP tracker: compact announce replies and scrape."""

    def __init__(self) -> None:
        self.swarms: dict[bytes, dict[tuple[str, int], _Peer]] = {}
        self.lock = threading.Lock()
        super().__init__(_TrackerHandler)

    @property
    def announce_url(self) -> str:
        return f"{self.url}/announce"

    def add_peer(self, infohash_hex: str, ip: str, port: int, seed: bool = True) -> None:
        with self.lock:
            self.swarms.setdefault(bytes.fromhex(infohash_hex), {})[(ip, port)] = _Peer(
                ip, port, seed
            )


def _raw_query(path: str) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for part in urlsplit(path).query.split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out.setdefault(unquote(k), []).append(unquote_to_bytes(v))
    return out


class _TrackerHandler(_Quiet):
    def do_GET(self) -> None:
        tracker: Tracker = self.server.owner  # type: ignore[attr-defined]
        tracker.requests.append(self.path)
        q = _raw_query(self.path)
        if self.path.startswith("/announce"):
            ih = q["info_hash"][0]
            port = int(q["port"][0])
            left = int(q.get("left", [b"1"])[0])
            event = q.get("event", [b""])[0]
            ip = self.client_address[0]
            with tracker.lock:
                swarm = tracker.swarms.setdefault(ih, {})
                if event == b"stopped":
                    swarm.pop((ip, port), None)
                else:
                    swarm[(ip, port)] = _Peer(ip, port, left == 0)
                others = [p for k, p in swarm.items() if k != (ip, port)]
                complete = sum(1 for p in swarm.values() if p.seed)
                incomplete = len(swarm) - complete
            compact = b"".join(
                bytes(map(int, p.ip.split("."))) + p.port.to_bytes(2, "big") for p in others
            )
            body = lt.bencode(
                {"interval": 5, "complete": complete, "incomplete": incomplete, "peers": compact}
            )
            self._send(200, bytes(body), "text/plain")
        elif self.path.startswith("/scrape"):
            files = {}
            with tracker.lock:
                for ih in q.get("info_hash", []):
                    swarm = tracker.swarms.get(ih, {})
                    complete = sum(1 for p in swarm.values() if p.seed)
                    files[ih] = {
                        "complete": complete,
                        "incomplete": len(swarm) - complete,
                        "downloaded": 0,
                    }
            self._send(200, bytes(lt.bencode({"files": files})), "text/plain")
        else:
            self._send(404, b"not found")


class AcademicTorrents(_Server):
    """Serves ``/download/<infohash>.torrent`` like Academic Torrents' endpoint."""

    def __init__(self) -> None:
        self.torrents: dict[str, bytes] = {}
        super().__init__(_AcademicHandler)

    def publish(self, torrent: bytes, as_infohash: str | None = None) -> str:
        """Serve ``torrent`` under its own infohash, or under ``as_infohash`` (to lie)."""
        ih = as_infohash or infohash_of(torrent)
        self.torrents[ih] = torrent
        return ih


class _AcademicHandler(_Quiet):
    def do_GET(self) -> None:
        owner: AcademicTorrents = self.server.owner  # type: ignore[attr-defined]
        owner.requests.append(self.path)
        m = re.fullmatch(r"/download/([0-9a-f]+)\.torrent", self.path)
        body = owner.torrents.get(m.group(1)) if m else None
        if body is None:
            self._send(404, b"no such torrent", "text/plain")
        else:
            self._send(200, body, "application/x-bittorrent")


class FileServer(_Server):
    """Serves files under ``root`` with single Range support (what web seeds need).

    ``rate`` (bytes/s per response) throttles it; ``fail`` makes every request a 503."""

    def __init__(self, root: Path, rate: int = 0) -> None:
        self.root = root
        self.rate = rate
        self.fail = False
        self.bytes_sent = 0
        super().__init__(_FileHandler)

    def url_for(self, name: str) -> str:
        return f"{self.url}/{name}"


class _FileHandler(_Quiet):
    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner: FileServer = self.server.owner  # type: ignore[attr-defined]
        owner.requests.append(self.path)
        if owner.fail:
            self._send(503, b"unavailable")
            return
        path = owner.root / unquote(urlsplit(self.path).path).lstrip("/")
        if not path.is_file():
            self._send(404, b"not found")
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        code = 200
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m:
                self._send(416, b"")
                return
            if m.group(1):
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
            else:
                start = size - int(m.group(2))
            end = min(end, size - 1)
            code = 206
        length = end - start + 1
        self.send_response(code)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        with path.open("rb") as f:
            f.seek(start)
            left = length
            began = time.monotonic()
            sent = 0
            while left > 0:
                chunk = f.read(min(left, 64 * 1024))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
                left -= len(chunk)
                sent += len(chunk)
                owner.bytes_sent += len(chunk)
                if owner.rate:
                    ahead = sent / owner.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)


class EventLog:
    """Collects engine events (thread-safe) and waits for one that matches."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.cond = threading.Condition()

    def __call__(self, event: object) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def of(self, kind: type) -> list[Any]:
        with self.cond:
            return [e for e in self.events if isinstance(e, kind)]

    def wait_for(
        self, kind: type, pred: Callable[[Any], bool] = lambda e: True, timeout: float = 30.0
    ) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if isinstance(e, kind) and pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = sorted({type(e).__name__ for e in self.events})
                    raise AssertionError(f"no {kind.__name__} within {timeout} s; saw {kinds}")
                self.cond.wait(left)


@contextmanager
def running_engine(settings: TorrentSettings, state_dir: Path) -> Iterator[tuple[Any, EventLog]]:
    """A started TorrentEngine with an EventLog; stopped on exit."""
    from acquired.sources.torrent import TorrentEngine

    events = EventLog()
    engine = TorrentEngine(settings, state_dir, events)
    engine.start()
    try:
        yield engine, events
    finally:
        engine.stop()


def wait_until(pred: Callable[[], bool], timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


__all__ = [
    "LOOPBACK_DHT",
    "LOOPBACK_SESSION",
    "AcademicTorrents",
    "EventLog",
    "FileServer",
    "Seeder",
    "Tracker",
    "dht_node",
    "infohash_of",
    "leech",
    "loopback_settings",
    "make_torrent",
    "running_engine",
    "wait_until",
    "write_files",
]

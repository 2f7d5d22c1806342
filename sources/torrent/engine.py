"""The daemon's one libtorrent session: add/pause/remove torrents, report plain events.

Threads: the caller's (``add``, ``pause``, ``status``... are thread-safe), the alert pump
(the only thread that pops alerts; it converts each alert into plain values before the next
pop, since libtorrent invalidates alert objects then), and one short-lived worker per
completed torrent that checks the manifest's digests and renames the files into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import libtorrent as lt

from acquired.sources.choice import SwarmEvidence
from acquired.sources.errors import DiskFull, SourceError
from acquired.sources.torrent import doctor as doc
from acquired.sources.torrent import probing, seeding
from acquired.sources.torrent.errors import (
    DigestMismatch,
    DuplicateTorrent,
    InvalidTorrent,
    MetadataTimeout,
    TorrentDiskError,
    TorrentError,
    UnknownTorrent,
)
from acquired.sources.torrent.events import (
    DhtStatus,
    ExternalAddress,
    Finding,
    ListenFailed,
    ListenSucceeded,
    MetadataReceived,
    MetadataWaiting,
    ResumeSaved,
    SeedingDone,
    TorrentFailed,
    TorrentFinished,
    TorrentProgress,
    TorrentStalled,
    TrackerResult,
    WebSeedFailed,
)
from acquired.sources.torrent.resolve import (
    TorrentSource,
    _write_atomic,
    expected_infohash,
    infohash_hex,
    load_params,
    map_files,
    torrent_files,
)
from acquired.sources.torrent.settings import TorrentSettings, bootstrap_endpoints, settings_pack

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
_AC = lt.alert_category
BASE_ALERTS = int(
    _AC.error
    | _AC.status
    | _AC.storage
    | _AC.tracker
    | _AC.dht
    | _AC.port_mapping
    | _AC.peer
    | _AC.ip_block
)
_PKT_ENDPOINT = re.compile(r"^<== \[?([^\]\s]+?)\]?:(\d+)\]?")
_PKT_ENDPOINT6 = re.compile(r"^<== \[\[?([0-9a-fA-F:.]+)\]?:(\d+)\]")


@dataclass(frozen=True)
class TorrentRequest:
    """What the daemon wants from one torrent.

    ``files`` maps a path in the torrent (with or without the torrent's top folder) to the
    final path (relative paths go under ``save_dir``); None fetches every file under
    ``save_dir``. Data is written to ``<final>.part`` and renamed after the digests in
    ``digests`` (keyed like ``files``; {algorithm: hex}) are checked. ``web_seeds`` are HTTP
    mirrors of a single-file torrent's file (BEP 19); ``peers`` are (host, port) hints.
    """

    key: str
    source: TorrentSource
    save_dir: Path
    files: Mapping[str, Path] | None = None
    web_seeds: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()
    digests: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    trackers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TorrentStatus:
    """A snapshot of one torrent, for ``acquirectl status``/``show``."""

    key: str
    name: str
    infohash: str
    phase: str
    state: str
    done: int
    total: int
    rate: float
    upload_rate: float
    peers: int
    seeds: int
    web_seeds: int
    ratio: float
    uploaded: int
    downloaded_this_session: int
    has_metadata: bool
    paused: bool
    seconds_without_data: float
    pieces_verified: int
    num_pieces: int
    error: str | None


@dataclass
class _Entry:
    key: str
    request: TorrentRequest | None
    handle: lt.torrent_handle
    ih: str
    added: float
    probe: bool = False
    phase: str = "downloading"
    """metadata, downloading, finishing, seeding, failed, done."""
    wanted: dict[int, tuple[str, Path]] = field(default_factory=dict)
    last_payload: int = 0
    last_data: float = 0.0
    stalled: bool = False
    paused: bool = False
    finished_at: float | None = None
    pending_renames: dict[int, Path] = field(default_factory=dict)
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    flushed: threading.Event = field(default_factory=threading.Event)
    renamed: threading.Event = field(default_factory=threading.Event)
    saved: threading.Event = field(default_factory=threading.Event)
    rename_error: str | None = None
    scrape_complete: int = -1
    scrape_incomplete: int = -1
    dht_peers: int = 0
    wanted_size: int = 0
    """Bytes of the wanted files (libtorrent's total_wanted counts whole pieces)."""
    ratio: float = 0.0
    peers: int = 0
    seeds: int = 0
    error: str | None = None
    probe_files: tuple[str, ...] | None = None
    """A probe's wanted files (None: all)."""
    parked_until: float | None = None
    """A probe kept for adoption by ``add`` until then (monotonic seconds)."""
    seed_ratio: float | None = None
    seed_time: float | None = None
    """The seeding policy this torrent finishes under (kept across restarts)."""
    seeded_before: float = 0.0
    """Seconds seeded in earlier runs of the daemon."""


def _hash_files(path: Path, algorithms: list[str]) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


class TorrentEngine:
    """One libtorrent session for the daemon.

    ``on_event`` receives the frozen dataclasses of ``acquired.sources.torrent.events``
    from the pump thread (and the finishing workers); it must be cheap and thread-safe.
    """

    def __init__(
        self, settings: TorrentSettings, state_dir: Path, on_event: Callable[[object], None]
    ) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.on_event = on_event
        self._session: lt.session | None = None
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._by_ih: dict[str, _Entry] = {}
        self._pump: threading.Thread | None = None
        self._stop = threading.Event()
        self._saves = threading.Condition(self._lock)
        self._pending_saves = 0
        self._started = 0.0
        self._last_tick = 0.0
        self._last_dht_poll = 0.0
        self._last_resume = 0.0
        # Diagnostics, updated by the pump.
        self._listening: list[doc.Socket] = []
        self._listen_failures: list[doc.SocketFailure] = []
        self._port_maps: list[str] = []
        self._port_map_errors: list[str] = []
        self._dht_nodes = 0
        self._dht_history: list[tuple[float, int]] = []
        self._dht_bootstrap_complete = False
        self._bootstrap_addrs: dict[tuple[str, int], str] = {}
        self._bootstrap_answered: list[str] = []
        self._bootstrap_unresolved: list[str] = []
        self._dht_log_on = False
        self._trackers: dict[tuple[str, str], doc.TrackerFact] = {}
        self._incoming = 0
        self._peers_seen = 0
        self._peers_since: float | None = None
        self._external: str | None = None
        self._udp_errors: list[str] = []

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Open the session (listen, DHT) and start the alert pump."""
        if self._session is not None:
            return
        (self.state_dir / "resume").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "torrents").mkdir(parents=True, exist_ok=True)
        probing.clean(self)
        mask = BASE_ALERTS
        if self.settings.dht and self.settings.dht_bootstrap:
            # Packet log only while we learn which bootstrap nodes answer.
            mask |= int(_AC.dht_log)
            self._dht_log_on = True
            threading.Thread(
                target=self._resolve_bootstrap, name="torrent-dht-resolve", daemon=True
            ).start()
        self._started = time.monotonic()
        pack: Any = settings_pack(self.settings, mask)
        self._session = lt.session(pack)
        self._stop.clear()
        self._pump = threading.Thread(target=self._run_pump, name="torrent-alerts", daemon=True)
        self._pump.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Save resume data for every torrent (bounded wait), then close the session."""
        ses = self._session
        if ses is None:
            return
        ses.pause()
        with self._lock:
            entries = [e for e in self._entries.values() if not e.probe]
        now = time.monotonic()
        for e in entries:
            seeding.update_record(self, e, now)
            self._save_resume(e)
        deadline = time.monotonic() + timeout
        with self._saves:
            while self._pending_saves > 0 and time.monotonic() < deadline:
                self._saves.wait(deadline - time.monotonic())
            if self._pending_saves:
                log.warning("resume data of %d torrents not saved in time", self._pending_saves)
        self._stop.set()
        if self._pump is not None:
            self._pump.join(timeout=10)
        with self._lock:
            self._entries.clear()
            self._by_ih.clear()
        self._session = None
        del ses  # closes sockets; announces 'stopped' to trackers (bounded by libtorrent)

    @property
    def session(self) -> lt.session:
        if self._session is None:
            raise TorrentError("the torrent engine is not running", state="stopped")
        return self._session

    def listen_port(self) -> int:
        """The port actually bound (useful when listen_port is 0)."""
        return int(self.session.listen_port())

    def set_rate_limits(self, download: int, upload: int) -> None:
        """Apply the daemon's global bandwidth limits (bytes/s, 0 = unlimited)."""
        self.session.apply_settings(
            {"download_rate_limit": int(download), "upload_rate_limit": int(upload)}
        )

    # ----------------------------------------------------------------- torrents

    def _resume_path(self, key: str) -> Path:
        return self.state_dir / "resume" / f"{quote(key, safe='')}.fastresume"

    def add(self, request: TorrentRequest) -> None:
        """Start (or continue, from saved resume data) fetching ``request``.

        Blocks while a .torrent is fetched over HTTP, so call it from a worker thread.
        Raises TorrentError subclasses for what is known now (bad source, fetch failure,
        infohash mismatch, file not in torrent); later failures arrive as TorrentFailed.
        Adding a key that is already active does nothing.
        """
        ses = self.session
        with self._lock:
            if request.key in self._entries:
                return
        atp = self._params_for(request)
        with self._lock:
            parked = self._by_ih.get(self._ih_of(atp))
        if parked is not None and parked.parked_until is not None:
            probing.adopt(self, parked, request)
            return
        atp.save_path = str(request.save_dir)
        flags = atp.flags
        flags &= ~lt.torrent_flags.auto_managed
        flags &= ~lt.torrent_flags.paused
        flags |= lt.torrent_flags.duplicate_is_error
        wanted: dict[int, tuple[str, Path]] = {}
        if atp.ti is not None:
            wanted = self._plan_files(atp, request)
        else:
            # Magnet: nothing may download before we know which files are wanted.
            flags |= lt.torrent_flags.default_dont_download
        atp.flags = flags
        for tracker in request.trackers:
            atp.trackers = [*atp.trackers, tracker]
        ih = self._ih_of(atp)
        with self._lock:
            if ih in self._by_ih:
                other = self._by_ih[ih].key
                raise DuplicateTorrent(
                    f"torrent {ih} is already active as {other!r}", infohash=ih, other=other
                )
            try:
                handle = ses.add_torrent(atp)
            except RuntimeError as exc:
                raise InvalidTorrent(
                    f"libtorrent refused the torrent for {request.key}: {exc}", error=str(exc)
                ) from exc
            now = time.monotonic()
            entry = _Entry(
                key=request.key,
                request=request,
                handle=handle,
                ih=ih,
                added=now,
                phase="downloading" if atp.ti is not None else "metadata",
                wanted=wanted,
                last_data=now,
                wanted_size=_wanted_size(atp.ti, wanted) if atp.ti is not None else 0,
                seed_ratio=self.settings.seed_ratio,
                seed_time=self.settings.seed_time,
            )
            self._entries[request.key] = entry
            self._by_ih[ih] = entry
        for host, port in request.peers:
            handle.connect_peer((host, int(port)))

    def _ih_of(self, atp: lt.add_torrent_params) -> str:
        if atp.ti is not None:
            return infohash_hex(atp.ti.info_hashes())
        return infohash_hex(atp.info_hashes)

    def _params_for(self, request: TorrentRequest) -> lt.add_torrent_params:
        path = self._resume_path(request.key)
        if path.is_file():
            try:
                atp = lt.read_resume_data(path.read_bytes())
                want = expected_infohash(request.source)
                have = self._ih_of(atp)
                if want is None or want in (have, str(atp.info_hashes.v2)):
                    return atp
                log.warning("resume data of %s is for another torrent; ignored", request.key)
            except RuntimeError as exc:
                log.warning("resume data of %s unreadable (%s); starting over", request.key, exc)
        return load_params(
            request.source,
            self.settings.academic_torrents_url,
            self.state_dir / "torrents",
            self.settings.fetch_timeout,
        )

    def _plan_files(
        self, atp: lt.add_torrent_params, request: TorrentRequest
    ) -> dict[int, tuple[str, Path]]:
        ti = atp.ti
        assert ti is not None
        files = torrent_files(ti)
        wanted = map_files(files, request.files, Path(request.save_dir), ti.name())
        previous = dict(atp.renamed_files)
        renamed: dict[int, str] = {}
        for index, (_, final) in wanted.items():
            # A file finished before a restart already sits at its final path.
            done = previous.get(index) == str(final) and final.exists()
            renamed[index] = str(final) if done else str(final) + PART_SUFFIX
            final.parent.mkdir(parents=True, exist_ok=True)
        atp.renamed_files = renamed
        layout = ti.layout()
        atp.file_priorities = [4 if i in wanted else 0 for i in range(layout.num_files())]
        if len(files) == 1:
            atp.url_seeds = list(dict.fromkeys([*atp.url_seeds, *request.web_seeds]))
        else:
            atp.url_seeds = list(
                dict.fromkeys([*atp.url_seeds, *(u for u in request.web_seeds if u.endswith("/"))])
            )
        return wanted

    def _entry(self, key: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            raise UnknownTorrent(f"no torrent {key!r} is active", key=key)
        return entry

    def keys(self) -> list[str]:
        with self._lock:
            return [k for k, e in self._entries.items() if not e.probe]

    def pause(self, key: str) -> None:
        """Stop transferring; the data and the resume point are kept."""
        entry = self._entry(key)
        entry.paused = True
        entry.handle.unset_flags(lt.torrent_flags.auto_managed)
        entry.handle.pause()
        self._save_resume(entry)

    def resume(self, key: str) -> None:
        entry = self._entry(key)
        entry.paused = False
        entry.stalled = False
        entry.last_data = time.monotonic()
        entry.handle.resume()

    def remove(self, key: str, delete_data: bool = False) -> None:
        """Drop the torrent from the session (and its resume data); files stay unless
        ``delete_data``."""
        entry = self._entry(key)
        with self._lock:
            self._entries.pop(key, None)
            if self._by_ih.get(entry.ih) is entry:
                del self._by_ih[entry.ih]
        options = lt.options_t.delete_files if delete_data else 0
        if entry.handle.is_valid():
            self.session.remove_torrent(entry.handle, options)
        self._resume_path(key).unlink(missing_ok=True)
        seeding.record_path(self.state_dir, key).unlink(missing_ok=True)

    def status(self, key: str) -> TorrentStatus:
        entry = self._entry(key)
        st = entry.handle.status()
        now = time.monotonic()
        done, total = _bytes(entry, st)
        ratio = _ratio(entry, st)
        web = 0
        with contextlib.suppress(RuntimeError):
            web = sum(1 for p in entry.handle.get_peer_info() if p.connection_type != 0)
        return TorrentStatus(
            key=key,
            name=st.name,
            infohash=entry.ih,
            phase=entry.phase,
            state=_state_name(st, entry),
            done=done,
            total=total,
            rate=float(st.download_payload_rate),
            upload_rate=float(st.upload_payload_rate),
            peers=st.num_peers,
            seeds=st.num_seeds,
            web_seeds=web,
            ratio=ratio,
            uploaded=st.all_time_upload,
            downloaded_this_session=st.total_payload_download,
            has_metadata=st.has_metadata,
            paused=bool(st.flags & lt.torrent_flags.paused),
            seconds_without_data=0.0
            if entry.phase in ("seeding", "done")
            else now - entry.last_data,
            pieces_verified=st.num_pieces,
            num_pieces=len(st.pieces),
            error=entry.error or (st.errc.message() if st.errc.value() else None),
        )

    # ----------------------------------------------------------------- probing

    def probe(
        self,
        source: TorrentSource,
        *,
        window: float = 10.0,
        peers: tuple[tuple[str, int], ...] = (),
        trackers: tuple[str, ...] = (),
        files: tuple[str, ...] | None = None,
        keep: float = 0.0,
    ) -> SwarmEvidence:
        """Watch the swarm for ``window`` seconds: seeds and peers from connections, the peer
        list (``peers`` hints, trackers, DHT) and scrapes, and the payload rate, fetching the
        wanted ``files`` (None: all) meanwhile. With ``keep`` > 0 the probe stays in the
        session that long for ``add`` to adopt (``drop_probe`` ends it). Blocks; call it from
        a worker thread."""
        return probing.probe(
            self, source, window=window, peers=peers, trackers=trackers, files=files, keep=keep
        )

    def drop_probe(self, source: TorrentSource) -> None:
        """Discard the kept probe of ``source`` and what it downloaded (no-op when none)."""
        probing.drop(self, source)

    def restore_seeding(self, accept: Callable[[str], bool] = lambda key: True) -> list[str]:
        """Put back into the session the torrents that were seeding when the daemon last
        stopped and whose policy is not met yet, from their resume data; files changed on
        disk since are checked by libtorrent, and not seeded when they fail. ``accept(key)``
        False forgets a torrent. Returns the keys put back."""
        return seeding.restore(self, accept)

    # ----------------------------------------------------------------- diagnostics

    def facts(self) -> doc.SessionFacts:
        now = time.monotonic()
        with self._lock:
            return doc.SessionFacts(
                uptime=now - self._started,
                listen_port=self.settings.listen_port
                if self.settings.listen_port
                else (self._listening[0].port if self._listening else 0),
                listening=list(self._listening),
                listen_failures=list(self._listen_failures),
                upnp=self.settings.upnp,
                natpmp=self.settings.natpmp,
                port_mappings=list(self._port_maps),
                port_mapping_errors=list(self._port_map_errors),
                dht=self.settings.dht,
                dht_nodes=self._dht_nodes,
                dht_history=list(self._dht_history),
                dht_bootstrap=list(self.settings.dht_bootstrap),
                dht_bootstrap_answered=list(self._bootstrap_answered),
                dht_bootstrap_unresolved=list(self._bootstrap_unresolved),
                dht_bootstrap_complete=self._dht_bootstrap_complete,
                trackers=list(self._trackers.values()),
                incoming_connections=self._incoming,
                peers_seen=self._peers_seen,
                peers_since=self._peers_since,
                external_address=self._external,
                udp_errors=list(self._udp_errors),
                torrents=len([e for e in self._entries.values() if not e.probe]),
            )

    def session_status(self) -> dict[str, object]:
        """Session facts as JSON-able values (what ``acquirectl doctor`` shows as facts)."""
        f = self.facts()
        return {
            "uptime": round(f.uptime, 1),
            "listen_port": f.listen_port,
            "listening": [f"{s.transport} {s.address}:{s.port}" for s in f.listening],
            "listen_failures": [
                f"{s.transport} {s.address}:{s.port}: {s.error}"
                + (f" (held by {s.holder})" if s.holder else "")
                for s in f.listen_failures
            ],
            "upnp": f.upnp,
            "natpmp": f.natpmp,
            "dht": f.dht,
            "dht_nodes": f.dht_nodes,
            "dht_ready": doc.dht_ready(f),
            "dht_history": [[round(t, 1), n] for t, n in f.dht_history[-20:]],
            "dht_bootstrap_answered": f.dht_bootstrap_answered,
            "incoming_connections": f.incoming_connections,
            "peers_seen": f.peers_seen,
            "external_address": f.external_address,
            "torrents": f.torrents,
        }

    def doctor(self) -> list[Finding]:
        """The session's diagnostics in plain words, each with a fix."""
        return doc.diagnose(self.facts())

    # ----------------------------------------------------------------- pump

    def _emit(self, event: object) -> None:
        try:
            self.on_event(event)
        except Exception:
            log.exception("event handler failed for %r", event)

    def _save_resume(self, entry: _Entry) -> bool:
        if entry.probe or not entry.handle.is_valid():
            return False
        with self._lock:
            self._pending_saves += 1
        entry.handle.save_resume_data(
            lt.save_resume_flags_t.save_info_dict | lt.save_resume_flags_t.flush_disk_cache
        )
        return True

    def _run_pump(self) -> None:
        ses = self._session
        assert ses is not None
        while not self._stop.is_set():
            try:
                if ses.wait_for_alert(200) is not None:
                    for alert in ses.pop_alerts():
                        self._handle(alert)
                now = time.monotonic()
                if now - self._last_tick >= self.settings.tick_interval:
                    self._last_tick = now
                    self._tick(ses, now)
            except Exception:
                log.exception("torrent alert pump error")
                time.sleep(0.2)

    def _find(self, handle: lt.torrent_handle) -> _Entry | None:
        try:
            ih = infohash_hex(handle.info_hashes())
        except RuntimeError:
            return None
        with self._lock:
            entry = self._by_ih.get(ih)
            if entry is not None:
                return entry
            for e in self._entries.values():
                if e.handle == handle:
                    return e
        return None

    def _handle(self, a: lt.alert) -> None:
        if isinstance(a, lt.state_update_alert):
            for st in a.status:
                entry = self._find(st.handle)
                if entry is not None:
                    self._on_status(entry, st)
        elif isinstance(a, lt.dht_pkt_alert):
            self._on_dht_packet(a.message())
        elif isinstance(a, lt.dht_stats_alert):
            nodes = sum(int(b.get("num_nodes", 0)) for b in a.routing_table)
            changed = nodes != self._dht_nodes
            with self._lock:
                self._dht_nodes = nodes
                t = time.monotonic() - self._started
                if changed or not self._dht_history or t - self._dht_history[-1][0] >= 30:
                    self._dht_history.append((t, nodes))
                    del self._dht_history[:-200]
            if changed:
                self._emit(DhtStatus(nodes, nodes > 0))
        elif isinstance(a, lt.dht_bootstrap_alert):
            self._dht_bootstrap_complete = True
        elif isinstance(a, lt.metadata_received_alert):
            entry = self._find(a.handle)
            if entry is not None:
                self._on_metadata(entry)
        elif isinstance(a, lt.torrent_finished_alert):
            entry = self._find(a.handle)
            if entry is not None and not entry.probe:
                self._start_finish(entry)
        elif isinstance(a, lt.torrent_checked_alert):
            entry = self._find(a.handle)
            if entry is not None and entry.phase == "checking":
                seeding.on_checked(self, entry)
        elif isinstance(a, lt.cache_flushed_alert):
            entry = self._find(a.handle)
            if entry is not None:
                entry.flushed.set()
        elif isinstance(a, lt.file_renamed_alert):
            entry = self._find(a.handle)
            if entry is not None:
                entry.pending_renames.pop(a.index, None)
                if not entry.pending_renames:
                    entry.renamed.set()
        elif isinstance(a, lt.file_rename_failed_alert):
            entry = self._find(a.handle)
            if entry is not None:
                entry.rename_error = a.error.message()
                entry.renamed.set()
        elif isinstance(a, lt.save_resume_data_alert):
            entry = self._find(a.handle)
            data = lt.write_resume_data_buf(a.params)
            if entry is not None and not entry.probe and entry.key in self._entries:
                path = self._resume_path(entry.key)
                try:
                    _write_atomic(path, data)
                    self._emit(ResumeSaved(entry.key, path))
                except OSError as exc:
                    log.warning("cannot save resume data of %s: %s", entry.key, exc)
            if entry is not None:
                entry.saved.set()
            self._save_done()
        elif isinstance(a, lt.save_resume_data_failed_alert):
            self._save_done()
        elif isinstance(a, (lt.file_error_alert, lt.torrent_error_alert)):
            entry = self._find(a.handle)
            if entry is not None and not entry.probe:
                code = a.error.value()
                msg = a.error.message()
                filename = _alert_filename(a)
                err: SourceError
                if code == errno.ENOSPC:
                    err = DiskFull(
                        f"disk full while writing {filename or entry.key}", file=filename
                    )
                else:
                    err = TorrentDiskError(
                        f"{entry.key}: {msg}" + (f" ({filename})" if filename else ""),
                        file=filename,
                        errno=code,
                    )
                entry.error = str(err)
                entry.phase = "failed"
                self._emit(TorrentFailed(entry.key, err))
        elif isinstance(a, lt.listen_succeeded_alert):
            sock = doc.Socket(str(a.address), int(a.port), _socket_type(a.socket_type))
            with self._lock:
                self._listening.append(sock)
            self._emit(ListenSucceeded(sock.address, sock.port, sock.transport))
        elif isinstance(a, lt.listen_failed_alert):
            transport = _socket_type(a.socket_type)
            holder = None
            if a.error.value() == errno.EADDRINUSE:
                holder = doc.port_holder(int(a.port), transport)
            fail = doc.SocketFailure(
                str(a.address), int(a.port), transport, a.error.message(), holder
            )
            with self._lock:
                self._listen_failures.append(fail)
            self._emit(ListenFailed(fail.address, fail.port, transport, fail.error, holder))
        elif isinstance(a, (lt.tracker_reply_alert, lt.tracker_error_alert)):
            self._on_tracker(a)
        elif isinstance(a, lt.scrape_reply_alert):
            entry = self._find(a.handle)
            if entry is not None:
                entry.scrape_complete = max(entry.scrape_complete, int(a.complete))
                entry.scrape_incomplete = max(entry.scrape_incomplete, int(a.incomplete))
        elif isinstance(a, lt.dht_reply_alert):
            entry = self._find(a.handle)
            if entry is not None:
                entry.dht_peers = max(entry.dht_peers, int(a.num_peers))
        elif isinstance(a, lt.incoming_connection_alert):
            with self._lock:
                self._incoming += 1
        elif isinstance(a, lt.external_ip_alert):
            address = str(a.external_address)
            if address != self._external:
                self._external = address
                self._emit(ExternalAddress(address))
        elif isinstance(a, lt.portmap_alert):
            with self._lock:
                self._port_maps.append(a.message())
                del self._port_maps[:-10]
        elif isinstance(a, lt.portmap_error_alert):
            with self._lock:
                self._port_map_errors.append(a.message())
                del self._port_map_errors[:-10]
        elif isinstance(a, lt.udp_error_alert):
            with self._lock:
                self._udp_errors.append(a.message())
                del self._udp_errors[:-10]
        elif isinstance(a, lt.url_seed_alert):
            entry = self._find(a.handle)
            if entry is not None and not entry.probe:
                self._emit(
                    WebSeedFailed(entry.key, a.server_url(), a.error_message() or a.message())
                )

    def _save_done(self) -> None:
        with self._saves:
            self._pending_saves = max(0, self._pending_saves - 1)
            self._saves.notify_all()

    def _on_tracker(self, a: lt.tracker_reply_alert | lt.tracker_error_alert) -> None:
        entry = self._find(a.handle)
        if entry is None or entry.probe:
            return
        url = a.tracker_url()
        if isinstance(a, lt.tracker_reply_alert):
            fact = doc.TrackerFact(entry.key, url, True, "ok", int(a.num_peers), 0)
        else:
            reason = a.failure_reason() or a.error.message()
            fact = doc.TrackerFact(entry.key, url, False, reason, 0, int(a.times_in_row))
        with self._lock:
            self._trackers[(entry.key, url)] = fact
        self._emit(TrackerResult(entry.key, url, fact.ok, fact.message, fact.peers))

    def _on_status(self, entry: _Entry, st: lt.torrent_status) -> None:
        now = time.monotonic()
        if st.total_payload_download != entry.last_payload:
            entry.last_payload = st.total_payload_download
            entry.last_data = now
            entry.stalled = False
        entry.ratio = _ratio(entry, st)
        entry.peers = st.num_peers
        entry.seeds = st.num_seeds
        if st.num_peers > 0:
            with self._lock:
                self._peers_seen = max(self._peers_seen, st.num_peers)
                if self._peers_since is None:
                    self._peers_since = now - self._started
        if entry.probe or entry.phase == "metadata":
            return
        self._emit(_progress(entry, st, _state_name(st, entry), entry.ratio))

    def _on_dht_packet(self, message: str) -> None:
        if not message.startswith("<=="):
            return
        m = _PKT_ENDPOINT6.match(message) or _PKT_ENDPOINT.match(message)
        if not m:
            return
        name = self._bootstrap_addrs.get((m.group(1), int(m.group(2))))
        if name is not None and name not in self._bootstrap_answered:
            with self._lock:
                self._bootstrap_answered.append(name)

    def _resolve_bootstrap(self) -> None:
        for entry, (host, port) in zip(
            self.settings.dht_bootstrap,
            bootstrap_endpoints(self.settings.dht_bootstrap),
            strict=True,
        ):
            try:
                infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)
            except OSError:
                with self._lock:
                    self._bootstrap_unresolved.append(entry)
                continue
            for info in infos:
                self._bootstrap_addrs[(str(info[4][0]), int(info[4][1]))] = entry

    def _on_metadata(self, entry: _Entry) -> None:
        if entry.probe:
            probing.on_metadata(entry)
            return
        if entry.request is None:
            return
        request = entry.request
        handle = entry.handle
        ti = handle.torrent_file()
        if ti is None:
            return
        files = torrent_files(ti)
        try:
            wanted = map_files(files, request.files, Path(request.save_dir), ti.name())
        except TorrentError as exc:
            entry.phase = "failed"
            entry.error = str(exc)
            handle.pause()
            self._emit(TorrentFailed(entry.key, exc))
            return
        for index, (_, final) in wanted.items():
            final.parent.mkdir(parents=True, exist_ok=True)
            handle.rename_file(index, str(final) + PART_SUFFIX)
        entry.wanted = wanted
        priorities = [4 if i in wanted else 0 for i in range(ti.layout().num_files())]
        seeds = (
            request.web_seeds
            if len(files) == 1
            else tuple(u for u in request.web_seeds if u.endswith("/"))
        )
        for url in seeds:
            handle.add_url_seed(url)
        entry.phase = "downloading"
        entry.last_data = time.monotonic()
        handle.prioritize_files(priorities)
        total = sum(size for i, _, size in files if i in wanted)
        entry.wanted_size = total
        self._emit(MetadataReceived(entry.key, ti.name(), total))

    def _start_finish(self, entry: _Entry) -> None:
        """Run ``_finish`` on a worker, once per completion."""
        with self._lock:
            if entry.phase != "downloading":
                return
            entry.phase = "finishing"
        threading.Thread(
            target=self._finish, args=(entry,), name="torrent-finish", daemon=True
        ).start()

    def _finish(self, entry: _Entry) -> None:
        """Worker: flush, check digests, rename .part files into place, report."""
        handle = entry.handle
        try:
            st = handle.status()
            if not (
                st.has_metadata and st.total_wanted > 0 and st.total_wanted_done == st.total_wanted
            ):
                entry.phase = "downloading"
                return
            entry.flushed.clear()
            handle.flush_cache()
            entry.flushed.wait(30)
            request = entry.request
            assert request is not None
            digests: dict[str, dict[str, str]] = {}
            renames: dict[int, Path] = {}
            for index, (name, final) in entry.wanted.items():
                part = Path(str(final) + PART_SUFFIX)
                current = part if part.exists() else final
                wanted_digests = dict(request.digests.get(name, {}))
                if current == part:
                    algos = sorted(set(wanted_digests) | {"sha256"})
                    actual = _hash_files(part, algos)
                    for algo, expected in wanted_digests.items():
                        if actual[algo] != expected.lower():
                            handle.pause()
                            entry.phase = "failed"
                            err = DigestMismatch(
                                f"{name} from the torrent has {algo} {actual[algo]}, the manifest "
                                f"says {expected}",
                                algorithm=algo,
                                expected=expected,
                                actual=actual[algo],
                                file=str(part),
                            )
                            entry.error = str(err)
                            self._emit(TorrentFailed(entry.key, err))
                            return
                    digests[name] = actual
                    renames[index] = final
            if renames:
                entry.renamed.clear()
                entry.rename_error = None
                entry.pending_renames = dict(renames)
                for index, final in renames.items():
                    handle.rename_file(index, str(final))
                if not entry.renamed.wait(60) or entry.rename_error:
                    entry.phase = "failed"
                    err2 = TorrentDiskError(
                        f"{entry.key}: cannot move the finished files into place: "
                        f"{entry.rename_error or 'timed out'}",
                        files=[str(p) for p in renames.values()],
                    )
                    entry.error = str(err2)
                    self._emit(TorrentFailed(entry.key, err2))
                    return
            entry.phase = "seeding"
            entry.finished_at = time.monotonic()
            seeding.write_record(self, entry)
            # On disk before the daemon hears of it: a kill right after "done" must find
            # the resume data of the finished torrent to seed it again at the next start.
            entry.saved.clear()
            if self._save_resume(entry):
                entry.saved.wait(10)
            # A small torrent can finish between two updates: always report the end state.
            st = handle.status()
            self._emit(_progress(entry, st, "seeding", _ratio(entry, st)))
            self._emit(
                TorrentFinished(entry.key, {n: f for n, f in entry.wanted.values()}, digests)
            )
        except Exception as exc:
            log.exception("finishing %s failed", entry.key)
            entry.phase = "failed"
            err3 = TorrentDiskError(f"{entry.key}: finishing failed: {exc}")
            entry.error = str(err3)
            self._emit(TorrentFailed(entry.key, err3))

    def _tick(self, ses: lt.session, now: float) -> None:
        ses.post_torrent_updates()
        if self.settings.dht and now - self._last_dht_poll >= 2.0:
            self._last_dht_poll = now
            ses.post_dht_stats()
        if self._dht_log_on and (
            now - self._started > self.settings.dht_diagnostics_window
            or len(self._bootstrap_answered) == len(self.settings.dht_bootstrap)
        ):
            ses.apply_settings({"alert_mask": BASE_ALERTS})
            self._dht_log_on = False
        save_all = now - self._last_resume >= self.settings.resume_interval
        if save_all:
            self._last_resume = now
        with self._lock:
            entries = list(self._entries.values())
        s = self.settings
        probing.expire(self, now)
        for e in entries:
            if e.probe:
                continue
            if e.phase == "metadata":
                waited = now - e.added
                if waited >= s.metadata_timeout:
                    e.phase = "failed"
                    err = MetadataTimeout(
                        f"{e.key}: no peer sent the torrent's metadata in {waited:.0f} s",
                        waited=round(waited),
                        dht_nodes=self._dht_nodes,
                    )
                    e.error = str(err)
                    e.handle.pause()
                    self._emit(TorrentFailed(e.key, err))
                    continue
                self._emit(MetadataWaiting(e.key, waited, e.peers, self._dht_nodes))
            if e.phase in ("metadata", "downloading") and not e.paused and not e.stalled:
                quiet = now - e.last_data
                if quiet >= s.stall_window:
                    e.stalled = True
                    self._emit(TorrentStalled(e.key, quiet, e.peers, e.seeds))
            if e.phase == "seeding" and e.finished_at is not None:
                seconds = e.seeded_before + now - e.finished_at
                if seeding.policy_met(e.ratio, seconds, e.seed_ratio, e.seed_time):
                    e.phase = "done"
                    e.handle.pause()
                    self._save_resume(e)
                    self._emit(SeedingDone(e.key, e.ratio, seconds))
                elif save_all:
                    seeding.update_record(self, e, now)
            if save_all and e.phase != "failed" and e.handle.need_save_resume_data():
                self._save_resume(e)


def _wanted_size(ti: lt.torrent_info, wanted: dict[int, tuple[str, Path]]) -> int:
    return sum(size for i, _, size in torrent_files(ti) if i in wanted)


def _bytes(entry: _Entry, st: lt.torrent_status) -> tuple[int, int]:
    """(done, total) in bytes of the wanted files, scaled from libtorrent's piece counts."""
    if entry.wanted_size <= 0 or st.total_wanted <= 0:
        return int(st.total_wanted_done), int(st.total_wanted)
    if st.total_wanted_done >= st.total_wanted:
        return entry.wanted_size, entry.wanted_size
    done = st.total_wanted_done * entry.wanted_size // st.total_wanted
    return min(int(done), entry.wanted_size), entry.wanted_size


def _progress(entry: _Entry, st: lt.torrent_status, state: str, ratio: float) -> TorrentProgress:
    done, total = _bytes(entry, st)
    return TorrentProgress(
        key=entry.key,
        done=done,
        total=total,
        rate=float(st.download_payload_rate),
        upload_rate=float(st.upload_payload_rate),
        peers=st.num_peers,
        seeds=st.num_seeds,
        state=state,
        ratio=ratio,
    )


def _ratio(entry: _Entry, st: lt.torrent_status) -> float:
    size = entry.wanted_size or st.total_wanted
    return st.all_time_upload / size if size else 0.0


def _alert_filename(a: lt.alert) -> str:
    value = getattr(a, "filename", "")
    if callable(value):
        value = value()
    return str(value or "")


def _socket_type(value: object) -> str:
    name = str(value).rsplit(".", 1)[-1]
    return {
        "tcp": "TCP",
        "utp": "uTP",
        "udp": "UDP",
        "tcp_ssl": "SSL/TCP",
        "utp_ssl": "SSL/uTP",
    }.get(name.lower(), name)


def _state_name(st: lt.torrent_status, entry: _Entry) -> str:
    if entry.phase in ("finishing", "seeding", "failed", "done"):
        return entry.phase
    if st.flags & lt.torrent_flags.paused:
        return "paused"
    if entry.stalled:
        return "stalled"
    s = st.state
    if s in (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data):
        return "checking"
    if s == lt.torrent_status.downloading_metadata:
        return "metadata"
    if s in (lt.torrent_status.seeding, lt.torrent_status.finished):
        return "finishing"
    return "downloading"


__all__ = ["TorrentEngine", "TorrentRequest", "TorrentStatus"]

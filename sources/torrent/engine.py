"""The daemon's one libtorrent session: add/pause/remove torrents, report plain events.

Threads: the caller's (``add``, ``pause``, ``status``... are thread-safe), the alert pump
(``pump``: the only thread that pops alerts; it converts each alert into plain values
before the next pop, since libtorrent invalidates alert objects then), and one short-lived
worker per completed torrent that checks the manifest's digests and renames the files into
place. Probes live in ``probing``, seeding across restarts in ``seeding``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import libtorrent as lt

from acquired.sources.choice import SwarmEvidence
from acquired.sources.torrent import doctor as doc
from acquired.sources.torrent import probing, pump, seeding
from acquired.sources.torrent.entries import (
    PART_SUFFIX,
    TorrentRequest,
    TorrentStatus,
    _bytes,
    _Entry,
    _ratio,
    _state_name,
    _wanted_size,
)
from acquired.sources.torrent.errors import (
    DuplicateTorrent,
    InvalidTorrent,
    TorrentError,
    UnknownTorrent,
)
from acquired.sources.torrent.events import Finding
from acquired.sources.torrent.resolve import (
    TorrentSource,
    expected_infohash,
    infohash_hex,
    load_params,
    map_files,
    torrent_files,
)
from acquired.sources.torrent.settings import TorrentSettings, settings_pack

log = logging.getLogger(__name__)

BASE_ALERTS = pump.BASE_ALERTS


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
            mask |= int(lt.alert_category.dht_log)
            self._dht_log_on = True
            threading.Thread(
                target=pump.resolve_bootstrap, args=(self,), name="torrent-dht-resolve", daemon=True
            ).start()
        self._started = time.monotonic()
        pack: Any = settings_pack(self.settings, mask)
        self._session = lt.session(pack)
        self._stop.clear()
        self._pump = threading.Thread(
            target=pump.run_pump, args=(self,), name="torrent-alerts", daemon=True
        )
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
        """The running libtorrent session; raises TorrentError when the engine is stopped."""
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
            wanted = plan_files(atp, request)
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

    def _entry(self, key: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            raise UnknownTorrent(f"no torrent {key!r} is active", key=key)
        return entry

    def keys(self) -> list[str]:
        """The keys of the torrents the engine holds (probes excluded)."""
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
        """Start transferring again after ``pause(key)``."""
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
        """Progress, rates, peers and state of one torrent now."""
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
        """What ``doctor()`` judges: sockets, DHT, trackers and peers seen so far."""
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
        return doc.session_status(self.facts())

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

    def _start_finish(self, entry: _Entry) -> None:
        """Finish ``entry`` on a worker (once per completion)."""
        pump.start_finish(self, entry)


__all__ = ["PART_SUFFIX", "TorrentEngine", "TorrentRequest", "TorrentStatus"]


def plan_files(atp: lt.add_torrent_params, request: TorrentRequest) -> dict[int, tuple[str, Path]]:
    """Map the wanted files of the torrent to their final paths (others at priority 0),
    rename unfinished ones to their ``.part`` names and add the usable web seeds."""
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

"""The alert pump: the only thread that pops libtorrent's alerts, turning each into plain
values (events, diagnostics, entry state) before the next pop, since libtorrent invalidates
alert objects then; its periodic tick (progress, stalls, metadata timeouts, seeding policy,
resume data); and the worker that finishes a completed torrent (digests, renames)."""

from __future__ import annotations

import errno
import logging
import re
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import libtorrent as lt

from acquired.sources.errors import DiskFull, SourceError
from acquired.sources.torrent import doctor as doc
from acquired.sources.torrent import probing, seeding
from acquired.sources.torrent.entries import (
    PART_SUFFIX,
    _Entry,
    _hash_files,
    _progress,
    _ratio,
    _state_name,
)
from acquired.sources.torrent.errors import (
    DigestMismatch,
    MetadataTimeout,
    TorrentDiskError,
    TorrentError,
)
from acquired.sources.torrent.events import (
    DhtStatus,
    ExternalAddress,
    ListenFailed,
    ListenSucceeded,
    MetadataReceived,
    MetadataWaiting,
    ResumeSaved,
    SeedingDone,
    TorrentFailed,
    TorrentFinished,
    TorrentStalled,
    TrackerResult,
    WebSeedFailed,
)
from acquired.sources.torrent.resolve import (
    _write_atomic,
    infohash_hex,
    map_files,
    torrent_files,
)
from acquired.sources.torrent.settings import bootstrap_endpoints

if TYPE_CHECKING:
    from acquired.sources.torrent.engine import TorrentEngine

log = logging.getLogger("acquired.sources.torrent.engine")

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


def run_pump(engine: TorrentEngine) -> None:
    """The alert pump thread: turns libtorrent alerts into plain events until stopped."""
    ses = engine._session
    assert ses is not None
    while not engine._stop.is_set():
        try:
            if ses.wait_for_alert(200) is not None:
                for alert in ses.pop_alerts():
                    handle_alert(engine, alert)
            now = time.monotonic()
            if now - engine._last_tick >= engine.settings.tick_interval:
                engine._last_tick = now
                tick(engine, ses, now)
        except Exception:
            log.exception("torrent alert pump error")
            time.sleep(0.2)


def find(engine: TorrentEngine, handle: lt.torrent_handle) -> _Entry | None:
    """The engine's record of the torrent behind a handle, or None when it is not ours any more."""
    try:
        ih = infohash_hex(handle.info_hashes())
    except RuntimeError:
        return None
    with engine._lock:
        entry = engine._by_ih.get(ih)
        if entry is not None:
            return entry
        for e in engine._entries.values():
            if e.handle == handle:
                return e
    return None


def handle_alert(engine: TorrentEngine, a: lt.alert) -> None:
    """Dispatch one alert to the handler of its type."""
    if isinstance(a, lt.state_update_alert):
        for st in a.status:
            entry = find(engine, st.handle)
            if entry is not None:
                on_status(engine, entry, st)
    elif isinstance(a, lt.dht_pkt_alert):
        on_dht_packet(engine, a.message())
    elif isinstance(a, lt.dht_stats_alert):
        nodes = sum(int(b.get("num_nodes", 0)) for b in a.routing_table)
        changed = nodes != engine._dht_nodes
        with engine._lock:
            engine._dht_nodes = nodes
            t = time.monotonic() - engine._started
            if changed or not engine._dht_history or t - engine._dht_history[-1][0] >= 30:
                engine._dht_history.append((t, nodes))
                del engine._dht_history[:-200]
        if changed:
            engine._emit(DhtStatus(nodes, nodes > 0))
    elif isinstance(a, lt.dht_bootstrap_alert):
        engine._dht_bootstrap_complete = True
    elif isinstance(a, lt.metadata_received_alert):
        entry = find(engine, a.handle)
        if entry is not None:
            on_metadata(engine, entry)
    elif isinstance(a, lt.torrent_finished_alert):
        entry = find(engine, a.handle)
        if entry is not None and not entry.probe:
            start_finish(engine, entry)
    elif isinstance(a, lt.torrent_checked_alert):
        entry = find(engine, a.handle)
        if entry is not None and entry.phase == "checking":
            seeding.on_checked(engine, entry)
    elif isinstance(a, lt.cache_flushed_alert):
        entry = find(engine, a.handle)
        if entry is not None:
            entry.flushed.set()
    elif isinstance(a, lt.file_renamed_alert):
        entry = find(engine, a.handle)
        if entry is not None:
            entry.pending_renames.pop(a.index, None)
            if not entry.pending_renames:
                entry.renamed.set()
    elif isinstance(a, lt.file_rename_failed_alert):
        entry = find(engine, a.handle)
        if entry is not None:
            entry.rename_error = a.error.message()
            entry.renamed.set()
    elif isinstance(a, lt.save_resume_data_alert):
        entry = find(engine, a.handle)
        data = lt.write_resume_data_buf(a.params)
        if entry is not None and not entry.probe and entry.key in engine._entries:
            path = engine._resume_path(entry.key)
            try:
                _write_atomic(path, data)
                engine._emit(ResumeSaved(entry.key, path))
            except OSError as exc:
                log.warning("cannot save resume data of %s: %s", entry.key, exc)
        if entry is not None:
            entry.saved.set()
        save_done(engine)
    elif isinstance(a, lt.save_resume_data_failed_alert):
        save_done(engine)
    elif isinstance(a, (lt.file_error_alert, lt.torrent_error_alert)):
        entry = find(engine, a.handle)
        if entry is not None and not entry.probe:
            code = a.error.value()
            msg = a.error.message()
            filename = _alert_filename(a)
            err: SourceError
            if code == errno.ENOSPC:
                err = DiskFull(f"disk full while writing {filename or entry.key}", file=filename)
            else:
                err = TorrentDiskError(
                    f"{entry.key}: {msg}" + (f" ({filename})" if filename else ""),
                    file=filename,
                    errno=code,
                )
            entry.error = str(err)
            entry.phase = "failed"
            engine._emit(TorrentFailed(entry.key, err))
    elif isinstance(a, lt.listen_succeeded_alert):
        sock = doc.Socket(str(a.address), int(a.port), _socket_type(a.socket_type))
        with engine._lock:
            engine._listening.append(sock)
        engine._emit(ListenSucceeded(sock.address, sock.port, sock.transport))
    elif isinstance(a, lt.listen_failed_alert):
        transport = _socket_type(a.socket_type)
        holder = None
        if a.error.value() == errno.EADDRINUSE:
            holder = doc.port_holder(int(a.port), transport)
        fail = doc.SocketFailure(str(a.address), int(a.port), transport, a.error.message(), holder)
        with engine._lock:
            engine._listen_failures.append(fail)
        engine._emit(ListenFailed(fail.address, fail.port, transport, fail.error, holder))
    elif isinstance(a, (lt.tracker_reply_alert, lt.tracker_error_alert)):
        on_tracker(engine, a)
    elif isinstance(a, lt.scrape_reply_alert):
        entry = find(engine, a.handle)
        if entry is not None:
            entry.scrape_complete = max(entry.scrape_complete, int(a.complete))
            entry.scrape_incomplete = max(entry.scrape_incomplete, int(a.incomplete))
    elif isinstance(a, lt.dht_reply_alert):
        entry = find(engine, a.handle)
        if entry is not None:
            entry.dht_peers = max(entry.dht_peers, int(a.num_peers))
    elif isinstance(a, lt.incoming_connection_alert):
        with engine._lock:
            engine._incoming += 1
    elif isinstance(a, lt.external_ip_alert):
        address = str(a.external_address)
        if address != engine._external:
            engine._external = address
            engine._emit(ExternalAddress(address))
    elif isinstance(a, lt.portmap_alert):
        with engine._lock:
            engine._port_maps.append(a.message())
            del engine._port_maps[:-10]
    elif isinstance(a, lt.portmap_error_alert):
        with engine._lock:
            engine._port_map_errors.append(a.message())
            del engine._port_map_errors[:-10]
    elif isinstance(a, lt.udp_error_alert):
        with engine._lock:
            engine._udp_errors.append(a.message())
            del engine._udp_errors[:-10]
    elif isinstance(a, lt.url_seed_alert):
        entry = find(engine, a.handle)
        if entry is not None and not entry.probe:
            engine._emit(WebSeedFailed(entry.key, a.server_url(), a.error_message() or a.message()))


def save_done(engine: TorrentEngine) -> None:
    """Count one resume-data save as finished, waking whoever waits for all saves."""
    with engine._saves:
        engine._pending_saves = max(0, engine._pending_saves - 1)
        engine._saves.notify_all()


def on_tracker(engine: TorrentEngine, a: lt.tracker_reply_alert | lt.tracker_error_alert) -> None:
    """Record a tracker's reply or error for the torrent's diagnostics."""
    entry = find(engine, a.handle)
    if entry is None or entry.probe:
        return
    url = a.tracker_url()
    if isinstance(a, lt.tracker_reply_alert):
        fact = doc.TrackerFact(entry.key, url, True, "ok", int(a.num_peers), 0)
    else:
        reason = a.failure_reason() or a.error.message()
        fact = doc.TrackerFact(entry.key, url, False, reason, 0, int(a.times_in_row))
    with engine._lock:
        engine._trackers[(entry.key, url)] = fact
    engine._emit(TrackerResult(entry.key, url, fact.ok, fact.message, fact.peers))


def on_status(engine: TorrentEngine, entry: _Entry, st: lt.torrent_status) -> None:
    """Update a torrent's progress from a status update; report stalls and progress."""
    now = time.monotonic()
    if st.total_payload_download != entry.last_payload:
        entry.last_payload = st.total_payload_download
        entry.last_data = now
        entry.stalled = False
    entry.ratio = _ratio(entry, st)
    entry.peers = st.num_peers
    entry.seeds = st.num_seeds
    if st.num_peers > 0:
        with engine._lock:
            engine._peers_seen = max(engine._peers_seen, st.num_peers)
            if engine._peers_since is None:
                engine._peers_since = now - engine._started
    if entry.probe or entry.phase == "metadata":
        return
    engine._emit(_progress(entry, st, _state_name(st, entry), entry.ratio))


def on_dht_packet(engine: TorrentEngine, message: str) -> None:
    """Note which DHT bootstrap nodes answered, for the doctor's diagnostics."""
    if not message.startswith("<=="):
        return
    m = _PKT_ENDPOINT6.match(message) or _PKT_ENDPOINT.match(message)
    if not m:
        return
    name = engine._bootstrap_addrs.get((m.group(1), int(m.group(2))))
    if name is not None and name not in engine._bootstrap_answered:
        with engine._lock:
            engine._bootstrap_answered.append(name)


def resolve_bootstrap(engine: TorrentEngine) -> None:
    """Resolve the DHT bootstrap host names once, so their answers can be recognised."""
    for entry, (host, port) in zip(
        engine.settings.dht_bootstrap,
        bootstrap_endpoints(engine.settings.dht_bootstrap),
        strict=True,
    ):
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)
        except OSError:
            with engine._lock:
                engine._bootstrap_unresolved.append(entry)
            continue
        for info in infos:
            engine._bootstrap_addrs[(str(info[4][0]), int(info[4][1]))] = entry


def on_metadata(engine: TorrentEngine, entry: _Entry) -> None:
    """A magnet's metadata arrived: choose the wanted files and start the transfer."""
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
        engine._emit(TorrentFailed(entry.key, exc))
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
    engine._emit(MetadataReceived(entry.key, ti.name(), total))


def start_finish(engine: TorrentEngine, entry: _Entry) -> None:
    """Run ``_finish`` on a worker, once per completion."""
    with engine._lock:
        if entry.phase != "downloading":
            return
        entry.phase = "finishing"
    threading.Thread(
        target=finish,
        args=(
            engine,
            entry,
        ),
        name="torrent-finish",
        daemon=True,
    ).start()


def finish(engine: TorrentEngine, entry: _Entry) -> None:
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
                        engine._emit(TorrentFailed(entry.key, err))
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
                engine._emit(TorrentFailed(entry.key, err2))
                return
        entry.phase = "seeding"
        entry.finished_at = time.monotonic()
        seeding.write_record(engine, entry)
        # On disk before the daemon hears of it: a kill right after "done" must find
        # the resume data of the finished torrent to seed it again at the next start.
        entry.saved.clear()
        if engine._save_resume(entry):
            entry.saved.wait(10)
        # A small torrent can finish between two updates: always report the end state.
        st = handle.status()
        engine._emit(_progress(entry, st, "seeding", _ratio(entry, st)))
        engine._emit(TorrentFinished(entry.key, {n: f for n, f in entry.wanted.values()}, digests))
    except Exception as exc:
        log.exception("finishing %s failed", entry.key)
        entry.phase = "failed"
        err3 = TorrentDiskError(f"{entry.key}: finishing failed: {exc}")
        entry.error = str(err3)
        engine._emit(TorrentFailed(entry.key, err3))


def tick(engine: TorrentEngine, ses: lt.session, now: float) -> None:
    """Periodic work of the pump: ask for status and DHT updates, save resume data when due."""
    ses.post_torrent_updates()
    if engine.settings.dht and now - engine._last_dht_poll >= 2.0:
        engine._last_dht_poll = now
        ses.post_dht_stats()
    if engine._dht_log_on and (
        now - engine._started > engine.settings.dht_diagnostics_window
        or len(engine._bootstrap_answered) == len(engine.settings.dht_bootstrap)
    ):
        ses.apply_settings({"alert_mask": BASE_ALERTS})
        engine._dht_log_on = False
    save_all = now - engine._last_resume >= engine.settings.resume_interval
    if save_all:
        engine._last_resume = now
    with engine._lock:
        entries = list(engine._entries.values())
    s = engine.settings
    probing.expire(engine, now)
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
                    dht_nodes=engine._dht_nodes,
                )
                e.error = str(err)
                e.handle.pause()
                engine._emit(TorrentFailed(e.key, err))
                continue
            engine._emit(MetadataWaiting(e.key, waited, e.peers, engine._dht_nodes))
        if e.phase in ("metadata", "downloading") and not e.paused and not e.stalled:
            quiet = now - e.last_data
            if quiet >= s.stall_window:
                e.stalled = True
                engine._emit(TorrentStalled(e.key, quiet, e.peers, e.seeds))
        if e.phase == "seeding" and e.finished_at is not None:
            seconds = e.seeded_before + now - e.finished_at
            if seeding.policy_met(e.ratio, seconds, e.seed_ratio, e.seed_time):
                e.phase = "done"
                e.handle.pause()
                engine._save_resume(e)
                engine._emit(SeedingDone(e.key, e.ratio, seconds))
            elif save_all:
                seeding.update_record(engine, e, now)
        if save_all and e.phase != "failed" and e.handle.need_save_resume_data():
            engine._save_resume(e)


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

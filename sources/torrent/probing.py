"""Looking at a swarm before the source choice, without wasting what it sends.

A probe adds the torrent the way a real transfer does (interested in the wanted files),
because a seed disconnects a peer that wants nothing: an upload-mode probe never sees a
seeder listed in ``peers`` for longer than a handshake. So the probe downloads, into
``<state>/probe/<infohash>``, for its window and measures the swarm's payload rate. When
the caller asks it to ``keep`` the probe, the torrent stays in the session ("parked") and
the next ``add`` of the same torrent adopts it — its verified pieces are moved under the
request's final names — so the probe's seconds are not lost when the torrent is chosen.
A parked probe nobody adopts is removed with its data when ``keep`` runs out.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import libtorrent as lt

from acquired.sources.choice import SwarmEvidence
from acquired.sources.torrent.entries import PART_SUFFIX, TorrentRequest, _Entry, _wanted_size
from acquired.sources.torrent.errors import InvalidTorrent, TorrentDiskError
from acquired.sources.torrent.resolve import TorrentSource, load_params, map_files, torrent_files

if TYPE_CHECKING:
    from acquired.sources.torrent.engine import TorrentEngine

PROBE_PREFIX = "probe:"
MIN_RATE_SPAN = 0.5
"""Seconds of payload needed before a probe reports a measured rate."""
ENOUGH_SPAN = 1.0
"""Seconds of payload after which the probe ends before its window: the measured rate
is what the choice uses, and the mirrors, when chosen as web seeds, join sooner."""


def probe_root(engine: TorrentEngine) -> Path:
    """Where probes write what they download (one folder per infohash)."""
    return engine.state_dir / "probe"


def probe_priorities(ti: lt.torrent_info, files: tuple[str, ...] | None) -> list[int]:
    """File priorities of a probe: the wanted files (every file when ``files`` is None)."""
    count = ti.layout().num_files()
    if files is None:
        return [4] * count
    wanted = map_files(torrent_files(ti), {f: Path(f) for f in files}, Path("."), ti.name())
    return [4 if i in wanted else 0 for i in range(count)]


def _running_evidence(engine: TorrentEngine, entry: _Entry) -> SwarmEvidence:
    st = entry.handle.status()
    return SwarmEvidence(
        seeds=max(st.num_seeds, st.list_seeds, st.num_complete, entry.scrape_complete, 0),
        peers=max(
            st.num_peers - st.num_seeds,
            st.list_peers - st.list_seeds,
            st.num_incomplete,
            entry.scrape_incomplete,
            0,
        ),
        rate=float(st.download_payload_rate),
        connected=st.num_peers,
        metadata=st.has_metadata,
        dht_nodes=engine._dht_nodes,
        window=0.0,
    )


def probe(
    engine: TorrentEngine,
    source: TorrentSource,
    *,
    window: float,
    peers: tuple[tuple[str, int], ...],
    trackers: tuple[str, ...],
    files: tuple[str, ...] | None,
    keep: float,
) -> SwarmEvidence:
    """Watch (and fetch from) the swarm for ``window`` seconds; see the module's text."""
    ses = engine.session
    atp = load_params(
        source,
        engine.settings.academic_torrents_url,
        engine.state_dir / "torrents",
        engine.settings.fetch_timeout,
    )
    ih = engine._ih_of(atp)
    with engine._lock:
        running = engine._by_ih.get(ih)
    if running is not None:
        # Already fetching (or probed just now): what it sees is the evidence.
        return _running_evidence(engine, running)
    folder = probe_root(engine) / ih
    folder.mkdir(parents=True, exist_ok=True)
    atp.save_path = str(folder)
    flags = atp.flags
    flags &= ~lt.torrent_flags.auto_managed
    flags &= ~lt.torrent_flags.paused
    if atp.ti is not None:
        atp.file_priorities = probe_priorities(atp.ti, files)
    else:
        # A magnet: the wanted files are known once the metadata arrives (on_metadata).
        flags |= lt.torrent_flags.default_dont_download
    atp.flags = flags
    for tracker in trackers:
        atp.trackers = [*atp.trackers, tracker]
    key = PROBE_PREFIX + ih
    with engine._lock:
        try:
            handle = ses.add_torrent(atp)
        except RuntimeError as exc:
            raise InvalidTorrent(f"cannot probe {ih}: {exc}", error=str(exc)) from exc
        began = time.monotonic()
        entry = _Entry(
            key=key, request=None, handle=handle, ih=ih, added=began, probe=True, probe_files=files
        )
        engine._entries[key] = entry
        engine._by_ih[ih] = entry
    kept = False
    try:
        for host, port in peers:
            handle.connect_peer((host, int(port)))
        handle.scrape_tracker()
        evidence = _watch(engine, entry, window, began)
        kept = keep > 0
        if kept:
            entry.parked_until = time.monotonic() + keep
        return evidence
    finally:
        if not kept:
            discard(engine, entry)


def _watch(engine: TorrentEngine, entry: _Entry, window: float, began: float) -> SwarmEvidence:
    handle = entry.handle
    deadline = began + window
    best_seeds = best_peers = 0
    first: tuple[float, int] | None = None
    rescraped = False
    while not engine._stop.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
        st = handle.status()
        now = time.monotonic()
        best_seeds = max(best_seeds, st.num_seeds, st.list_seeds)
        best_peers = max(best_peers, st.num_peers - st.num_seeds, st.list_peers - st.list_seeds)
        if first is None and st.total_payload_download > 0:
            first = (now, st.total_payload_download)
        if not rescraped and now > deadline - window / 2:
            handle.scrape_tracker()
            rescraped = True
        enough = first is not None and now - first[0] >= ENOUGH_SPAN
        if now >= deadline or enough or _complete(st):
            break
    st = handle.status()
    ended = time.monotonic()
    rate: float | None = None
    got = st.total_payload_download
    if first is not None and ended - first[0] >= MIN_RATE_SPAN:
        rate = (got - first[1]) / (ended - first[0])
    elif got > 0:
        rate = got / max(ended - began, 1e-3)
    return SwarmEvidence(
        seeds=max(best_seeds, st.num_seeds, st.num_complete, entry.scrape_complete, 0),
        peers=max(
            best_peers,
            st.num_incomplete,
            entry.scrape_incomplete,
            entry.dht_peers,
            0,
        ),
        rate=rate,
        connected=st.num_peers,
        metadata=st.has_metadata,
        dht_nodes=engine._dht_nodes,
        window=ended - began,
    )


def _complete(st: lt.torrent_status) -> bool:
    return bool(st.has_metadata and st.total_wanted > 0 and st.total_wanted_done >= st.total_wanted)


def on_metadata(entry: _Entry) -> None:
    """A probed magnet's metadata arrived: start fetching the wanted files."""
    ti = entry.handle.torrent_file()
    if ti is None:
        return
    with contextlib.suppress(Exception):
        entry.handle.prioritize_files(probe_priorities(ti, entry.probe_files))


def discard(engine: TorrentEngine, entry: _Entry) -> None:
    """Remove a probe from the session with what it downloaded."""
    with engine._lock:
        if engine._entries.get(entry.key) is entry:
            del engine._entries[entry.key]
        if engine._by_ih.get(entry.ih) is entry:
            del engine._by_ih[entry.ih]
    ses = engine._session
    if ses is not None and entry.handle.is_valid():
        ses.remove_torrent(entry.handle, lt.options_t.delete_files)
    # libtorrent deletes asynchronously; what is left goes at the next start.
    shutil.rmtree(probe_root(engine) / entry.ih, ignore_errors=True)


def drop(engine: TorrentEngine, source: TorrentSource) -> None:
    """Discard the parked probe of ``source``, if any (the choice went to the mirrors)."""
    with engine._lock:
        parked = [e for e in engine._entries.values() if e.parked_until is not None]
    if not parked:
        return
    atp = load_params(
        source,
        engine.settings.academic_torrents_url,
        engine.state_dir / "torrents",
        engine.settings.fetch_timeout,
    )
    ih = engine._ih_of(atp)
    for entry in parked:
        if entry.ih == ih:
            discard(engine, entry)


def expire(engine: TorrentEngine, now: float) -> None:
    """Discard parked probes nobody adopted in time (called by the pump's tick)."""
    with engine._lock:
        stale = [
            e
            for e in engine._entries.values()
            if e.parked_until is not None and now > e.parked_until
        ]
    for entry in stale:
        discard(engine, entry)


def adopt(engine: TorrentEngine, parked: _Entry, request: TorrentRequest) -> None:
    """Turn a parked probe into the transfer ``request`` asks for (see the module's text).

    Blocks until libtorrent has moved the probe's files to their ``.part`` names."""
    handle = parked.handle
    ti = handle.torrent_file()
    now = time.monotonic()
    wanted: dict[int, tuple[str, Path]] = {}
    if ti is not None:
        wanted = map_files(torrent_files(ti), request.files, Path(request.save_dir), ti.name())
    entry = _Entry(
        key=request.key,
        request=request,
        handle=handle,
        ih=parked.ih,
        added=now,
        phase="downloading" if ti is not None else "metadata",
        wanted=wanted,
        last_data=now,
        wanted_size=_wanted_size(ti, wanted) if ti is not None else 0,
        seed_ratio=engine.settings.seed_ratio,
        seed_time=engine.settings.seed_time,
        scrape_complete=parked.scrape_complete,
        scrape_incomplete=parked.scrape_incomplete,
    )
    with engine._lock:
        engine._entries.pop(parked.key, None)
        engine._entries[request.key] = entry
        engine._by_ih[parked.ih] = entry
    if ti is None:
        # Metadata still on its way: the engine's on_metadata plans the files as usual.
        _connect(handle, request)
        return
    renames = {i: Path(str(final) + PART_SUFFIX) for i, (_, final) in wanted.items()}
    entry.renamed.clear()
    entry.rename_error = None
    entry.pending_renames = dict(renames)
    for index, part in renames.items():
        part.parent.mkdir(parents=True, exist_ok=True)
        handle.rename_file(index, str(part))
    if renames and (not entry.renamed.wait(60) or entry.rename_error):
        raise TorrentDiskError(
            f"{request.key}: cannot move the probe's data into place: "
            f"{entry.rename_error or 'timed out'}",
            files=[str(p) for p in renames.values()],
        )
    count = ti.layout().num_files()
    handle.prioritize_files([4 if i in wanted else 0 for i in range(count)])
    if count > 1:
        # The rest (partial pieces of files not wanted) follows the request's folder.
        handle.move_storage(str(request.save_dir), lt.move_flags_t.dont_replace)
    else:
        with contextlib.suppress(OSError):
            (probe_root(engine) / parked.ih).rmdir()  # empty now: its file was moved
    seeds = (
        request.web_seeds if count == 1 else tuple(u for u in request.web_seeds if u.endswith("/"))
    )
    for url in seeds:
        handle.add_url_seed(url)
    _connect(handle, request)
    if _complete(handle.status()):
        # Finished during the probe: libtorrent will not say so again.
        engine._start_finish(entry)


def _connect(handle: lt.torrent_handle, request: TorrentRequest) -> None:
    for tracker in request.trackers:
        handle.add_tracker({"url": tracker})
    for host, port in request.peers:
        handle.connect_peer((host, int(port)))


def clean(engine: TorrentEngine) -> None:
    """Remove what probes of an earlier run left behind."""
    root = probe_root(engine)
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

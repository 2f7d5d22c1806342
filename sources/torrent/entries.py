"""The engine's plain records: what the daemon asks for (``TorrentRequest``), what it is
shown (``TorrentStatus``), the engine's own bookkeeping per torrent (``_Entry``), and the
pure helpers that turn libtorrent's status into the figures the daemon shows."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt

from acquired.sources.torrent.events import TorrentProgress
from acquired.sources.torrent.resolve import TorrentSource, torrent_files

PART_SUFFIX = ".part"


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

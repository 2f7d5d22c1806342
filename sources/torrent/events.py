"""Plain events of the torrent engine (frozen dataclasses; no libtorrent objects inside).

The engine's alert pump builds them from libtorrent alerts before the next pop and hands
them to ``on_event``. ``key`` is the request's key (the daemon uses ``"<job>/<file id>"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from acquired.sources.errors import SourceError

Severity = Literal["ok", "info", "warning", "error"]


@dataclass(frozen=True)
class TorrentProgress:
    """About every ``tick_interval`` for each active torrent."""

    key: str
    done: int
    """Bytes of the wanted files verified so far."""
    total: int
    """Bytes of the wanted files (0 while metadata is missing)."""
    rate: float
    """Payload bytes/s received."""
    upload_rate: float
    peers: int
    """Connected peers (seeds included)."""
    seeds: int
    state: str
    """checking, metadata, downloading, finishing, seeding, paused, stalled."""
    ratio: float
    """All-time uploaded / wanted size."""


@dataclass(frozen=True)
class MetadataWaiting:
    """A magnet still waits for its metadata from peers or the DHT."""

    key: str
    elapsed: float
    peers: int
    dht_nodes: int


@dataclass(frozen=True)
class MetadataReceived:
    """A magnet's metadata arrived: the torrent's name and wanted size are known."""

    key: str
    name: str
    total: int


@dataclass(frozen=True)
class TorrentFinished:
    """Every wanted file is complete, digest-checked and at its final path."""

    key: str
    files: dict[str, Path]
    """Path in the torrent -> final path."""
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    """Path in the torrent -> {algorithm: hex} computed before the rename."""


@dataclass(frozen=True)
class TorrentFailed:
    """The torrent cannot go on; it is paused in the session until ``remove(key)``."""

    key: str
    error: SourceError


@dataclass(frozen=True)
class TorrentStalled:
    """No payload arrived for ``stall_window`` seconds (emitted once per stall)."""

    key: str
    seconds_without_data: float
    peers: int
    seeds: int


@dataclass(frozen=True)
class SeedingDone:
    """The seeding policy is met; the torrent is paused (call ``remove(key)``)."""

    key: str
    ratio: float
    seconds: float


@dataclass(frozen=True)
class ResumeSaved:
    """A torrent's resume data was written to ``path``."""

    key: str
    path: Path


@dataclass(frozen=True)
class ListenSucceeded:
    """The session listens on this address, port and transport."""

    address: str
    port: int
    transport: str


@dataclass(frozen=True)
class ListenFailed:
    """The session could not listen on this address and port."""

    address: str
    port: int
    transport: str
    error: str
    holder: str | None = None
    """The process holding the port, when it can be found ("pid 123 (transmission)")."""


@dataclass(frozen=True)
class DhtStatus:
    """The DHT's node count changed; ``ready`` once it can look peers up."""

    nodes: int
    ready: bool


@dataclass(frozen=True)
class TrackerResult:
    """A tracker answered an announce, or failed to."""

    key: str
    url: str
    ok: bool
    message: str
    peers: int = 0


@dataclass(frozen=True)
class WebSeedFailed:
    """A web seed (HTTP mirror used by the swarm) failed."""

    key: str
    url: str
    error: str


@dataclass(frozen=True)
class ExternalAddress:
    """The address peers and trackers see the session at."""

    address: str


@dataclass(frozen=True)
class Finding:
    """One line of ``acquirectl doctor``: what was seen, and what to do about it."""

    severity: Severity
    title: str
    detail: str
    fix: str = ""

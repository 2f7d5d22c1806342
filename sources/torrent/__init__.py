"""BitTorrent source through libtorrent (the only package that imports it).

``TorrentEngine`` runs the daemon's single session; ``TorrentRequest`` says what to fetch;
events and findings are plain frozen dataclasses (``events``); errors carry stable
``torrent.*`` codes (``errors``).
"""

from acquired.sources.torrent.engine import TorrentEngine, TorrentRequest, TorrentStatus
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
    InfoHash,
    Magnet,
    TorrentFile,
    TorrentSource,
    TorrentUrl,
    parse_source,
)
from acquired.sources.torrent.settings import TorrentSettings

__all__ = [
    "DhtStatus",
    "ExternalAddress",
    "Finding",
    "InfoHash",
    "ListenFailed",
    "ListenSucceeded",
    "Magnet",
    "MetadataReceived",
    "MetadataWaiting",
    "ResumeSaved",
    "SeedingDone",
    "TorrentEngine",
    "TorrentFailed",
    "TorrentFile",
    "TorrentFinished",
    "TorrentProgress",
    "TorrentRequest",
    "TorrentSettings",
    "TorrentSource",
    "TorrentStalled",
    "TorrentStatus",
    "TorrentUrl",
    "TrackerResult",
    "WebSeedFailed",
    "parse_source",
]

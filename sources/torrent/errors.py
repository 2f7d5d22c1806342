"""Failures of the BitTorrent source, each with a stable ``code`` and a ``hint``."""

from __future__ import annotations

from acquired.common.errors import DigestMismatch as _DigestMismatch
from acquired.sources.errors import DiskFull, SourceError

__all__ = [
    "DigestMismatch",
    "DiskFull",
    "DuplicateTorrent",
    "FileNotInTorrent",
    "InfohashMismatch",
    "InvalidTorrent",
    "MetadataTimeout",
    "SeedDataChanged",
    "TorrentCancelled",
    "TorrentDiskError",
    "TorrentError",
    "TorrentFetchFailed",
    "TorrentNotFound",
    "UnknownTorrent",
]


class TorrentError(SourceError):
    """Base of the BitTorrent source's failures."""

    code = "torrent.error"
    hint = "See the daemon's log (journalctl -u acquired) for the torrent's alerts."


class InvalidTorrent(TorrentError):
    """The .torrent file or magnet URI cannot be parsed."""

    code = "torrent.invalid"
    hint = "Check that the manifest points at a real .torrent file or a magnet URI."


class TorrentFetchFailed(TorrentError):
    """The .torrent could not be downloaded (URL or Academic Torrents endpoint)."""

    code = "torrent.fetch_failed"
    hint = (
        "Check the URL and the network; for Academic Torrents check torrent.academic_torrents_url "
        "in the configuration."
    )
    retryable = True


class TorrentNotFound(TorrentError):
    """The .torrent file named by path does not exist or cannot be read."""

    code = "torrent.not_found"
    hint = "Check the path in the manifest; relative paths are resolved against the manifest."


class InfohashMismatch(TorrentError):
    """The .torrent served for an infohash describes a different torrent."""

    code = "torrent.infohash_mismatch"
    hint = (
        "The server sent the wrong .torrent for this infohash; check the infohash in the manifest "
        "or use a magnet URI instead."
    )


class FileNotInTorrent(TorrentError):
    """The manifest names a file the torrent does not contain."""

    code = "torrent.file_not_in_torrent"
    hint = "Use one of the paths listed in the details ('contains'), relative to the torrent."


class MetadataTimeout(TorrentError):
    """No peer sent the torrent's metadata (magnet URI) within the configured time."""

    code = "torrent.metadata_timeout"
    hint = (
        "No peer or DHT node knew this magnet. Run 'acquirectl doctor' to check the DHT; add a "
        ".torrent URL, a tracker or HTTP mirrors to the manifest, or raise "
        "torrent.metadata_timeout."
    )
    retryable = True


class DuplicateTorrent(TorrentError):
    """The same torrent is already active under another key."""

    code = "torrent.duplicate"
    hint = "Request all wanted files of one torrent in a single request (one manifest entry)."


class UnknownTorrent(TorrentError):
    """The engine has no torrent under this key."""

    code = "torrent.unknown"
    hint = "The transfer is not active; add it again."


class TorrentDiskError(TorrentError):
    """libtorrent could not read or write a file of the torrent."""

    code = "torrent.disk_error"
    hint = "Check permissions and the filesystem under the data root; then retry."
    retryable = True


class TorrentCancelled(TorrentError):
    """The transfer was stopped on request (pause, cancel, shutdown)."""

    code = "torrent.cancelled"
    hint = "Resume the job to continue."


class DigestMismatch(_DigestMismatch, TorrentError):
    """A completed file does not match the manifest's digest (the torrent itself is wrong).

    Code and hint are the shared ``verify.digest_mismatch``; this subclass keeps it a
    :class:`TorrentError`.
    """


class SeedDataChanged(TorrentError):
    """A file seeded before a restart changed on disk since: it is no longer seeded."""

    code = "torrent.seed_data_changed"
    hint = (
        "The file no longer matches the torrent, so it is not seeded; fetch it again "
        "('acquirectl retry JOB' after deleting it) to seed it."
    )

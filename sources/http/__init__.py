"""HTTP(S) source: ranged, segmented, resumable downloads across ranked mirrors.

The daemon's entry point is ``HttpDownload(FileRequest, HttpOptions, on_event).run()``;
see docs/architecture.md ("HTTP engine").
"""

from acquired.sources.http.download import HttpDownload
from acquired.sources.http.errors import (
    AllMirrorsFailed,
    BadUrl,
    ConnectionFailed,
    ContentRangeMismatch,
    DigestMismatch,
    DiskFull,
    DownloadCancelled,
    Forbidden,
    HttpError,
    HttpStatusError,
    NotFound,
    ServerBusy,
    ServerError,
    SizeMismatch,
    Stalled,
    Truncated,
    UnsupportedDigest,
    UnsupportedUrl,
    VersionMismatch,
)
from acquired.sources.http.events import (
    Checkpoint,
    MirrorDropped,
    MirrorStat,
    Progress,
    Restarted,
    Retrying,
)
from acquired.sources.http.model import DownloadResult, FileRequest, HttpOptions
from acquired.sources.http.ratelimit import RateLimiter

__all__ = [
    "AllMirrorsFailed",
    "BadUrl",
    "Checkpoint",
    "ConnectionFailed",
    "ContentRangeMismatch",
    "DigestMismatch",
    "DiskFull",
    "DownloadCancelled",
    "DownloadResult",
    "FileRequest",
    "Forbidden",
    "HttpDownload",
    "HttpError",
    "HttpOptions",
    "HttpStatusError",
    "MirrorDropped",
    "MirrorStat",
    "NotFound",
    "Progress",
    "RateLimiter",
    "Restarted",
    "Retrying",
    "ServerBusy",
    "ServerError",
    "SizeMismatch",
    "Stalled",
    "Truncated",
    "UnsupportedDigest",
    "UnsupportedUrl",
    "VersionMismatch",
]

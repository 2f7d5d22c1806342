"""Failures of the HTTP source. Codes are stable: the daemon stores and reacts to them."""

from __future__ import annotations

from acquired.common.errors import DigestMismatch as _DigestMismatch
from acquired.common.errors import UnsupportedAlgorithm
from acquired.sources.errors import DiskFull, SourceError

__all__ = [
    "AllMirrorsFailed",
    "BadUrl",
    "ConnectionFailed",
    "ContentRangeMismatch",
    "DigestMismatch",
    "DiskFull",
    "DownloadCancelled",
    "Forbidden",
    "HttpError",
    "HttpStatusError",
    "NotFound",
    "RangesUnsupported",
    "ServerBusy",
    "ServerError",
    "SizeMismatch",
    "Stalled",
    "Truncated",
    "UnsupportedDigest",
    "UnsupportedUrl",
    "VersionMismatch",
]


class HttpError(SourceError):
    """Base of the HTTP source's failures."""

    code = "http.error"
    hint = "See the daemon's log for details."


class DownloadCancelled(HttpError):
    """``cancel()`` was called: the transfer stopped after a last checkpoint."""

    code = "http.cancelled"
    hint = "Resume the job to continue where it stopped."
    retryable = True


class UnsupportedUrl(HttpError):
    """The URL's scheme is not one the HTTP source speaks."""

    code = "http.unsupported_url"
    hint = "Use an http:// or https:// URL, or list the file under a source that handles it."


class BadUrl(HttpError):
    """The URL cannot be parsed (no host, bad port, spaces, ...)."""

    code = "http.bad_url"
    hint = "Fix the URL in the manifest."


class NotFound(HttpError):
    """404 / 410: the server does not have the file (any more)."""

    code = "http.not_found"
    hint = "Check the URL in the manifest, or add another mirror that has the file."


class Forbidden(HttpError):
    """401 / 403: the server refuses to serve the file."""

    code = "http.forbidden"
    hint = "The file may need credentials or a licence acceptance; download it once by hand."


class HttpStatusError(HttpError):
    """Another 4xx status that retrying will not fix."""

    code = "http.status"
    hint = "Check the URL; the server rejected the request."


class ServerError(HttpError):
    """5xx answers kept coming after every retry."""

    code = "http.server_error"
    hint = "The server is failing; the job can be retried later or from another mirror."
    retryable = True


class ServerBusy(HttpError):
    """429 / 503 answers (rate limited, overloaded) kept coming after every retry."""

    code = "http.server_busy"
    hint = "The server asks clients to slow down; retry later or lower the connection count."
    retryable = True


class ConnectionFailed(HttpError):
    """Connecting or reading failed (refused, reset, DNS, TLS, timeout) after every retry."""

    code = "http.connection_failed"
    hint = "Check the network and the host name; the job can be retried."
    retryable = True


class Stalled(HttpError):
    """The connection stayed below the minimum speed for the whole window."""

    code = "http.stalled"
    hint = "The server is too slow; add mirrors, or lower min_speed in the configuration."
    retryable = True


class Truncated(HttpError):
    """The body ended before its announced length."""

    code = "http.truncated"
    hint = "The connection was cut; the transfer resumes from what arrived."
    retryable = True


class ContentRangeMismatch(HttpError):
    """A 206 answer's ``Content-Range`` is not the range that was asked for."""

    code = "http.content_range_mismatch"
    hint = "The server answers range requests wrongly; use another mirror."
    retryable = True


class SizeMismatch(HttpError):
    """The server's size of the file differs from the manifest's (or from other mirrors')."""

    code = "http.size_mismatch"
    hint = "The file on the server is not the one the manifest describes; check size and URL."


class VersionMismatch(HttpError):
    """A mirror's validator (ETag / Last-Modified) disagrees with the other mirrors'."""

    code = "http.version_mismatch"
    hint = "The mirrors serve different versions of the file; remove the stale mirror."


class RangesUnsupported(HttpError):
    """The mirror answers range requests with the whole file, so it cannot serve
    segments; the file falls back to one stream if no other mirror can."""

    code = "http.no_range_support"
    hint = "Nothing to do: the file is fetched over one connection, or from other mirrors."


#: The request names a digest algorithm outside :data:`acquired.common.digests.ALGORITHMS`
#: (the shared ``verify.unsupported_algorithm``, raised by the common hasher).
UnsupportedDigest = UnsupportedAlgorithm


class DigestMismatch(_DigestMismatch, HttpError):
    """The downloaded bytes do not have the expected digest; they were discarded.

    Code and hint are the shared ``verify.digest_mismatch``; this subclass keeps it an
    :class:`HttpError` for the engine's mirror bookkeeping.
    """


class AllMirrorsFailed(HttpError):
    """Every mirror failed with different errors; ``details["mirrors"]`` has each one."""

    code = "http.all_mirrors_failed"
    hint = "Each mirror's error is listed in the details; the job can be retried later."
    retryable = True

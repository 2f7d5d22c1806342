"""The fixed vocabulary of a sample's outcome: statuses and failure classes.

These strings are stored in shard parquet files and in the daemon's failure table, and a
user filters on them (``acquirectl retry --class timeout,http_5xx``): never rename one.
"""

from __future__ import annotations

from typing import Final

# Row statuses: every input row ends in exactly one of these.
OK: Final = "ok"
FAILED: Final = "failed"
FILTERED: Final = "filtered"
DUPLICATE: Final = "duplicate"
STATUSES: Final = (OK, FAILED, FILTERED, DUPLICATE)

# Failure classes.
TIMEOUT: Final = "timeout"
DNS: Final = "dns"
CONNECT: Final = "connect"
HTTP_4XX: Final = "http_4xx"
HTTP_5XX: Final = "http_5xx"
HTTP_429: Final = "http_429"
TOO_LARGE: Final = "too_large"
NOT_IMAGE: Final = "not_image"
DECODE: Final = "decode"
FILTERED_SMALL: Final = "filtered_small"
FILTERED_ASPECT: Final = "filtered_aspect"
DUPLICATE_CLASS: Final = "duplicate"
BAD_ROW: Final = "bad_row"

CLASSES: Final = (
    TIMEOUT,
    DNS,
    CONNECT,
    HTTP_4XX,
    HTTP_5XX,
    HTTP_429,
    TOO_LARGE,
    NOT_IMAGE,
    DECODE,
    FILTERED_SMALL,
    FILTERED_ASPECT,
    DUPLICATE_CLASS,
    BAD_ROW,
)
# Classes worth another try later (``retry --failed`` without ``--class`` re-feeds these).
TEMPORARY: Final = frozenset({TIMEOUT, DNS, CONNECT, HTTP_5XX, HTTP_429})


def status_of(error_class: str | None) -> str:
    """The row status a failure class puts a sample in (``None``: ok)."""
    if error_class is None:
        return OK
    if error_class in (FILTERED_SMALL, FILTERED_ASPECT):
        return FILTERED
    if error_class == DUPLICATE_CLASS:
        return DUPLICATE
    return FAILED

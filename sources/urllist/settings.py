"""Plain, frozen settings of a URL-list job; the manifest model converts into these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_USER_AGENT = "acquired/0.1 (dataset acquisition; +https://github.com/acquired)"
# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class FetchSettings:
    """How one sample's bytes are fetched."""

    timeout: float = 10.0
    """Seconds, total per request: connect, redirects and body."""
    retries: int = 2
    """Further tries for temporary failures (timeouts, resets, 5xx, 429)."""
    per_host_connections: int = 16
    max_bytes: int = 20_000_000
    """A body larger than this is a ``too_large`` failure, not a download."""
    user_agent: str = DEFAULT_USER_AGENT
    max_redirects: int = 5
    concurrency: int = 64
    """Transfers in flight per worker process, all hosts together."""
    backoff_base: float = 1.0
    """Seconds before the first retry; doubled per try, with jitter."""
    backoff_max: float = 30.0
    max_retry_after: float = 120.0
    """A ``Retry-After`` longer than this is not waited for: the sample fails as http_429."""
    dns_cache_seconds: int = 600


@dataclass(frozen=True)
class FilterSettings:
    """Which images are kept, judged from the header before any full decode."""

    min_side: int = 0
    max_aspect: float = 0.0
    """Longer side over shorter side; 0 = no limit."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    mime: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp")


@dataclass(frozen=True)
class ResizeSettings:
    """Optional resize and re-encode (absent = the original bytes are kept)."""

    mode: Literal["keep_ratio", "center_crop", "border"] = "keep_ratio"
    size: int = 256
    format: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = 95


@dataclass(frozen=True)
class DedupeSettings:
    """Job-wide deduplication; the first sample seen is kept."""

    exact: bool = True
    perceptual: bool = False
    hash: Literal["phash"] = "phash"
    max_distance: int = 4
    action: Literal["drop", "mark"] = "drop"


@dataclass(frozen=True)
class OutputSettings:
    """How a shard is laid out."""

    format: Literal["webdataset", "files"] = "webdataset"


@dataclass(frozen=True)
class InputSettings:
    """Where the URL list is and which columns matter."""

    path: str
    format: str | None = None
    """txt, csv, tsv, jsonl or parquet; ``None``: from the file name (``.gz``/``.zst`` ok)."""
    url_column: str = "url"
    caption_column: str | None = None
    keep_columns: tuple[str, ...] = ()
    shard_size: int = 10_000


@dataclass(frozen=True)
class UrlListSettings:
    """Everything a worker needs to turn a slice of the input into a shard."""

    fetch: FetchSettings = field(default_factory=FetchSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    resize: ResizeSettings | None = None
    dedupe: DedupeSettings = field(default_factory=DedupeSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

"""Pure decisions about HTTP answers: validators, Content-Range, retries and backoff."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from acquired.sources.http.errors import (
    BadUrl,
    Forbidden,
    HttpError,
    HttpStatusError,
    NotFound,
    ServerBusy,
    ServerError,
    UnsupportedUrl,
)

SCHEMES = ("http", "https")


def check_url(url: str) -> str:
    """``url`` if the HTTP source can fetch it; raises UnsupportedUrl / BadUrl naming it."""
    if not isinstance(url, str) or not url.strip():
        raise BadUrl(f"empty URL: {url!r}", url=str(url))
    if any(c.isspace() for c in url):
        raise BadUrl(f"URL contains whitespace: {url!r}", url=url)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise BadUrl(f"malformed URL {url!r}: {exc}", url=url) from exc
    if parts.scheme.lower() not in SCHEMES:
        raise UnsupportedUrl(
            f"unsupported URL scheme {parts.scheme or '(none)'!r} in {url!r}",
            url=url,
            scheme=parts.scheme,
        )
    if not parts.hostname:
        raise BadUrl(f"URL has no host: {url!r}", url=url)
    del port
    return url


@dataclass(frozen=True)
class Validator:
    """What identifies one version of a remote file: its strong ETag and/or Last-Modified."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Validator:
        """The validator a response's headers carry."""
        etag = headers.get("ETag") or None
        return cls(etag=etag, last_modified=headers.get("Last-Modified") or None)

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> Validator:
        """The validator recorded in a checkpoint (empty when none was)."""
        if not state:
            return cls()
        etag = state.get("etag")
        lm = state.get("last_modified")
        return cls(
            etag=etag if isinstance(etag, str) else None,
            last_modified=lm if isinstance(lm, str) else None,
        )

    def as_state(self) -> dict[str, str | None]:
        """The validator as a checkpoint records it."""
        return {"etag": self.etag, "last_modified": self.last_modified}

    @property
    def strong_etag(self) -> str | None:
        """The ETag when it is a strong one (usable in If-Range), else None."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)

    def if_range(self) -> str | None:
        """The ``If-Range`` value: the strong ETag if any, else Last-Modified (a weak ETag
        cannot validate a range)."""
        return self.strong_etag or self.last_modified

    def describe(self) -> str | None:
        """The validator as shown to people: the ETag, else the Last-Modified date."""
        return self.etag or self.last_modified

    def conflicts(self, other: Validator) -> str | None:
        """Why ``other`` is a different version than ``self``, or None when nothing says so.

        ETags are compared when both sides have one, else Last-Modified dates; a side that
        announces nothing cannot prove a difference."""
        if self.etag and other.etag:
            if _opaque(self.etag) != _opaque(other.etag):
                return f"ETag changed from {self.etag} to {other.etag}"
            return None
        if self.last_modified and other.last_modified and self.last_modified != other.last_modified:
            return f"Last-Modified changed from {self.last_modified} to {other.last_modified}"
        return None


def _opaque(etag: str) -> str:
    return etag.removeprefix("W/")


@dataclass(frozen=True)
class ContentRange:
    """A parsed ``Content-Range: bytes first-last/total`` header."""

    first: int
    last: int  # inclusive
    total: int | None  # None for "*"


def parse_content_range(value: str | None) -> ContentRange | None:
    """``bytes first-last/total`` (total may be ``*``); None when absent or malformed."""
    if not value:
        return None
    unit, _, rest = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    span, _, total_s = rest.strip().partition("/")
    first_s, sep, last_s = span.partition("-")
    if not sep:
        return None
    try:
        first, last = int(first_s), int(last_s)
        total = None if total_s.strip() == "*" else int(total_s)
    except ValueError:
        return None
    if first < 0 or last < first or (total is not None and last >= total):
        return None
    return ContentRange(first, last, total)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with jitter for the ``attempt``-th consecutive failure (1-based):
    uniformly in [d/2, d] with d = min(cap, base * 2**(attempt-1)), so clients that failed
    together do not come back together."""
    d = min(cap, base * (2 ** max(0, attempt - 1)))
    return d / 2 + rand() * d / 2


RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def status_error(status: int, url: str, reason: str = "") -> HttpError:
    """The error for an unexpected status; ``retryable`` says whether to try again."""
    text = f"HTTP {status}{' ' + reason if reason else ''} from {url}"
    if status in (404, 410):
        return NotFound(text, url=url, status=status)
    if status in (401, 403, 407, 451):
        return Forbidden(text, url=url, status=status)
    if status in (429, 503):
        return ServerBusy(text, url=url, status=status)
    if status >= 500 or status in RETRY_STATUSES:
        return ServerError(text, url=url, status=status)
    return HttpStatusError(text, url=url, status=status)

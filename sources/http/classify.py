"""What an HTTP answer means for a download: one pure function over status and headers.

Every request of the engine (the first one of a segmented download, a segment, a
single stream from some offset) is judged by ``classify(response, expected)``; the
caller only decides what to do with the ``Outcome`` in its own situation (a segment
that gets the whole file drops the mirror for segments, a single stream restarts from
zero and reads it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from acquired.sources.http.errors import ContentRangeMismatch, HttpError, SizeMismatch
from acquired.sources.http.protocol import (
    Validator,
    parse_content_range,
    parse_retry_after,
    status_error,
)


class Answer(Protocol):
    """The parts of a response ``classify`` reads (``requests.Response`` has them)."""

    @property
    def status_code(self) -> int:
        """The HTTP status."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive response headers."""

    @property
    def reason(self) -> str | None:
        """The status line's reason phrase."""


@dataclass(frozen=True)
class Expected:
    """What the request asked for and what the download already knows.

    ``first``/``last``: the byte range asked for (``last`` None: open-ended, or no range
    at all when ``first`` is 0). ``validator``: the version the bytes on disk belong to
    (empty when nothing on disk needs to match). ``size``: the file size the download has
    committed to (None while unknown). ``manifest_size``: the size the request names.
    """

    url: str
    first: int = 0
    last: int | None = None
    validator: Validator = field(default_factory=Validator)
    size: int | None = None
    manifest_size: int | None = None


class Kind(Enum):
    """The meaning of an answer."""

    RANGE = "range"
    """206 with the bytes asked for: read ``length`` bytes from ``first``."""
    WHOLE = "whole"
    """200: the whole file from byte 0 (ranges ignored, or none asked)."""
    COMPLETE = "complete"
    """416 at exactly the end of the file: everything is here already."""
    CHANGED = "changed"
    """The server now has another version (validator, size, or 416 mid-file)."""
    ERROR = "error"
    """A failure to count against the mirror (``error``)."""


@dataclass(frozen=True)
class Outcome:
    """``classify``'s verdict on one answer."""

    kind: Kind
    validator: Validator = field(default_factory=Validator)
    first: int = 0
    total: int | None = None
    """The size of the whole file, when the answer states it."""
    length: int | None = None
    """Body bytes to expect, when known."""
    reason: str = ""
    """Why the version changed (CHANGED), without the URL."""
    error: HttpError | None = None


def classify(response: Answer, expected: Expected, now: float | None = None) -> Outcome:
    """Judge ``response`` against ``expected``; never raises, never does I/O."""
    status = response.status_code
    headers = response.headers
    got = Validator.from_headers(headers)
    url = expected.url
    if status == 206:
        cr = parse_content_range(headers.get("Content-Range"))
        if (
            cr is None
            or cr.first != expected.first
            or (expected.last is not None and cr.last > expected.last)
        ):
            asked = f"bytes={expected.first}-{'' if expected.last is None else expected.last}"
            return _error(
                ContentRangeMismatch(
                    f"{url} sent Content-Range {headers.get('Content-Range')!r} for {asked}",
                    url=url,
                    asked=asked,
                    got=headers.get("Content-Range"),
                ),
                got,
            )
        conflict = _conflict(expected, got, cr.total)
        if conflict is not None:
            return Outcome(Kind.CHANGED, got, reason=conflict, total=cr.total)
        mismatch = _size_mismatch(expected, cr.total)
        if mismatch is not None:
            return _error(mismatch, got)
        return Outcome(Kind.RANGE, got, cr.first, cr.total, cr.last - cr.first + 1)
    if status == 200:
        length = body_length(headers)
        ranged = expected.first > 0 or expected.last is not None
        conflict = expected.validator.conflicts(got) if ranged else None
        if conflict is not None:
            return Outcome(Kind.CHANGED, got, reason=conflict, total=length)
        mismatch = _size_mismatch(expected, length)
        if mismatch is not None:
            return _error(mismatch, got)
        return Outcome(Kind.WHOLE, got, 0, length, length)
    if status == 416:
        total = unsatisfied_total(headers.get("Content-Range"))
        if (
            expected.first > 0
            and total == expected.first
            and expected.manifest_size in (None, total)
            and expected.validator.conflicts(got) is None
        ):
            return Outcome(Kind.COMPLETE, got, total, total, 0)
        where = (
            f"bytes {expected.first}-{expected.last}"
            if expected.last is not None
            else f"from byte {expected.first}"
        )
        return Outcome(Kind.CHANGED, got, reason=f"cannot serve {where} any more (416)")
    exc = status_error(status, url, response.reason or "")
    retry_after = parse_retry_after(headers.get("Retry-After"), time.time() if now is None else now)
    if retry_after is not None:
        exc.details["retry_after"] = retry_after
    return _error(exc, got)


def _error(exc: HttpError, got: Validator) -> Outcome:
    return Outcome(Kind.ERROR, got, error=exc)


def _conflict(expected: Expected, got: Validator, total: int | None) -> str | None:
    conflict = expected.validator.conflicts(got)
    if conflict is None and expected.size is not None and total not in (None, expected.size):
        conflict = f"size changed from {expected.size} to {total} bytes"
    return conflict


def _size_mismatch(expected: Expected, total: int | None) -> SizeMismatch | None:
    if expected.manifest_size is None or total is None or total == expected.manifest_size:
        return None
    return SizeMismatch(
        f"{expected.url} has {total} bytes, the manifest says {expected.manifest_size}",
        url=expected.url,
        expected=expected.manifest_size,
        actual=total,
    )


def body_length(headers: Mapping[str, str]) -> int | None:
    """The ``Content-Length`` of an answer, when it states a valid one."""
    value = headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def unsatisfied_total(value: str | None) -> int | None:
    """The size in a 416's ``Content-Range: bytes */size``."""
    if not value:
        return None
    _, _, total = value.rpartition("/")
    return int(total) if total.strip().isdigit() else None

"""Events the HTTP engine sends to ``on_event``: frozen, plain values, cheap to queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MirrorStat:
    """One mirror as the engine sees it right now."""

    url: str
    rate: float  # bytes/s over the last few seconds
    connections: int  # open connections to it
    bytes: int  # body bytes received from it in this run
    state: str  # "active", "idle", "backoff", "dropped"
    reason: str | None = None  # why it is backing off or dropped


@dataclass(frozen=True)
class Progress:
    """About twice a second while a file transfers."""

    done: int  # bytes of the file on disk (including what a resume kept)
    total: int | None  # None while the size is unknown
    rate: float  # bytes/s over the last few seconds
    connections: int
    mirrors: tuple[MirrorStat, ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """Resume state to persist (JSON-able); every byte it claims has been fdatasync'ed.

    Pass the last one back as ``FileRequest.resume`` to continue after a restart."""

    state: dict[str, Any]


@dataclass(frozen=True)
class Retrying:
    """A request failed and will be tried again after ``delay`` seconds."""

    url: str
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True)
class MirrorDropped:
    """A mirror is not used any more for this file (``code`` says why)."""

    url: str
    code: str
    reason: str


@dataclass(frozen=True)
class Restarted:
    """The data so far was discarded and the file starts again from zero."""

    reason: str

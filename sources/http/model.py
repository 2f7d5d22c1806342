"""Plain values passed into and out of the HTTP engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from acquired.sources.http.hostslots import HostSlots
from acquired.sources.http.ratelimit import RateLimiter


def _version() -> str:
    try:
        return metadata.version("acquired")
    except metadata.PackageNotFoundError:  # running from a bare checkout
        return "0"


USER_AGENT = f"acquired/{_version()}"


@dataclass
class HttpOptions:
    """How the engine behaves; the daemon fills this from its configuration."""

    connections: int = 8
    """Connections per file; 1 = a single stream."""
    per_host_connections: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    """Seconds without a single byte before a connection counts as failed."""
    min_speed: int = 1024
    """Bytes/s a connection must reach over ``min_speed_window`` seconds, else it is
    dropped and its range handed to another (like curl's --speed-limit/--speed-time)."""
    min_speed_window: float = 30.0
    max_tries: int = 6
    """Consecutive failed attempts on one mirror before the mirror is dropped."""
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 300.0
    """The longest Retry-After the engine honours; longer ones count as a failed try."""
    checkpoint_interval: float = 2.0
    """Seconds between Checkpoint events at most ..."""
    checkpoint_bytes: int = 2 << 20
    """... or sooner, once this many new bytes per connection are on disk, so a crash
    re-fetches at most about this much per connection."""
    checkpoint_min_interval: float = 0.05
    """Never checkpoint more often than this (each one costs an fdatasync)."""
    progress_interval: float = 0.5
    limiters: tuple[RateLimiter, ...] = ()
    """Token buckets every byte goes through (global, per job)."""
    host_slots: HostSlots | None = None
    """Connections per host shared with the process's other downloads (its cap applies
    on top of ``per_host_connections``)."""
    user_agent: str = USER_AGENT
    session: requests.Session | None = None
    """The session requests go through. None: the process's shared session for
    ``user_agent`` (``conn.shared_session``), so downloads reuse each other's keep-alive
    connections; it keeps no cookies. A session given here is not closed by the engine;
    make it with ``conn.make_session`` so cancel and stall detection can abort its
    requests."""
    chunk_size: int = 1 << 20
    """Bytes per read; large reads avoid per-call overhead on fast links."""


@dataclass
class FileRequest:
    """One file to fetch from one or more mirrors."""

    urls: list[str]
    """Mirrors, in manifest order."""
    dest: Path
    """The final path; data goes to ``dest`` + ".part" until verified."""
    size: int | None = None
    digests: dict[str, str] = field(default_factory=dict)
    """Expected digests, e.g. {"sha256": "ab12..."}; every one is verified."""
    resume: dict[str, Any] | None = None
    """The last ``Checkpoint.state`` the caller stored, if any."""
    root: Path | None = None
    """The folder nothing may leave (the data root): the ``.part`` and every folder from
    here down to it are opened beneath it without following links. None: from the
    ``.part``'s own folder down."""

    @property
    def part(self) -> Path:
        """Where the data goes until it is verified."""
        return self.dest.with_name(self.dest.name + ".part")


@dataclass(frozen=True)
class DownloadResult:
    """A verified file in its final place."""

    path: Path
    size: int
    digests: dict[str, str]
    """Every algorithm the request named (sha256 when none), lower-case hex."""
    validator: str | None
    """The ETag (else Last-Modified) the data was checked against, if the server sent one."""

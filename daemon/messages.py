"""What other threads post to the state thread's queue, and what it keeps per transfer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from acquired.daemon.config import Config
from acquired.daemon.urllist_messages import UrllistMessage


class Reply:
    """A slot the state thread fills for a waiting control-server thread."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: dict[str, Any] = {}

    def set(self, value: dict[str, Any]) -> None:
        """Fill the slot (from the state thread)."""
        self._value = value
        self._done.set()

    def wait(self, timeout: float) -> dict[str, Any] | None:
        """The value, or None if it is not set within ``timeout`` seconds."""
        return self._value if self._done.wait(timeout) else None


@dataclass(frozen=True)
class Request:
    """A control-socket request; the state thread answers through ``reply``."""

    payload: dict[str, Any]
    reply: Reply


@dataclass(frozen=True)
class InboxFile:
    """A manifest in the inbox is complete and can be read."""

    path: Path


@dataclass(frozen=True)
class WatchedFile:
    """A complete file appeared in a watched folder of completed downloads."""

    path: Path


@dataclass(frozen=True)
class WatchedMatch:
    """Which expected file a watched file is (``file_id`` None: none), or why not."""

    path: Path
    file_id: int | None
    error: BaseException | None


@dataclass(frozen=True)
class SourceEvent:
    """An event of an HTTP transfer (``token`` tells a stale transfer from the current)."""

    file_id: int
    token: int
    event: object


@dataclass(frozen=True)
class TransferEnded:
    """A transfer or a step stopped: with a result, or with the error that stopped it."""

    file_id: int
    token: int
    result: object | None
    error: BaseException | None


@dataclass(frozen=True)
class BatchEnded:
    """Many small transfers ended at once: ``ends`` holds (file id, token, result, error)
    for each, every successful one already durable in place."""

    ends: tuple[tuple[int, int, object | None, BaseException | None], ...]


@dataclass(frozen=True)
class TorrentEvent:
    """An event of the torrent engine, keyed by torrent, not by file."""

    event: object


@dataclass(frozen=True)
class TorrentAdded:
    """The engine took (or resumed) a torrent the state thread asked for."""

    key: str
    token: int


@dataclass(frozen=True)
class SourceChosen:
    """The probes of a file with both a torrent and mirrors are in: ``decision`` says which."""

    file_id: int
    token: int
    decision: Any


@dataclass(frozen=True)
class StepProgress:
    """Verify or extract progress of a file: ``label`` ("verify", "extract"), done of total."""

    file_id: int
    token: int
    label: str
    done: int
    total: int


@dataclass(frozen=True)
class JobStepProgress:
    """Progress of a job's own steps: ``label`` ("checksums SHA256SUMS", ...), done of total."""

    job_id: str
    token: int
    label: str
    done: int
    total: int


@dataclass(frozen=True)
class JobStepsEnded:
    """A job's own steps (checksum files, layouts, listings) stopped."""

    job_id: str
    token: int
    error: BaseException | None


@dataclass(frozen=True)
class Reload:
    """Apply a re-read configuration (SIGHUP)."""

    config: Config


@dataclass(frozen=True)
class Stop:
    """Stop the state thread (SIGTERM)."""

    pass


class Cancellable(Protocol):
    """Anything the state thread can ask to stop."""

    def cancel(self) -> None:
        """Ask it to stop; thread-safe."""
        ...


@dataclass
class Active:
    """A file in flight (fetching, choosing its source, verifying, unpacking)."""

    file_id: int
    job_id: str
    path: str
    token: int
    size: int | None
    thread: threading.Thread | Future[None] | None  # what to wait for at shutdown
    source: str
    kind: str = "http"  # http, torrent, choosing, verify, unpack
    handle: Cancellable | None = None
    torrent_key: str | None = None
    inner: str | None = None  # the file's path inside its torrent
    bytes_done: int = 0
    rate: float = 0.0
    detail: str = ""
    step: str | None = None
    stop_reason: str | None = None  # why we asked it to stop: pause, cancel, disk, shutdown
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ManifestLoaded:
    """A job's manifest was read and parsed off the state thread (or why it could not)."""

    job_id: str
    digest: str
    manifest: Any
    error: BaseException | None


@dataclass(frozen=True)
class IntakeParsed:
    """A manifest parsed and checked off the state thread (``error``: why it was not)."""

    source_name: str
    replace: bool
    inbox_path: Path | None  # the inbox file it came from, removed once it is taken
    reply: Reply | None  # the control request waiting for the outcome
    manifest: Any = None  # acquired.daemon.manifest.Manifest
    digest: str = ""
    destination: str = ""  # relative to the data root
    saved: Path | None = None  # the text, saved under a temporary name in the state dir
    suffix: str = ".toml"
    files: list[tuple[str, int | None, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: BaseException | None = None


Message = (
    Request
    | InboxFile
    | WatchedFile
    | WatchedMatch
    | SourceEvent
    | TransferEnded
    | BatchEnded
    | TorrentEvent
    | TorrentAdded
    | SourceChosen
    | StepProgress
    | JobStepProgress
    | JobStepsEnded
    | Reload
    | Stop
    | ManifestLoaded
    | IntakeParsed
    | UrllistMessage
)

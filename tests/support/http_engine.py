"""Helpers for driving ``HttpDownload`` in tests: event capture and quick requests."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, TypeVar

from acquired.sources.http import (
    Checkpoint,
    DownloadResult,
    FileRequest,
    HttpDownload,
    HttpOptions,
)

E = TypeVar("E")


class Events:
    """A thread-safe ``on_event`` that keeps every event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.all: list[object] = []

    def __call__(self, event: object) -> None:
        with self._lock:
            self.all.append(event)

    def of(self, kind: type[E]) -> list[E]:
        with self._lock:
            return [e for e in self.all if isinstance(e, kind)]

    def last_state(self) -> dict[str, Any] | None:
        checkpoints = self.of(Checkpoint)
        return checkpoints[-1].state if checkpoints else None


def fast_options(**overrides: Any) -> HttpOptions:
    """Options with short backoffs and timeouts so failure paths run quickly."""
    values: dict[str, Any] = {
        "connections": 1,
        "connect_timeout": 5.0,
        "read_timeout": 5.0,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "max_tries": 4,
        "checkpoint_interval": 0.2,
    }
    values.update(overrides)
    return HttpOptions(**values)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request_for(
    urls: list[str] | str, dest: Path, data: bytes | None = None, **kwargs: Any
) -> FileRequest:
    """A request for ``urls``; with ``data``, its sha256 is the expected digest."""
    if isinstance(urls, str):
        urls = [urls]
    if data is not None:
        kwargs.setdefault("digests", {"sha256": sha256(data)})
    return FileRequest(urls=urls, dest=dest, **kwargs)


def download(
    request: FileRequest, options: HttpOptions | None = None, events: Events | None = None
) -> DownloadResult:
    return HttpDownload(request, options or fast_options(), events or Events()).run()


class Background:
    """Runs ``HttpDownload.run()`` in a thread, keeping its result or exception."""

    def __init__(self, dl: HttpDownload) -> None:
        self.dl = dl
        self.result: DownloadResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.dl.run()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 30.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "download did not finish (deadlock guard)"

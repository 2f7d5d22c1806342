"""Requests of one download: sending them abortably, the one read loop that writes a
body into the ``.part`` file, and what a failed request means.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
from collections.abc import Callable

import requests

from acquired.sources.errors import SourceError
from acquired.sources.http.conn import BodyReader, Transfer, tracking
from acquired.sources.http.errors import (
    ConnectionFailed,
    DownloadCancelled,
    SizeMismatch,
    Stalled,
    Truncated,
)
from acquired.sources.http.mirrors import Mirror, MirrorPool
from acquired.sources.http.model import HttpOptions
from acquired.sources.http.neterrors import network_error
from acquired.sources.http.state import FileState

_TRANSPORT_ERRORS = (requests.RequestException, OSError, http.client.HTTPException)

_buffers = threading.local()


def _buffer(size: int) -> memoryview:
    """A read buffer per thread, reused across requests and downloads."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = _buffers.buf = bytearray(size)
    return memoryview(buf)[:size]


class Fetcher:
    """Sends the requests of one download and reads their bodies."""

    def __init__(
        self,
        session: requests.Session,
        options: HttpOptions,
        pool: MirrorPool,
        state: FileState,
        cancel: threading.Event,
    ) -> None:
        self.session = session
        self.options = options
        self.pool = pool
        self.state = state
        self.cancel = cancel
        self._transfers: set[Transfer] = set()
        self._lock = threading.Lock()

    def live(self) -> set[Transfer]:
        """The requests in flight now."""
        with self._lock:
            return set(self._transfers)

    def abort_all(self, reason: str, code: str) -> None:
        """Abort every request in flight (their threads see an error soon)."""
        for transfer in self.live():
            transfer.abort(reason, code)

    def send(
        self, mirror: Mirror, headers: dict[str, str], *, counted: bool = False
    ) -> tuple[Transfer, requests.Response]:
        """Send a GET, registered for abort. ``counted``: the caller already counted the
        connection (and took its host slot) through the pool."""
        transfer = Transfer(mirror.url)
        transfer.counted = counted
        if not counted and not self.pool.connect(mirror, wait=True):
            raise DownloadCancelled("cancelled while waiting for a connection slot")
        with self._lock:
            self._transfers.add(transfer)
        if self.cancel.is_set():
            transfer.abort("cancelled", DownloadCancelled.code)
        try:
            with tracking(transfer):
                response = self.session.get(
                    mirror.url,
                    headers=headers,
                    stream=True,
                    timeout=(self.options.connect_timeout, self.options.read_timeout),
                )
        except _TRANSPORT_ERRORS as exc:
            with self._lock:
                self._transfers.discard(transfer)
            if not counted:
                self.pool.disconnect(mirror)
            raise self.transport_error(transfer, exc, mirror.url) from exc
        return transfer, response

    def release(
        self,
        mirror: Mirror,
        transfer: Transfer,
        response: requests.Response | None,
        reader: BodyReader | None = None,
    ) -> None:
        """Close (or pool) the connection and forget the transfer."""
        if response is not None:
            with contextlib.suppress(Exception):
                if reader is not None and not transfer.aborted:
                    reader.release(response)
                else:
                    response.close()
        with self._lock:
            self._transfers.discard(transfer)
        if not transfer.counted:
            self.pool.disconnect(mirror)

    def pump(
        self,
        mirror: Mirror,
        transfer: Transfer,
        reader: BodyReader,
        pos: int,
        *,
        room: Callable[[], int | None],
        on_data: Callable[[memoryview], None],
        end: tuple[int, str] | None = None,
    ) -> int:
        """Read the body into the ``.part`` file from ``pos`` until ``room()`` says no
        more is wanted or the body ends; returns the bytes written.

        ``end``: (byte position, why) past which the body must not go; a body that does
        is stopped after one byte too many, never written past it, and fails with
        SizeMismatch."""
        state, url = self.state, mirror.url
        size = self.options.chunk_size
        for limiter in self.options.limiters:
            size = limiter.chunk_size(size)
        view = _buffer(size)
        threshold = self.options.checkpoint_bytes
        got = 0
        while True:
            left = room()
            body_left = reader.remaining
            if (left is not None and left <= 0) or body_left == 0:
                return got
            want = min(
                size, size if left is None else left, size if body_left is None else body_left
            )
            if end is not None:
                want = min(want, end[0] + 1 - pos)
            try:
                n = reader.readinto(view[:want])
            except _TRANSPORT_ERRORS as exc:
                raise self.transport_error(transfer, exc, url) from exc
            if not n:
                if transfer.aborted:  # a shut-down socket reads as EOF
                    raise self.transport_error(transfer, EOFError(), url)
                return got
            if end is not None and pos + n > end[0]:
                transfer.abort("body too long", SizeMismatch.code)
                raise SizeMismatch(
                    f"{url} sent more than {end[0]} bytes ({end[1]}); stopped at byte {end[0] + 1}",
                    url=url,
                    expected=end[0],
                    actual=f">{end[0]}",
                )
            data = view[:n]
            state.part.pwrite(data, pos)
            if not got:
                state.contributors.add(url)
            on_data(data)
            pos += n
            got += n
            transfer.received += n
            mirror.received += n
            state.note_received(n, threshold)
            for limiter in self.options.limiters:
                transfer.throttled += limiter.acquire(n, self.cancel)
            if self.cancel.is_set():
                raise DownloadCancelled(f"download of {url} cancelled", url=url)

    def transport_error(self, transfer: Transfer, exc: BaseException, url: str) -> SourceError:
        """What a failed request means: cancelled, stalled, aborted, or its network
        cause said with the host."""
        if self.cancel.is_set() or transfer.abort_code == DownloadCancelled.code:
            return DownloadCancelled(f"download of {url} cancelled", url=url)
        if transfer.abort_code == Stalled.code:
            return Stalled(f"{url}: {transfer.abort_reason}", url=url)
        if transfer.aborted:
            return ConnectionFailed(f"{url}: {transfer.abort_reason}", url=url, kind="aborted")
        if isinstance(exc, EOFError):
            return Truncated(f"{url}: connection closed mid-transfer", url=url)
        return network_error(exc, url)

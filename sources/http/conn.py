"""requests sessions whose connections can be aborted from another thread.

A blocked ``recv`` (waiting for headers from a server that accepted and went silent, or
for the next body byte) does not notice a flag; shutting the socket down wakes it at
once. Each request runs inside ``tracking(transfer)``; the connection that urllib3 picks
for it registers itself with the transfer, and ``transfer.abort()`` shuts its socket
down from any thread (cancel, stall detection, work stealing).
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class Transfer:
    """One request in flight: abortable, with the counters the watchdog reads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._conn: HTTPConnection | None = None
        self.abort_reason: str | None = None
        self.abort_code: str | None = None
        self.received = 0  # body bytes received (written by the transfer thread only)
        self.throttled = 0.0  # seconds spent waiting on rate limiters
        self.counted = False  # its connection is counted by the segment scheduler
        self.asked: tuple[int, int] = (0, -1)  # the byte range requested (inclusive)
        self.if_range: str | None = None

    def attach(self, conn: HTTPConnection) -> None:
        """Remember the connection a request runs on, closing it at once if already aborted."""
        with self._lock:
            self._conn = conn
            if self.abort_reason is not None:
                _shutdown(conn)

    def abort(self, reason: str, code: str = "http.aborted") -> None:
        """Stop this request as soon as possible; its thread sees an error and then
        ``abort_reason``."""
        with self._lock:
            if self.abort_reason is None:
                self.abort_reason = reason
                self.abort_code = code
            if self._conn is not None:
                _shutdown(self._conn)

    @property
    def aborted(self) -> bool:
        """True once the request was asked to stop."""
        return self.abort_reason is not None


def _shutdown(conn: HTTPConnection) -> None:
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        # The plain socket method, even for TLS: no close_notify exchange, just wake the
        # reader (SSLSocket.shutdown would also tear down state the reader is using).
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@contextlib.contextmanager
def tracking(transfer: Transfer) -> Iterator[Transfer]:
    """Requests made by this thread inside the block belong to ``transfer``."""
    previous = getattr(_local, "transfer", None)
    _local.transfer = transfer
    try:
        yield transfer
    finally:
        _local.transfer = previous


class _TrackedMixin:
    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        transfer: Transfer | None = getattr(_local, "transfer", None)
        if transfer is not None:
            transfer.attach(self)  # type: ignore[arg-type]

    def request(self, *args: Any, **kwargs: Any) -> None:
        transfer: Transfer | None = getattr(_local, "transfer", None)
        if transfer is not None:
            transfer.attach(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _TrackedHTTPConnection(_TrackedMixin, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TrackedMixin, HTTPSConnection):
    pass


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _TrackedHTTPPool,
    "https": _TrackedHTTPSPool,
}


class _TrackingAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.ProxyManager:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS managers bring their own pools
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


class _Session(requests.Session):
    """A session that reads the proxy and CA environment once per origin: requests
    otherwise looks it up on every request (a noticeable share of a small file's cost).
    Changes to the environment after the first request to an origin are not seen."""

    def __init__(self) -> None:
        super().__init__()
        self._env_cache: dict[tuple[Any, ...], Any] = {}
        self._env_lock = threading.Lock()

    def merge_environment_settings(self, url: Any, proxies: Any, *args: Any) -> Any:
        """The environment's settings for ``url``, cached per origin."""
        if proxies:
            return super().merge_environment_settings(url, proxies, *args)
        parts = urlsplit(str(url))
        key = (parts.scheme, parts.netloc, *map(repr, args))
        with self._env_lock:
            cached: Any = self._env_cache.get(key)
        if cached is None:
            cached = super().merge_environment_settings(url, proxies, *args)
            with self._env_lock:
                self._env_cache[key] = cached
        return {**cached, "proxies": dict(cached["proxies"] or {})}


def make_session(user_agent: str, pool_size: int = 16) -> requests.Session:
    """A session whose connections register with the current ``Transfer``; no retries of
    its own (the engine decides), identity encoding (bytes are stored as served)."""
    session = _Session()
    adapter = _TrackingAdapter(pool_connections=64, pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    session.headers["Accept-Encoding"] = "identity"
    return session


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Keeps no cookie: a session shared by every download must not carry one mirror's
    cookies into another job's requests."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


_shared: dict[str, requests.Session] = {}
_shared_lock = threading.Lock()

SHARED_POOL_SIZE = 256
"""Idle keep-alive connections the shared session keeps per host (enough for a daemon's
concurrent downloads of small files from one server)."""


def shared_session(user_agent: str) -> requests.Session:
    """The process's one session for ``user_agent``: every download reuses its
    keep-alive connections instead of opening new ones per file. It keeps no cookies.
    Never close it."""
    with _shared_lock:
        session = _shared.get(user_agent)
        if session is None:
            session = make_session(user_agent, SHARED_POOL_SIZE)
            session.cookies.set_policy(_NoCookies())
            _shared[user_agent] = session
        return session


class BodyReader:
    """Reads a response body into caller buffers, returning whatever has arrived.

    ``readinto`` returns as soon as some bytes are there (a slow server's trickle is seen
    at once by stall detection and checkpoints) and, for the usual body with a
    ``Content-Length``, receives straight into the caller's buffer: no copy. Content
    encodings are deliberately not decoded: the file is stored exactly as served.
    Returns 0 at the end of the body, or when the connection closed early (the caller
    compares with the length it expects).
    """

    def __init__(self, response: requests.Response) -> None:
        raw = response.raw
        self._http: Any = getattr(raw, "_fp", None)
        self._direct: Any = None
        self._remaining = 0
        http_resp = self._http
        if (
            http_resp is not None
            and not getattr(http_resp, "chunked", True)
            and isinstance(getattr(http_resp, "length", None), int)
            and hasattr(getattr(http_resp, "fp", None), "readinto1")
        ):
            self._direct = http_resp.fp
            self._remaining = http_resp.length
        self._raw = raw

    @property
    def remaining(self) -> int | None:
        """Body bytes not read yet, when the length is known."""
        return self._remaining if self._direct is not None else None

    def release(self, response: requests.Response) -> None:
        """Give the connection back to the pool when the body was read to its end (the
        next request reuses it), else close it: unread bytes must never reach the next
        request."""
        if self._direct is not None and self._remaining == 0:
            try:
                # Tell http.client the body is consumed: read() of a zero length closes
                # its file object and leaves the connection idle and reusable.
                self._http.length = 0
                self._http.read()
                self._raw.release_conn()
                return
            except Exception:  # noqa: S110 - fall back to closing; never reuse a doubtful one
                pass
        response.close()

    def readinto(self, view: memoryview) -> int:
        """Read body bytes into ``view``; 0 at the end of the body."""
        if self._direct is not None:
            if self._remaining <= 0:
                return 0
            want = min(len(view), self._remaining)
            n: int = self._direct.readinto1(view[:want])
            self._remaining -= n
            return n
        if self._http is not None and hasattr(self._http, "read1"):
            data: bytes = self._http.read1(len(view))
        else:
            data = self._raw.read(len(view), decode_content=False)
        view[: len(data)] = data
        return len(data)

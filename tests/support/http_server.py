"""A real threaded loopback HTTP server for tests: byte blobs by path, ranges, validators,
and faults injected per path.

    with HttpTestServer() as server:
        server.add("/data.bin", payload)
        server.fault("/data.bin", Fault(reset_after=1000), times=2)
        url = server.url("/data.bin")
        ...
        assert server.bytes_served("/data.bin") < 2 * len(payload)

It speaks HTTP/1.1 with keep-alive, serves a single range per request (206 with
``Content-Range``, 416 past the end), honours ``If-Range`` (strong ETag or the exact
Last-Modified date), and answers HEAD. Every body byte that leaves through the socket is
counted (``bytes_served``), and every request is recorded (``requests``).

Faults (``Fault``) are queued per path: each applies to the next ``times`` matching
requests, or to all of them (``times=None``). Bodies are sent from memory with large
``send`` calls, so serving hundreds of megabytes costs little CPU.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# One send() call hands at most this much to the kernel: large enough to be cheap, small
# enough that the per-path byte counts stay close to what really left.
_SEND_CHUNK = 1 << 20
# Time-based faults (drip, stall) wake up this often to notice shutdown or a closed peer.
_TICK = 0.05


@dataclass
class Blob:
    """One resource: its bytes and the validators the server announces for it."""

    data: bytes
    etag: str | None = None
    last_modified: str | None = None
    content_type: str = "application/octet-stream"
    accept_ranges: bool = True

    @classmethod
    def of(
        cls,
        data: bytes,
        *,
        etag: str | bool | None = True,
        last_modified: str | bool | None = True,
        mtime: float | None = None,
        content_type: str = "application/octet-stream",
        accept_ranges: bool = True,
    ) -> Blob:
        """A blob whose strong ETag is derived from its bytes (``etag=True``) and whose
        Last-Modified is ``mtime`` or now (``last_modified=True``); ``False`` omits one."""
        if etag is True:
            etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
        elif etag is False:
            etag = None
        if last_modified is True:
            last_modified = email.utils.formatdate(
                mtime if mtime is not None else time.time(), usegmt=True
            )
        elif last_modified is False:
            last_modified = None
        return cls(
            data=data,
            etag=etag,
            last_modified=last_modified,
            content_type=content_type,
            accept_ranges=accept_ranges,
        )


@dataclass
class Fault:
    """What goes wrong for a request. Fields combine where that makes sense (a drip that
    resets, a shifted range that stalls, ...)."""

    status: int | None = None
    """Answer with this status and a short body instead of the resource (500, 429, 503)."""
    retry_after: str | None = None
    """``Retry-After`` header sent with ``status`` (seconds or an HTTP date)."""
    reset_after: int | None = None
    """Close the connection after this many body bytes."""
    stall_after: int | None = None
    """Send this many body bytes, then nothing more while keeping the connection open."""
    stall_headers: bool = False
    """Accept the connection and read the request, then send nothing at all."""
    rate: float | None = None
    """Drip the body at this many bytes per second."""
    no_range: bool = False
    """Ignore ``Range``/``If-Range``: 200 with the whole body."""
    ignore_if_range: bool = False
    """Serve the asked range even when ``If-Range`` does not match (a broken cache)."""
    content_length: int | None = None
    """Announce this ``Content-Length`` instead of the true one (the body is unchanged and
    the connection closes after it, so a larger value reads as a truncated body)."""
    range_shift: int = 0
    """Serve, and honestly label in ``Content-Range``, a range shifted by this many bytes
    from the one asked for."""
    version: Blob | None = None
    """Serve this other version (other bytes and validators) instead of the registered one."""
    methods: frozenset[str] = frozenset({"GET"})
    """Request methods this fault applies to (HEAD probes pass untouched by default)."""


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    if_range: str | None
    headers: dict[str, str]
    status: int = 0
    fault: Fault | None = None


@dataclass
class _Queued:
    fault: Fault
    remaining: int | None  # None: permanent


@dataclass
class _State:
    blobs: dict[str, Blob] = field(default_factory=dict)
    faults: dict[str, list[_Queued]] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    in_flight: int = 0
    max_in_flight: int = 0


class _Aborted(Exception):
    """The peer went away or the server is stopping: stop sending."""


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """The inclusive ``(first, last)`` of a single-range ``Range`` header, ``None`` when the
    header is not one usable range (serve the whole body), or ``"unsatisfiable"``."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, sep, last_s = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first_s == "":
            suffix = int(last_s)
            if suffix <= 0:
                return "unsatisfiable"
            return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first < 0:
        return None
    if first >= size:
        return "unsatisfiable"
    if last < first:
        return None
    return first, min(last, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read ``requests`` instead of a log on stderr

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    # -- serving ---------------------------------------------------------------------
    def _serve(self, *, body: bool) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        record = RequestRecord(
            method=self.command,
            path=path,
            range=self.headers.get("Range"),
            if_range=self.headers.get("If-Range"),
            headers={k: v for k, v in self.headers.items()},
        )
        with state.lock:
            state.requests.append(record)
            blob = state.blobs.get(path)
            fault = self._take_fault(state, path)
        record.fault = fault
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._respond(record, blob, fault, body=body)
        except (_Aborted, ConnectionError, OSError):
            self.close_connection = True
        finally:
            with state.lock:
                state.in_flight -= 1

    def _take_fault(self, state: _State, path: str) -> Fault | None:
        queue = state.faults.get(path, [])
        for queued in queue:
            if self.command not in queued.fault.methods:
                continue
            if queued.remaining is not None:
                queued.remaining -= 1
                if queued.remaining <= 0:
                    queue.remove(queued)
            return queued.fault
        return None

    def _respond(
        self, record: RequestRecord, blob: Blob | None, fault: Fault | None, *, body: bool
    ) -> None:
        if fault is not None and fault.stall_headers:
            record.status = -1
            self._stall()
            return
        if fault is not None and fault.status is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._simple(record, fault.status, extra, body=body)
            return
        if blob is None:
            self._simple(record, 404, {}, body=body)
            return
        if fault is not None and fault.version is not None:
            blob = fault.version
        size = len(blob.data)
        first, last = 0, size - 1
        status = 200
        use_range = (
            record.range is not None
            and blob.accept_ranges
            and not (fault is not None and fault.no_range)
            and (
                (fault is not None and fault.ignore_if_range)
                or self._if_range_matches(blob, record.if_range)
            )
        )
        if use_range and record.range is not None:
            parsed = parse_range(record.range, size)
            if parsed == "unsatisfiable":
                self._simple(record, 416, {"Content-Range": f"bytes */{size}"}, body=body)
                return
            if isinstance(parsed, tuple):
                first, last = parsed
                status = 206
        if status == 206 and fault is not None and fault.range_shift:
            first = min(max(0, first + fault.range_shift), max(0, size - 1))
            last = min(max(first, last + fault.range_shift), size - 1)
        length = last - first + 1 if size else 0
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", blob.content_type)
        declared = length
        if fault is not None and fault.content_length is not None:
            declared = fault.content_length
            self.close_connection = True
        self.send_header("Content-Length", str(declared))
        if blob.accept_ranges:
            self.send_header("Accept-Ranges", "bytes")
        if blob.etag:
            self.send_header("ETag", blob.etag)
        if blob.last_modified:
            self.send_header("Last-Modified", blob.last_modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if not body:
            return
        self._send_body(record.path, memoryview(blob.data)[first : first + length], fault)

    def _simple(
        self, record: RequestRecord, status: int, headers: dict[str, str], *, body: bool
    ) -> None:
        record.status = status
        payload = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    @staticmethod
    def _if_range_matches(blob: Blob, if_range: str | None) -> bool:
        if if_range is None:
            return True
        if_range = if_range.strip()
        if if_range.startswith(("W/", '"')):
            # Only a strong ETag validates a range (RFC 9110 13.1.5).
            return blob.etag is not None and not if_range.startswith("W/") and if_range == blob.etag
        return blob.last_modified is not None and if_range == blob.last_modified

    def _send_body(self, path: str, view: memoryview, fault: Fault | None) -> None:
        self.wfile.flush()
        limit = len(view)
        if fault is not None and fault.reset_after is not None:
            limit = min(limit, fault.reset_after)
        if fault is not None and fault.stall_after is not None:
            limit = min(limit, fault.stall_after)
        rate = fault.rate if fault is not None else None
        if rate:
            self._drip(path, view[:limit], rate)
        else:
            self._send_all(path, view[:limit])
        if fault is not None and fault.stall_after is not None and fault.stall_after < len(view):
            self._stall()
            return
        if limit < len(view) or (fault is not None and fault.content_length is not None):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_all(self, path: str, view: memoryview) -> None:
        sock = self.connection
        state = self.server.state
        offset = 0
        while offset < len(view):
            if state.stopping.is_set():
                raise _Aborted
            sent = sock.send(view[offset : offset + _SEND_CHUNK])
            if sent <= 0:
                raise _Aborted
            offset += sent
            with state.lock:
                state.served[path] = state.served.get(path, 0) + sent

    def _drip(self, path: str, view: memoryview, rate: float) -> None:
        step = max(1, int(rate * _TICK))
        started = time.monotonic()
        sent = 0
        while sent < len(view):
            self._send_all(path, view[sent : sent + step])
            sent += min(step, len(view) - sent)
            due = started + sent / rate
            while (delay := due - time.monotonic()) > 0:
                self._idle(min(delay, _TICK))

    def _stall(self) -> None:
        self.close_connection = True
        while True:
            self._idle(_TICK)

    def _idle(self, seconds: float) -> None:
        """Sleep, but leave as soon as the server stops or the peer closes."""
        if self.server.state.stopping.is_set():
            raise _Aborted
        readable, _, _ = select.select([self.connection], [], [], seconds)
        if readable:
            try:
                chunk = self.connection.recv(65536, socket.MSG_PEEK)
            except OSError as exc:
                raise _Aborted from exc
            if not chunk:
                raise _Aborted
            # The client pipelined another request: it stays unread, we keep stalling.
            time.sleep(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up mid-body is normal in these tests


class HttpTestServer:
    """A threaded HTTP/1.1 server on ``host`` (127.0.0.1 by default), port chosen by the OS."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._state = _State()
        self._server = _Server((host, port), self._state)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> HttpTestServer:
        """Serve in a background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"http-test-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers, close the listening socket."""
        self._state.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> HttpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def add(self, path: str, data: bytes | Blob, **blob_options: object) -> str:
        """Register (or replace: a new version) the resource at ``path``; returns its URL.

        ``blob_options`` go to ``Blob.of`` (``etag=``, ``last_modified=``, ``mtime=``,
        ``accept_ranges=``, ``content_type=``)."""
        blob = data if isinstance(data, Blob) else Blob.of(data, **blob_options)  # type: ignore[arg-type]
        with self._state.lock:
            self._state.blobs[path] = blob
        return self.url(path)

    def add_tree(self, prefix: str, folder: Path, *, index: str = "index.html") -> None:
        """Register every file under ``folder`` at ``prefix``; a directory's ``index`` file is
        also served at ``dir/`` (what a static web server does)."""
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        for file in sorted(folder.rglob("*")):
            if not file.is_file():
                continue
            rel = file.relative_to(folder).as_posix()
            content_type = "text/html" if file.suffix == ".html" else "application/octet-stream"
            self.add(f"{prefix}/{rel}", file.read_bytes(), content_type=content_type)
            if file.name == index:
                parent = file.parent.relative_to(folder).as_posix()
                dir_path = f"{prefix}/" if parent == "." else f"{prefix}/{parent}/"
                self.add(dir_path, file.read_bytes(), content_type=content_type)

    def blob(self, path: str) -> Blob:
        """The registered resource at ``path``."""
        with self._state.lock:
            return self._state.blobs[path]

    def remove(self, path: str) -> None:
        """Forget ``path`` (it answers 404 from now on)."""
        with self._state.lock:
            self._state.blobs.pop(path, None)

    # -- faults ----------------------------------------------------------------------
    def fault(self, path: str, fault: Fault, *, times: int | None = 1) -> None:
        """Apply ``fault`` to the next ``times`` matching requests for ``path`` (``None``:
        to every one until ``clear_faults``). Queued faults apply in order."""
        with self._state.lock:
            self._state.faults.setdefault(path, []).append(_Queued(fault, times))

    def clear_faults(self, path: str | None = None) -> None:
        """Drop the queued faults of ``path``, or of every path."""
        with self._state.lock:
            if path is None:
                self._state.faults.clear()
            else:
                self._state.faults.pop(path, None)

    # -- observations ----------------------------------------------------------------
    def bytes_served(self, path: str | None = None) -> int:
        """Body bytes handed to the kernel, for ``path`` or in total."""
        with self._state.lock:
            if path is None:
                return sum(self._state.served.values())
            return self._state.served.get(path, 0)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request so far, in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    def requests_for(self, path: str, method: str | None = "GET") -> list[RequestRecord]:
        """The recorded requests for ``path`` (of ``method``; ``None`` for any)."""
        return [r for r in self.requests if r.path == path and method in (None, r.method)]

    @property
    def max_concurrent(self) -> int:
        """The most requests this server was answering at the same time."""
        with self._state.lock:
            return self._state.max_in_flight

    def reset_stats(self) -> None:
        """Forget the byte counts, the request log and the concurrency peak."""
        with self._state.lock:
            self._state.served.clear()
            self._state.requests.clear()
            self._state.max_in_flight = self._state.in_flight


@contextlib.contextmanager
def serving(
    *paths_and_data: tuple[str, bytes], host: str = "127.0.0.1"
) -> Iterator[HttpTestServer]:
    """A started server with the given ``(path, bytes)`` resources; stopped on exit.

    In a test module: ``@pytest.fixture`` ``def server(): with serving() as s: yield s``."""
    server = HttpTestServer(host=host)
    for path, data in paths_and_data:
        server.add(path, data)
    with server:
        yield server


@contextlib.contextmanager
def server_pool() -> Iterator[ServerPool]:
    """Several servers (mirrors) started on demand and all stopped on exit."""
    pool = ServerPool()
    try:
        yield pool
    finally:
        pool.close()


class ServerPool:
    """Starts ``HttpTestServer``s on demand (``pool.new()``); ``close()`` stops them all."""

    def __init__(self) -> None:
        self.servers: list[HttpTestServer] = []

    def new(self, host: str = "127.0.0.1") -> HttpTestServer:
        server = HttpTestServer(host=host).start()
        self.servers.append(server)
        return server

    def mirrors(self, count: int, path: str, data: bytes | Blob) -> list[HttpTestServer]:
        """``count`` servers all serving the same ``data`` (same validators) at ``path``."""
        blob = data if isinstance(data, Blob) else Blob.of(data)
        servers = [self.new() for _ in range(count)]
        for server in servers:
            server.add(path, blob)
        return servers

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes (fast to make even for 200 MB)."""
    block = hashlib.shake_256(f"acquired-test-{seed}".encode()).digest(1 << 16)
    whole, rest = divmod(size, len(block))
    # A per-block counter prefix keeps blocks distinct so misplaced ranges are visible.
    parts = []
    for i in range(whole):
        parts.append(i.to_bytes(8, "big") + block[8:])
    parts.append(block[:rest])
    return b"".join(parts)

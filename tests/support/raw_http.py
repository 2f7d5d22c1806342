"""A raw-socket HTTP/1.1 server on 127.0.0.1 for answers ``http.server`` will not give:
a close-delimited body that never ends, a body longer than its ``Content-Length``, an
ETag that changes with every answer.

    with RawServer(data, endless=True) as server:
        url = server.url("/f")
        ...
        assert server.sent < 20 * MiB

One thread per connection, one request per connection (``Connection: close``). Range
requests are served (206) unless ``ranges=False``. ``sent`` counts every body byte the
server handed to the kernel.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

_JUNK = b"\xa5" * (1 << 16)


class RawServer:
    """Serves ``data`` at every path, with the faults asked for."""

    def __init__(
        self,
        data: bytes,
        *,
        endless: bool = False,
        length: bool = True,
        flipping_etag: bool = False,
        ranges: bool = True,
        cap: int = 64 << 20,
    ) -> None:
        self.data = data
        self.endless = endless  # after the data, junk until the peer goes (or ``cap``)
        self.length = length  # announce Content-Length (of the data, not the junk)
        self.flipping_etag = flipping_etag
        self.ranges = ranges
        self.cap = cap
        self.sent = 0
        self.answers = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, path: str = "/f") -> str:
        """The URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                self._answer(conn, request.decode("latin-1"))
            except OSError:
                return

    def _answer(self, conn: socket.socket, request: str) -> None:
        headers = {}
        for line in request.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        with self._lock:
            self.answers += 1
            version = self.answers
        size = len(self.data)
        first, last = 0, size - 1
        status = "200 OK"
        extra = ["Accept-Ranges: bytes"] if self.ranges else []
        wanted = headers.get("range", "")
        if self.ranges and wanted.startswith("bytes="):
            a, _, b = wanted[6:].partition("-")
            first = int(a)
            last = min(int(b), size - 1) if b else size - 1
            status = "206 Partial Content"
            extra.append(f"Content-Range: bytes {first}-{last}/{size}")
        body = self.data[first : last + 1]
        etag = f'"v{version}"' if self.flipping_etag else '"same"'
        lines = [f"HTTP/1.1 {status}", f"ETag: {etag}", "Connection: close", *extra]
        if self.length:
            lines.append(f"Content-Length: {len(body)}")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._send(conn, body)
        while self.endless and self.sent < self.cap and not self._stop.is_set():
            self._send(conn, _JUNK)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self._lock:
            self.sent += len(data)

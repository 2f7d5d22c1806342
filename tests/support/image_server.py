"""A threaded loopback HTTP server for URL-list tests: many small resources, each with
its own behaviour (serve, status with headers, redirect, reset, stall, drip), and a count
of requests per path.

    with ImageServer() as server:
        url = server.add("/a.jpg", jpeg_bytes, "image/jpeg")
        server.status("/busy", 429, {"Retry-After": "1"}, times=1, then=jpeg_bytes)
        server.redirect("/evil", "file:///etc/passwd")
        ...
        assert server.hits("/busy") == 2
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What a path answers. ``status``/``headers`` apply to the first ``times`` requests
    (``None``: always); after that, ``body`` is served with 200."""

    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = None
    reset_after: int | None = None
    """Send this many body bytes of a full-length answer, then close."""
    stall: bool = False
    """Read the request and never answer."""
    rate: float | None = None
    """Drip the body at this many bytes per second."""
    no_length: bool = False
    """Send no Content-Length: the body ends when the connection closes."""
    delay: float = 0.0
    """Wait this long before answering (to see concurrency)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        path = self.path.split("?", 1)[0]
        with srv.lock:
            srv.hits[path] = srv.hits.get(path, 0) + 1
            srv.agents.add(self.headers.get("User-Agent", ""))
            route = srv.routes.get(path)
            special = False
            if (
                route is not None
                and route.status is not None
                and (route.times is None or route.times > 0)
            ):
                special = True
                if route.times is not None:
                    route.times -= 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            if route is not None and route.delay:
                time.sleep(route.delay)
            self._answer(route, special)
        except OSError:
            self.close_connection = True
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _answer(self, route: Route | None, special: bool) -> None:
        if route is None:
            self._send(404, b"not found\n", "text/plain", {})
            return
        if route.stall:
            self.close_connection = True
            while not self.server.stopping.wait(0.05):
                pass
            return
        if special:
            assert route.status is not None
            self._send(route.status, b"", "text/plain", route.headers)
            return
        if route.reset_after is not None:
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body[: route.reset_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if route.no_length:
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(route.body)
            return
        if route.rate is not None:
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            step = max(1, int(route.rate / 20))
            for i in range(0, len(route.body), step):
                if self.server.stopping.is_set():
                    return
                self.wfile.write(route.body[i : i + step])
                self.wfile.flush()
                time.sleep(0.05)
            return
        self._send(200, route.body, route.content_type, {})

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        self.agents: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class ImageServer:
    """The server; ``add``/``status``/``redirect``/``route`` register paths, returning URLs."""

    def __init__(self) -> None:
        self._server = _Server()
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ImageServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, route: Route) -> str:
        """Register ``route`` at ``path``; returns its URL."""
        with self._server.lock:
            self._server.routes[path] = route
        return self.url(path)

    def add(self, path: str, body: bytes, content_type: str = "image/jpeg") -> str:
        """Serve ``body`` at ``path`` with 200; returns its URL."""
        return self.route(path, Route(body=body, content_type=content_type))

    def status(
        self,
        path: str,
        status: int,
        headers: dict[str, str] | None = None,
        *,
        times: int | None = None,
        then: bytes = b"",
    ) -> str:
        """Answer ``path`` with ``status`` and ``headers`` (the first ``times`` requests,
        or always), then serve ``then``; returns its URL."""
        return self.route(path, Route(body=then, status=status, headers=headers or {}, times=times))

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        """Answer ``path`` with a redirect to ``location``; returns its URL."""
        return self.status(path, status, {"Location": location})

    def hits(self, path: str) -> int:
        """How many requests ``path`` received."""
        with self._server.lock:
            return self._server.hits.get(path, 0)

    @property
    def max_in_flight(self) -> int:
        """The most requests answered at the same time."""
        with self._server.lock:
            return self._server.max_in_flight

    @property
    def agents(self) -> set[str]:
        """Every User-Agent seen."""
        with self._server.lock:
            return set(self._server.agents)

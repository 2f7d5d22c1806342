"""The control socket: a Unix stream socket speaking one JSON object per line.

Protocol (one request per connection)::

    -> {"cmd": "status"}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": {"code": "...", "message": "...", "hint": "..."}}

Commands: ``ping``, ``status``, ``show {job}``, ``add {name, text, replace}``,
``pause|resume|cancel|retry|forget {job}``, ``doctor``. The server hands each request to
the state thread through ``handler`` and writes back what it returns, with secrets in
URLs redacted.

No client can exhaust the daemon through it: one selector thread reads every
connection (no thread per connection), a small pool of workers waits on the state
thread and writes the replies, a connection that sends nothing for ``READ_TIMEOUT``
seconds is answered with an error and closed, requests are capped at ``MAX_REQUEST``
bytes (``MAX_MANIFEST_REQUEST`` for an ``add`` whose first key is ``cmd``, and only
``MAX_LARGE`` of those buffered at once), JSON deeper than ``MAX_DEPTH`` is refused, and
past ``MAX_CONNECTIONS`` the connection idle the longest is dropped. The listen backlog
is the system's maximum, and :func:`request` retries a connect refused with ``EAGAIN``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import os
import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acquired.common.redact import redact_value
from acquired.daemon.errors import DaemonError

LOG = logging.getLogger("acquired.control")

MAX_REQUEST = 1024 * 1024
MAX_MANIFEST_REQUEST = 64 * 1024 * 1024  # a manifest of a large URL list still fits
MAX_LARGE = 2
MAX_DEPTH = 64
MAX_CONNECTIONS = 512
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
WORKERS = 8
SOCKET_MODE = 0o660
#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

_ADD_RE = re.compile(rb'^\s*\{\s*"cmd"\s*:\s*"add"\s*[,}]')


class DaemonNotRunning(DaemonError):
    """Nothing answers on the control socket."""

    code = "control.not_running"
    hint = "Start it with `systemctl start acquired` (or `make run`), or pass --socket PATH."


class ControlProtocolError(DaemonError):
    """A request or reply that is not what the protocol says."""

    code = "control.protocol"
    hint = "The client and the daemon disagree; use the acquirectl of the same version."


class RequestTooLarge(ControlProtocolError):
    """A request over the size cap."""

    code = "control.too_large"
    hint = (
        "Requests other than `add` must stay under 1 MiB and manifests under 64 MiB; "
        "drop a larger manifest into the inbox instead."
    )


class RequestTooDeep(ControlProtocolError):
    """JSON nested deeper than the daemon accepts."""

    code = "control.too_deep"
    hint = f"Requests are plain objects; nothing needs more than {MAX_DEPTH} levels."


class RequestTimeout(ControlProtocolError):
    """A connection that did not send a whole request in time."""

    code = "control.timeout"
    hint = "Send the whole request, ending with a newline, right after connecting."


class ControlBusy(ControlProtocolError):
    """Too many large requests at once."""

    code = "control.busy"
    hint = "Other manifests are being submitted; try again in a moment."
    retryable = True


class SocketPathTooLong(DaemonError):
    """A socket path longer than AF_UNIX allows."""

    code = "control.path_too_long"
    hint = "Choose a shorter runtime_dir in the configuration (e.g. /run/acquired)."


class SocketInUse(DaemonError):
    """Another daemon listens on the socket."""

    code = "control.in_use"
    hint = (
        "Another acquired is running with this runtime_dir: stop it first, or give this "
        "one its own runtime_dir and state_dir."
    )


class RemoteError(Exception):
    """An error the daemon returned for a request, with the daemon's code and hint
    (``describe`` reads them by duck typing, like any other error)."""

    retryable = False

    def __init__(self, code: str, message: str, hint: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint
        self.details = details


Handler = Callable[[dict[str, Any]], dict[str, Any]]


def error_reply(exc: DaemonError) -> dict[str, Any]:
    """The reply for an error of the control layer itself."""
    return {"ok": False, "error": {"code": exc.code, "message": str(exc), "hint": exc.hint}}


def check_socket_path(path: Path) -> None:
    """Raise :class:`SocketPathTooLong` for a path AF_UNIX cannot bind."""
    size = len(os.fsencode(str(path)))
    if size > MAX_SOCKET_PATH:
        raise SocketPathTooLong(
            f"the control socket path {path} is {size} bytes long; a Unix socket path may "
            f"have at most {MAX_SOCKET_PATH}",
            socket=str(path),
        )


def nesting_depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (iterative: no recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line as a dict; raises a :class:`ControlProtocolError` saying why not."""
    try:
        request = json.loads(line)
    except RecursionError:
        raise RequestTooDeep(f"bad request: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise ControlProtocolError(f"bad request: {exc}") from None
    if nesting_depth(request) > MAX_DEPTH:
        raise RequestTooDeep(f"bad request: JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ControlProtocolError("bad request: a request is a JSON object with a string 'cmd'")
    return request


@dataclass
class _Conn:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    last: float = field(default_factory=time.monotonic)
    large: bool = False


class ControlServer:
    """Serves the control socket; ``handler`` does the work.

    Constructing it binds and listens (so start-up can refuse early, before anything
    else runs); :meth:`start` begins answering.
    """

    def __init__(self, path: Path, handler: Handler | None = None) -> None:
        self.path = path
        self.handler = handler
        check_socket_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a restrictive umask so the socket is never world-accessible, not
        # even for the moment between bind() and chmod().
        old = os.umask(0o117)
        try:
            sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(path, SOCKET_MODE)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        self._listener = sock
        self._inode = path.stat().st_ino
        self._conns: collections.OrderedDict[int, _Conn] = collections.OrderedDict()
        self._large = 0
        self._large_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._work: queue.Queue[tuple[socket.socket, Callable[[], dict[str, Any]]] | None] = (
            queue.Queue()
        )
        self._workers: list[threading.Thread] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, handler: Handler | None = None) -> None:
        """Answer requests from now on (with ``handler``, if given here)."""
        if handler is not None:
            self.handler = handler
        if self.handler is None:
            raise ValueError("ControlServer.start needs a handler")
        # Daemon threads: one still waiting on the state thread must not hold up the exit.
        self._workers = [
            threading.Thread(target=self._work_loop, name=f"control-{i}", daemon=True)
            for i in range(WORKERS)
        ]
        for worker in self._workers:
            worker.start()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering, close every connection and remove the socket."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        for _ in self._workers:
            self._work.put(None)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._listener.close()
        self._selector.close()
        # Only our own socket: a successor may already have bound a new one there.
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()

    # -- the selector thread -------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                events = self._selector.select(timeout=0.5)
                for key, _ in events:
                    if key.data is None:
                        self._accept()
                    else:
                        self._read(key.data)
                self._expire()
            except Exception:
                # One bad connection must not stop the control socket.
                LOG.exception("control socket: internal error")

    def _accept(self) -> None:
        for _ in range(256):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._evict_oldest():
                        time.sleep(0.05)  # out of descriptors with none to give back
                        return
                    continue
                raise
            if len(self._conns) >= MAX_CONNECTIONS:
                self._evict_oldest()
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_oldest(self) -> bool:
        if not self._conns:
            return False
        _, conn = next(iter(self._conns.items()))
        self._close(conn)
        return True

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        start = max(0, len(conn.buf) - 1)
        conn.buf += data
        conn.last = time.monotonic()
        self._conns.move_to_end(conn.sock.fileno())
        end = conn.buf.find(b"\n", start)
        if end >= 0:
            line = bytes(conn.buf[:end])
            self._hand_off(conn, lambda: self._serve(line))
            return
        if len(conn.buf) <= MAX_REQUEST:
            return
        if not _ADD_RE.match(conn.buf[:256]) or len(conn.buf) > MAX_MANIFEST_REQUEST:
            limit = MAX_MANIFEST_REQUEST if _ADD_RE.match(conn.buf[:256]) else MAX_REQUEST
            self._refuse(conn, RequestTooLarge(f"request larger than {limit} bytes"))
        elif not conn.large:
            with self._large_lock:
                if self._large >= MAX_LARGE:
                    self._refuse(conn, ControlBusy("too many large requests at once"))
                    return
                self._large += 1
                conn.large = True

    def _expire(self) -> None:
        deadline = time.monotonic() - READ_TIMEOUT
        while self._conns:
            _, conn = next(iter(self._conns.items()))
            if conn.last > deadline:
                return
            self._refuse(conn, RequestTimeout(f"no whole request within {READ_TIMEOUT:g} s"))

    def _refuse(self, conn: _Conn, exc: DaemonError) -> None:
        reply = error_reply(exc)
        self._hand_off(conn, lambda: reply)

    def _hand_off(self, conn: _Conn, make_reply: Callable[[], dict[str, Any]]) -> None:
        """Take the connection off the selector; a worker computes and writes the reply."""
        self._forget(conn)
        conn.buf = bytearray()
        self._work.put((conn.sock, make_reply))

    def _forget(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        if conn.large:
            with self._large_lock:
                self._large -= 1
            conn.large = False

    def _close(self, conn: _Conn) -> None:
        self._forget(conn)
        conn.sock.close()

    # -- the workers ---------------------------------------------------------------------

    def _work_loop(self) -> None:
        while (item := self._work.get()) is not None:
            if self._stopping.is_set():
                item[0].close()
                continue
            self._answer(*item)

    def _serve(self, line: bytes) -> dict[str, Any]:
        try:
            request = parse_request(line)
        except ControlProtocolError as exc:
            return error_reply(exc)
        assert self.handler is not None
        return self.handler(request)

    def _answer(self, sock: socket.socket, make_reply: Callable[[], dict[str, Any]]) -> None:
        try:
            try:
                reply = make_reply()
            except Exception:
                LOG.exception("control request failed")
                reply = error_reply(DaemonError("internal error while answering the request"))
            data = json.dumps(redact_value(reply), default=str).encode() + b"\n"
            sock.setblocking(True)
            sock.settimeout(WRITE_TIMEOUT)
            sock.sendall(data)
        except OSError:
            pass  # the client went away; nothing to tell it
        finally:
            sock.close()


def _remove_stale(path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse to steal a live one."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except BlockingIOError:
        raise SocketInUse(
            f"another acquired is already listening on {path}", socket=str(path)
        ) from None
    except OSError:
        path.unlink()
    else:
        raise SocketInUse(f"another acquired is already listening on {path}", socket=str(path))
    finally:
        probe.close()


def _connect(socket_path: Path, timeout: float) -> socket.socket:
    """A connected socket; retries while the daemon's backlog is full (``EAGAIN``)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
            return sock
        except (BlockingIOError, InterruptedError) as exc:
            sock.close()
            if time.monotonic() + delay > deadline:
                raise DaemonNotRunning(
                    f"the daemon at {socket_path} is too busy to accept a connection",
                    socket=str(socket_path),
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            sock.close()
            raise DaemonNotRunning(
                f"acquired is not running (no daemon listens on {socket_path})",
                socket=str(socket_path),
            ) from exc
        except PermissionError as exc:
            sock.close()
            raise DaemonNotRunning(
                f"no permission to use {socket_path}: join the daemon's group"
                " (e.g. `usermod -aG acquired $USER`) or run as root",
                socket=str(socket_path),
            ) from exc
        except BaseException:
            sock.close()
            raise


def request(socket_path: Path, payload: dict[str, Any], *, timeout: float = 30.0) -> Any:
    """Send one request to the daemon and return its ``result``.

    Raises DaemonNotRunning when nothing listens on the socket, RemoteError with the
    daemon's code and hint when the daemon refuses the request.
    """
    sock = _connect(Path(socket_path), timeout)
    try:
        # The daemon may refuse early (too large); its reply is still readable then.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps(payload).encode() + b"\n")
        with sock.makefile("rb") as reader:
            line = reader.readline()
    finally:
        sock.close()
    if not line:
        raise ControlProtocolError("the daemon closed the connection without an answer")
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ControlProtocolError(f"the daemon's answer is not JSON: {exc}") from None
    if reply.get("ok"):
        return reply.get("result")
    err = reply.get("error") or {}
    raise RemoteError(
        err.get("code", "daemon.error"),
        err.get("message", "the daemon refused the request"),
        err.get("hint", ""),
        err.get("details") or {},
    )

"""The control socket: a Unix stream socket speaking one JSON object per line.

Protocol (one request per connection)::

    -> {"cmd": "status"}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": {"code": "...", "message": "...", "hint": "..."}}

Commands: ``ping``, ``status``, ``show {job}``, ``add {name, text, replace}``,
``pause|resume|cancel|retry {job}``, ``doctor``. The server hands each request to the
state thread through ``handler`` and writes back what it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acquired.daemon.errors import DaemonError

MAX_REQUEST = 64 * 1024 * 1024  # a manifest of a large URL list still fits
SOCKET_MODE = 0o660


class DaemonNotRunning(DaemonError):
    """No daemon listens on the control socket."""

    code = "control.not_running"
    hint = "Start it with `systemctl start acquired` (or `make run`), or pass --socket PATH."


class ControlProtocolError(DaemonError):
    """The daemon's answer is not the control protocol (another version or program)."""

    code = "control.protocol"
    hint = "The client and the daemon disagree; use the acquirectl of the same version."


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


class _RequestHandler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST + 1)
        if not line:
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("a request is a JSON object with a string 'cmd'")
        except ValueError as exc:
            reply: dict[str, Any] = {
                "ok": False,
                "error": {
                    "code": ControlProtocolError.code,
                    "message": f"bad request: {exc}",
                    "hint": ControlProtocolError.hint,
                },
            }
        else:
            reply = self.server.handler(request)
        self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves the control socket on its own threads; ``handler`` does the work."""

    daemon_threads = True

    def __init__(self, path: Path, handler: Handler) -> None:
        self.handler = handler
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        # Bind under a restrictive umask so the socket is never world-accessible, not
        # even for the moment between bind() and chmod().
        old = os.umask(0o117)
        try:
            super().__init__(str(path), _RequestHandler)
        finally:
            os.umask(old)
        os.chmod(path, SOCKET_MODE)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve requests on a background thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="control", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the socket and remove its file."""
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _remove_stale(path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse to steal a live one."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise DaemonError(
            f"another acquired is already listening on {path}",
            socket=str(path),
        )
    finally:
        probe.close()


def request(socket_path: Path, payload: dict[str, Any], *, timeout: float = 30.0) -> Any:
    """Send one request to the daemon and return its ``result``.

    Raises DaemonNotRunning when nothing listens on the socket, RemoteError with the
    daemon's code and hint when the daemon refuses the request.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(
                f"acquired is not running (no daemon listens on {socket_path})",
                socket=str(socket_path),
            ) from exc
        except PermissionError as exc:
            raise DaemonNotRunning(
                f"no permission to use {socket_path}: join the daemon's group"
                " (e.g. `usermod -aG acquired $USER`) or run as root",
                socket=str(socket_path),
            ) from exc
        sock.sendall(json.dumps(payload).encode() + b"\n")
        with sock.makefile("rb") as reader:
            line = reader.readline()
    finally:
        sock.close()
    if not line:
        raise ControlProtocolError("the daemon closed the connection without an answer")
    reply = json.loads(line)
    if reply.get("ok"):
        return reply.get("result")
    err = reply.get("error") or {}
    raise RemoteError(
        err.get("code", "daemon.error"),
        err.get("message", "the daemon refused the request"),
        err.get("hint", ""),
        err.get("details") or {},
    )

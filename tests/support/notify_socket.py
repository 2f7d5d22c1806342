"""A real ``NOTIFY_SOCKET``: a Unix datagram socket that records what a service sends.

    with NotifySocket() as ns:
        proc = subprocess.Popen([...], env={**os.environ, **ns.env()})
        ns.wait_for("READY", "1", timeout=30)

Every datagram is parsed into ``{"NAME": "value", ...}`` (one assignment per line, as
sd_notify(3) sends them) and kept with the receiver's ``time.monotonic()``. ``on_message``
callbacks run in the receiver thread *before* the message is published, so a test can
check the world at the moment a message arrived (e.g. "the control socket answers when
READY=1 comes in").
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class Notification:
    """One datagram: its assignments, raw text, arrival time, and sender pid if known."""

    fields: dict[str, str]
    raw: str
    received: float
    pid: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


def parse(datagram: bytes) -> dict[str, str]:
    """``b"READY=1\\nSTATUS=x"`` -> ``{"READY": "1", "STATUS": "x"}``."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").split("\n"):
        name, sep, value = line.partition("=")
        if sep:
            fields[name] = value
    return fields


class NotifySocket:
    """Bind a datagram socket in a fresh temporary folder and record notifications."""

    def __init__(self, directory: Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            # short path: sun_path is limited to 107 bytes
            self._tmp = tempfile.TemporaryDirectory(prefix="ntf-", dir="/tmp")
            directory = Path(self._tmp.name)
        self.path = directory / "notify.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.settimeout(0.1)
        self._cond = threading.Condition()
        self._messages: list[Notification] = []
        self._callbacks: list[Callable[[Notification], dict[str, object] | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """Environment that points sd_notify at this socket."""
        return {"NOTIFY_SOCKET": str(self.path)}

    def on_message(self, callback: Callable[[Notification], dict[str, object] | None]) -> None:
        """Run ``callback(notification)`` in the receiver thread before it is published;
        a dict it returns is stored as the notification's ``extra``."""
        self._callbacks.append(callback)

    def _receive(self) -> None:
        size = socket.CMSG_SPACE(3 * 4)
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(65536, size)
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.monotonic()
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], "little")
            note = Notification(parse(data), data.decode("utf-8", "replace"), received, pid)
            for callback in self._callbacks:
                result = callback(note)
                if result:
                    note.extra.update(result)
            with self._cond:
                self._messages.append(note)
                self._cond.notify_all()

    @property
    def messages(self) -> list[Notification]:
        """Everything received so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    def values(self, name: str) -> list[str]:
        """Every value sent for ``name`` (e.g. all STATUS texts), in order."""
        return [m.fields[name] for m in self.messages if name in m.fields]

    def wait_for(
        self,
        name: str,
        value: str | None = None,
        timeout: float = 30.0,
        after: int = 0,
    ) -> Notification:
        """The first notification (from index ``after``) that assigns ``name`` (``=value``).

        Raises ``TimeoutError`` listing what did arrive, so a failure explains itself.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for note in self._messages[after:]:
                    if name in note.fields and (value is None or note.fields[name] == value):
                        return note
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m.raw for m in self._messages]
                    raise TimeoutError(f"no {name}={value or '*'} within {timeout}s; got {seen}")
                self._cond.wait(left)

    def index_of(self, note: Notification) -> int:
        """Position of ``note`` in ``messages``."""
        with self._cond:
            return self._messages.index(note)

    def close(self) -> None:
        """Stop the receiver and remove the socket."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""The state folder belongs to one daemon at a time: an exclusive ``flock`` on
``<state_dir>/acquired.lock``, held for the daemon's whole life.

Two daemons on one state folder would both re-queue the same interrupted files and
write the same ``.part`` files. The lock goes with the process (a crash or ``kill -9``
releases it), so a stale lock file never blocks a restart; the file records the holder's
pid only to name it in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from acquired.daemon.errors import DaemonError

LOCK_NAME = "acquired.lock"


class StateDirLocked(DaemonError):
    """Another daemon holds the state folder."""

    code = "daemon.state_locked"
    hint = (
        "Another acquired uses this state_dir: stop it first (systemctl stop acquired), "
        "or give this one its own state_dir and runtime_dir."
    )


class StateLock:
    """An exclusive lock on a state folder; :meth:`acquire` it, :meth:`release` at exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock ``state_dir`` or raise :class:`StateDirLocked` naming the holder."""
        path = state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StateDirLocked(
                f"the state folder {state_dir} is in use by another acquired{who}",
                state_dir=str(state_dir),
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Give the folder up (the file stays; the lock is what counts)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

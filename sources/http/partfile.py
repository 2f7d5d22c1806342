"""The ``.part`` file: positional writes, flushes, and the rename into place."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# The hasher and the algorithm names are the shared ones; imported here for the engine.
from acquired.common.digests import Hasher
from acquired.common.digests import normalize_algorithm as normalise_algorithm
from acquired.sources.errors import DiskFull

__all__ = ["Hasher", "PartFile", "normalise_algorithm"]


class PartFile:
    """An open ``.part`` file. Every write is positional, so threads share one descriptor.

    ENOSPC (and EDQUOT) surface as ``DiskFull``; what was written before stays on disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def size(self) -> int:
        """Current length of the file on disk."""
        return os.fstat(self.fd).st_size

    def pwrite(self, data: memoryview | bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (short writes are continued)."""
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                raise self._translate(exc) from exc
            view = view[n:]
            offset += n

    def truncate(self, size: int) -> None:
        """Cut or extend the file to ``size`` bytes."""
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise self._translate(exc) from exc

    def preallocate(self, size: int) -> None:
        """Reserve ``size`` bytes up front: ENOSPC now rather than mid-transfer, and no
        fragmentation from many writers. Falls back to a sparse file where the
        filesystem cannot allocate."""
        if self.size() >= size:
            return
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._translate(exc) from exc
            self.truncate(size)

    def sync(self) -> None:
        """Flush written data to stable storage (fdatasync)."""
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise self._translate(exc) from exc

    def close(self) -> None:
        """Close the descriptor; calling it again does nothing."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Close and delete the ``.part`` file."""
        self.close()
        self.path.unlink(missing_ok=True)

    def rename_to(self, dest: Path) -> None:
        """Atomically move the (synced) data to ``dest`` and make the rename durable."""
        self.sync()
        self.close()
        os.replace(self.path, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _translate(self, exc: OSError) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(
                f"no space left on the device while writing {self.path}",
                path=str(self.path),
                errno=exc.errno,
            )
        return exc

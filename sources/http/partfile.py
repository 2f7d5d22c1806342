"""The ``.part`` file: positional writes, flushes, and the rename into place."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from acquired.sources.errors import DiskFull
from acquired.sources.http.errors import UnsupportedDigest


class PartFile:
    """An open ``.part`` file. Every write is positional, so threads share one descriptor.

    ENOSPC (and EDQUOT) surface as ``DiskFull``; what was written before stays on disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def pwrite(self, data: memoryview | bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                raise self._translate(exc) from exc
            view = view[n:]
            offset += n

    def truncate(self, size: int) -> None:
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
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
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


def normalise_algorithm(name: str) -> str:
    """``"SHA-256"`` -> ``"sha256"``; raises UnsupportedDigest for what hashlib lacks."""
    norm = name.strip().lower().replace("-", "").replace("_", "")
    aliases = {"blake2b512": "blake2b", "blake2s256": "blake2s", "sha3256": "sha3_256"}
    norm = aliases.get(norm, norm)
    if norm.startswith("sha3") and "_" not in norm and len(norm) > 4:
        norm = "sha3_" + norm[4:]
    if norm not in hashlib.algorithms_available:
        raise UnsupportedDigest(
            f"unsupported digest algorithm {name!r}",
            algorithm=name,
            supported=sorted(hashlib.algorithms_guaranteed),
        )
    return norm


class Hasher:
    """Several digests of one byte stream, fed in order."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        self.algorithms = sorted({normalise_algorithm(a) for a in algorithms} or {"sha256"})
        self._hashes = {a: hashlib.new(a) for a in self.algorithms}
        self.length = 0

    def update(self, data: memoryview | bytes) -> None:
        for h in self._hashes.values():
            h.update(data)
        self.length += len(data)

    def update_from_file(self, fd: int, start: int, end: int, chunk: int = 1 << 20) -> None:
        """Feed bytes ``[start, end)`` of an open file (resume: the prefix already on disk)."""
        buf = bytearray(chunk)
        view = memoryview(buf)
        pos = start
        while pos < end:
            n = os.preadv(fd, [view[: min(chunk, end - pos)]], pos)
            if n <= 0:
                raise OSError(errno.EIO, f"short read at offset {pos} while hashing")
            self.update(view[:n])
            pos += n

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self._hashes.items()}

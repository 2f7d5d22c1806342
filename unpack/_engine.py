"""The extraction engine: writes the members of one archive into a root folder under the
rules of :mod:`acquired.unpack.safety`, within a byte/entry budget.

The archive readers that feed a :class:`Writer` live in :mod:`acquired.unpack._readers`;
both run in the calling thread and, for nested archives, in worker processes
(:func:`acquired.unpack._readers.run_inner`). Nothing here knows about staging or markers.
"""

from __future__ import annotations

import contextlib
import errno
import io
import lzma
import os
import stat
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

import zstandard

from . import safety
from .errors import (
    CorruptArchive,
    DiskFull,
    ExtractCancelled,
    LinkEscape,
    ReservedName,
    UnpackError,
    WriteFailed,
)
from .safety import Limits

COPY_BUFFER = 1 << 20

# Shared counters between the calling process and nested-extraction workers.
ENTRIES, BYTES, CONSUMED, ABORT = range(4)

# How often a budget publishes its counts (and looks at the abort flag).
_FLUSH_ENTRIES = 64
_FLUSH_BYTES = 8 << 20

# What reading a damaged archive raises (besides OSError, which gzip uses too).
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    zstandard.ZstdError,
    zipfile.BadZipFile,
    lzma.LZMAError,
    zlib.error,
)


class Shared:
    """Counters shared by every process of one extraction: entries, bytes, input bytes
    consumed, abort flag. ``array`` is a ``multiprocessing`` RawArray of 'q' (or a list
    when everything runs in one process)."""

    def __init__(self, array: Any, lock: Any) -> None:
        self.array = array
        self.lock = lock

    def add(self, entries: int, nbytes: int, consumed: int) -> tuple[int, int, bool]:
        """Add one worker's counts; the totals so far and whether the extraction was aborted."""
        with self.lock:
            self.array[ENTRIES] += entries
            self.array[BYTES] += nbytes
            self.array[CONSUMED] += consumed
            return self.array[ENTRIES], self.array[BYTES], bool(self.array[ABORT])

    def abort(self) -> None:
        """Ask every worker of this extraction to stop."""
        with self.lock:
            self.array[ABORT] = 1

    def aborted(self) -> bool:
        """True once some worker asked all to stop."""
        return bool(self.array[ABORT])

    def consumed(self) -> int:
        """Compressed bytes read so far by all workers."""
        return int(self.array[CONSUMED])


def local_shared() -> Shared:
    """Counters for an extraction that runs in one process."""
    return Shared([0, 0, 0, 0], threading.Lock())


class Budget:
    """Counts what one archive writes, against the limits of the whole extraction."""

    def __init__(
        self,
        limits: Limits,
        archive_size: int,
        archive_name: str,
        shared: Shared,
        cancel: threading.Event | None = None,
    ) -> None:
        self.limits = limits
        self.allowed = limits.allowed_bytes(archive_size)
        self.allowed_entries = limits.allowed_entries(archive_size)
        self.name = archive_name
        self.shared = shared
        self.cancel = cancel
        self.entries = 0
        self.files = 0
        self.bytes = 0
        self._pe = 0
        self._pb = 0
        self._pc = 0
        self._global_entries = 0
        self._global_bytes = 0
        # Compressed bytes read so far (set for a compressed top-level archive): the
        # expansion ratio is checked as the stream is read, not only at the end.
        self.input_pos: Callable[[], int] | None = None

    def entry(self) -> None:
        """Count one entry against the entry limit."""
        self.entries += 1
        self._pe += 1
        safety.check_entries(self._global_entries + self._pe, self.allowed_entries, self.name)
        if self._pe >= _FLUSH_ENTRIES:
            self.flush()

    def reserve(self, nbytes: int) -> None:
        """Refuse before writing when ``nbytes`` more would exceed the byte budget."""
        total = self._global_bytes + self._pb + nbytes
        safety.check_bytes(total, self.allowed, self.limits, self.name)
        safety.check_room(total, self.limits, self.name)

    def wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` written; refuse past the budget, the ratio or the reserve."""
        self.bytes += nbytes
        self._pb += nbytes
        total = self._global_bytes + self._pb
        safety.check_bytes(total, self.allowed, self.limits, self.name)
        safety.check_room(total, self.limits, self.name)
        if self.input_pos is not None:
            safety.check_stream_ratio(total, self.input_pos(), self.limits, self.name)
        if self._pb >= _FLUSH_BYTES:
            self.flush()

    def consumed(self, nbytes: int) -> None:
        """Count compressed bytes read (the ratio check's denominator)."""
        self._pc += nbytes
        if self._pc >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Share this worker's counts and check the limits against the totals."""
        entries, nbytes, aborted = self.shared.add(self._pe, self._pb, self._pc)
        self._pe = self._pb = self._pc = 0
        self._global_entries, self._global_bytes = entries, nbytes
        safety.check_entries(entries, self.allowed_entries, self.name)
        safety.check_bytes(nbytes, self.allowed, self.limits, self.name)
        if aborted or (self.cancel is not None and self.cancel.is_set()):
            raise ExtractCancelled(f"extraction of {self.name} was stopped", archive=self.name)


def _os_error(exc: OSError, path: str) -> UnpackError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left while writing {path}", path=path)
    return WriteFailed(f"cannot write {path}: {exc.strerror or exc}", path=path, errno=exc.errno)


class Writer:
    """Creates entries below ``root`` (absolute, resolved) and nowhere else.

    Every operation is relative to a descriptor of ``root`` opened once (``O_NOFOLLOW``),
    so the folder swapped for a link while the archive is read changes nothing: entries
    land in the folder that was opened. Call :meth:`close` when done.
    """

    def __init__(
        self, root: str, budget: Budget, *, top: bool = False, fd: int | None = None
    ) -> None:
        self.root = root
        # ``fd``: a descriptor of ``root`` the caller opened safely (the writer owns it).
        self.fd = (
            fd
            if fd is not None
            else os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        )
        self.budget = budget
        self.top = top
        self.made_dirs: set[str] = {""}
        self.symlinks: set[str] = set()
        self.symlink_paths: list[str] = []
        self.dir_times: list[tuple[str, float]] = []
        # Folders that inner archives extract into (nested): the outer archive may not
        # put anything below them, a worker process is writing there.
        self.inner_dirs: set[str] = set()
        # Called after each chunk of a streamed file (progress during a huge member).
        self.on_data: Callable[[], None] | None = None
        self._buf = bytearray(COPY_BUFFER)
        self._fast_copy = True

    # -- paths ---------------------------------------------------------------------------

    def _guard(self, rel: str, member: str) -> None:
        """Refuse a member below a symlink this archive made (no writing through links),
        below an inner archive's folder, or using a reserved name."""
        if self.top and rel.startswith(".acquired"):
            raise ReservedName(
                f"{member!r}: names starting with '.acquired' are kept for the pipeline",
                member=member,
            )
        if not self.symlinks and not self.inner_dirs:
            return
        parts = rel.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.symlinks:
                raise LinkEscape(
                    f"{member!r} would be written through the symlink {prefix!r}",
                    member=member,
                    symlink=prefix,
                )
            if prefix in self.inner_dirs:
                raise CorruptArchive(
                    f"{member!r} lies in the folder of the inner archive {prefix!r}",
                    member=member,
                )

    def close(self) -> None:
        """Close the descriptor of the root."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _ensure_parent(self, rel: str, member: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent in self.made_dirs:
            return
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix in self.made_dirs:
                continue
            try:
                os.mkdir(prefix, dir_fd=self.fd)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(prefix, dir_fd=self.fd).st_mode):
                    raise CorruptArchive(
                        f"{member!r}: a parent folder is a file in this archive", member=member
                    ) from None
            except NotADirectoryError:
                raise CorruptArchive(
                    f"{member!r}: a parent folder is a file in this archive", member=member
                ) from None
            except OSError as exc:
                raise _os_error(exc, os.path.join(self.root, prefix)) from None
            self.made_dirs.add(prefix)

    def _clear(self, rel: str, member: str) -> None:
        """Remove what a later member replaces (tar semantics); never a folder."""
        try:
            st = os.lstat(rel, dir_fd=self.fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise CorruptArchive(
                f"{member!r}: replaces a folder of the same archive", member=member
            )
        os.unlink(rel, dir_fd=self.fd)
        self.symlinks.discard(rel)

    def _open_new(self, rel: str, mode: int, member: str) -> int:
        path = os.path.join(self.root, rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(rel, flags, mode, dir_fd=self.fd)
        except FileExistsError:
            self._clear(rel, member)
            try:
                return os.open(rel, flags, mode, dir_fd=self.fd)
            except OSError as exc:
                raise _os_error(exc, path) from None
        except OSError as exc:
            raise _os_error(exc, path) from None

    # -- entries -------------------------------------------------------------------------

    def directory(self, rel: str, member: str, mtime: float | None) -> None:
        """Make a folder entry (never over a link placed by the archive)."""
        self._guard(rel, member)
        if rel in self.symlinks:
            raise LinkEscape(f"{member!r}: a folder over a symlink", member=member, symlink=rel)
        if rel not in self.made_dirs:
            self._ensure_parent(rel, member)
            path = os.path.join(self.root, rel)
            try:
                os.mkdir(rel or ".", dir_fd=self.fd)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(rel or ".", dir_fd=self.fd).st_mode):
                    raise CorruptArchive(
                        f"{member!r}: a folder where the archive already put a file",
                        member=member,
                    ) from None
            except OSError as exc:
                raise _os_error(exc, path) from None
            self.made_dirs.add(rel)
        if mtime is not None and rel:
            self.dir_times.append((rel, mtime))

    def file_from_fd(
        self,
        rel: str,
        *,
        member: str,
        src_fd: int,
        offset: int,
        size: int,
        mode: int,
        mtime: float | None,
    ) -> None:
        """A regular file whose data is ``size`` bytes at ``offset`` of ``src_fd``: copied
        in the kernel (copy_file_range), never through Python buffers."""
        self._guard(rel, member)
        self._ensure_parent(rel, member)
        self.budget.reserve(size)
        fd = self._open_new(rel, mode, member)
        path = os.path.join(self.root, rel)
        try:
            remaining = size
            pos = offset
            while remaining:
                n = self._copy(src_fd, fd, pos, remaining, path)
                if n == 0:
                    raise CorruptArchive(
                        f"{member!r}: archive ends inside this member's data", member=member
                    )
                pos += n
                remaining -= n
                self.budget.wrote(n)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        self.budget.files += 1

    def _copy(self, src: int, dst: int, offset: int, count: int, path: str) -> int:
        count = min(count, 1 << 30)
        if self._fast_copy:
            try:
                return os.copy_file_range(src, dst, count, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise _os_error(exc, path) from None
                self._fast_copy = False
        try:
            data = os.pread(src, min(count, len(self._buf)), offset)
            if data:
                view = memoryview(data)
                while view:
                    w = os.write(dst, view)
                    view = view[w:]
            return len(data)
        except OSError as exc:
            raise _os_error(exc, path) from None

    def file_from_stream(
        self,
        rel: str,
        *,
        member: str,
        src: IO[bytes],
        size: int | None,
        mode: int,
        mtime: float | None,
    ) -> int:
        """A regular file read from a stream; ``size`` (when known) must be exact: a
        stream that gives more or less is a corrupt archive."""
        self._guard(rel, member)
        self._ensure_parent(rel, member)
        if size is not None:
            self.budget.reserve(size)
        fd = self._open_new(rel, mode, member)
        path = os.path.join(self.root, rel)
        buf = self._buf
        view = memoryview(buf)
        total = 0
        try:
            while True:
                want = len(buf) if size is None else min(len(buf), size - total + 1)
                if want == 0:
                    break
                try:
                    n = src.readinto(view[:want])  # type: ignore[attr-defined]
                except _DECOMPRESS_ERRORS as exc:
                    raise CorruptArchive(f"{member!r}: {exc}", member=member) from None
                except OSError as exc:
                    # gzip raises plain OSError/BadGzipFile for bad data.
                    raise CorruptArchive(f"{member!r}: {exc}", member=member) from None
                if not n:
                    break
                if size is not None and total + n > size:
                    raise CorruptArchive(
                        f"{member!r}: more data than the archive declares ({size} bytes)",
                        member=member,
                        declared=size,
                    )
                chunk = view[:n]
                try:
                    while chunk:
                        w = os.write(fd, chunk)
                        chunk = chunk[w:]
                except OSError as exc:
                    raise _os_error(exc, path) from None
                total += n
                self.budget.wrote(n)
                if self.on_data is not None:
                    self.on_data()
            if size is not None and total != size:
                raise CorruptArchive(
                    f"{member!r}: {total} bytes of data, the archive declares {size}",
                    member=member,
                    declared=size,
                    actual=total,
                )
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        self.budget.files += 1
        return total

    def symlink(self, rel: str, member: str, target: str) -> None:
        """Make a symlink entry; where it points is checked again at placement."""
        self._guard(rel, member)
        self._ensure_parent(rel, member)
        path = os.path.join(self.root, rel)
        self._clear(rel, member)
        try:
            os.symlink(target, rel, dir_fd=self.fd)
        except OSError as exc:
            raise _os_error(exc, path) from None
        self.symlinks.add(rel)
        self.symlink_paths.append(path)

    def hardlink(self, rel: str, member: str, target_rel: str) -> None:
        """Make a hard link to an entry already extracted (not to or through a symlink)."""
        self._guard(rel, member)
        # Not to (or through) a symlink either: a hard link to a symlink is refused.
        self._guard(target_rel + "/x", member)
        self._ensure_parent(rel, member)
        path = os.path.join(self.root, rel)
        try:
            source_mode = os.lstat(target_rel, dir_fd=self.fd).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise CorruptArchive(
                f"{member!r}: hard link to {target_rel!r}, which the archive has not created",
                member=member,
                target=target_rel,
            ) from None
        if stat.S_ISDIR(source_mode):
            raise CorruptArchive(f"{member!r}: hard link to a folder", member=member)
        self._clear(rel, member)
        try:
            os.link(target_rel, rel, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        except OSError as exc:
            raise _os_error(exc, path) from None
        self.budget.files += 1

    def finish(self) -> None:
        """Folder times last (writing into a folder changes its time), deepest first."""
        for rel, mtime in sorted(self.dir_times, key=lambda t: t[0].count("/"), reverse=True):
            with contextlib.suppress(OSError):
                os.utime(rel, (mtime, mtime), dir_fd=self.fd, follow_symlinks=False)


class Throttle:
    """Calls ``progress(done, total)`` at most every ``interval`` seconds (and always for
    the first and last call) — a million-member archive must not flood the daemon."""

    def __init__(
        self, progress: Callable[[int, int], None] | None, total: int, interval: float = 0.25
    ) -> None:
        self.progress = progress
        self.total = total
        self.interval = interval
        self._next = 0.0

    def __call__(self, done: int, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now >= self._next:
            self._next = now + self.interval
            self.progress(min(done, self.total), self.total)


class Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes at ``offset`` of an open file."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self.fd = fd
        self.offset = offset
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        """True: the view is for reading."""
        return True

    def seekable(self) -> bool:
        """True: the view can seek."""
        return True

    def readinto(self, b: Any) -> int:
        """Read into ``b`` from the current position, at most to the end of the view."""
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        data = os.pread(self.fd, n, self.offset + self.pos)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        """Move within the view (``whence`` as for files)."""
        if whence == io.SEEK_SET:
            self.pos = pos
        elif whence == io.SEEK_CUR:
            self.pos += pos
        else:
            self.pos = self.size + pos
        return self.pos

    def tell(self) -> int:
        """The position within the view."""
        return self.pos


class Counting(io.RawIOBase):
    """Counts the bytes read from a raw stream (progress of a compressed archive)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        """True: the stream is for reading."""
        return True

    def readinto(self, b: Any) -> int:
        """Read into ``b`` from the underlying stream, counting the bytes."""
        n = self.raw.readinto(b)  # type: ignore[attr-defined]
        self.count += n or 0
        return n or 0

    def seekable(self) -> bool:
        """False: a counted stream is read once, in order."""
        return False

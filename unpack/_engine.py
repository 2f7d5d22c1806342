"""The extraction engine: writes the members of one archive into a root folder under the
rules of :mod:`acquired.unpack.safety`, within a byte/entry budget.

Used by :mod:`acquired.unpack.extract` in the calling thread and, for nested archives, in
worker processes (:func:`run_inner`). Nothing here knows about staging or markers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import lzma
import os
import signal
import stat
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast

import zstandard

from . import formats, safety
from .errors import (
    CorruptArchive,
    DiskFull,
    EncryptedArchive,
    ExtractCancelled,
    LinkEscape,
    ReservedName,
    UnknownFormat,
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
        with self.lock:
            self.array[ENTRIES] += entries
            self.array[BYTES] += nbytes
            self.array[CONSUMED] += consumed
            return self.array[ENTRIES], self.array[BYTES], bool(self.array[ABORT])

    def abort(self) -> None:
        with self.lock:
            self.array[ABORT] = 1

    def aborted(self) -> bool:
        return bool(self.array[ABORT])

    def consumed(self) -> int:
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
        self._pc += nbytes
        if self._pc >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
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
    """Creates entries below ``root`` (absolute, resolved) and nowhere else."""

    def __init__(self, root: str, budget: Budget, *, top: bool = False) -> None:
        self.root = root
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

    def _ensure_parent(self, rel: str, member: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent in self.made_dirs:
            return
        path = os.path.join(self.root, parent)
        try:
            os.makedirs(path, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise CorruptArchive(
                f"{member!r}: a parent folder is a file in this archive", member=member
            ) from None
        except OSError as exc:
            raise _os_error(exc, path) from None
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            self.made_dirs.add("/".join(parts[:i]))

    def _clear(self, path: str, member: str) -> None:
        """Remove what a later member replaces (tar semantics); never a folder."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise CorruptArchive(
                f"{member!r}: replaces a folder of the same archive", member=member
            )
        os.unlink(path)
        rel = os.path.relpath(path, self.root)
        self.symlinks.discard(rel)

    def _open_new(self, rel: str, mode: int, member: str) -> int:
        path = os.path.join(self.root, rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(path, flags, mode)
        except FileExistsError:
            self._clear(path, member)
            try:
                return os.open(path, flags, mode)
            except OSError as exc:
                raise _os_error(exc, path) from None
        except OSError as exc:
            raise _os_error(exc, path) from None

    # -- entries -------------------------------------------------------------------------

    def directory(self, rel: str, member: str, mtime: float | None) -> None:
        self._guard(rel, member)
        if rel in self.symlinks:
            raise LinkEscape(f"{member!r}: a folder over a symlink", member=member, symlink=rel)
        if rel not in self.made_dirs:
            self._ensure_parent(rel, member)
            path = os.path.join(self.root, rel)
            try:
                os.mkdir(path)
            except FileExistsError:
                if not os.path.isdir(path) or os.path.islink(path):
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
        self._guard(rel, member)
        self._ensure_parent(rel, member)
        path = os.path.join(self.root, rel)
        self._clear(path, member)
        try:
            os.symlink(target, path)
        except OSError as exc:
            raise _os_error(exc, path) from None
        self.symlinks.add(rel)
        self.symlink_paths.append(path)

    def hardlink(self, rel: str, member: str, target_rel: str) -> None:
        self._guard(rel, member)
        # Not to (or through) a symlink either: a hard link to a symlink is refused.
        self._guard(target_rel + "/x", member)
        self._ensure_parent(rel, member)
        path = os.path.join(self.root, rel)
        source = os.path.join(self.root, target_rel)
        if not os.path.lexists(source):
            raise CorruptArchive(
                f"{member!r}: hard link to {target_rel!r}, which the archive has not created",
                member=member,
                target=target_rel,
            )
        if os.path.isdir(source) and not os.path.islink(source):
            raise CorruptArchive(f"{member!r}: hard link to a folder", member=member)
        self._clear(path, member)
        try:
            os.link(source, path, follow_symlinks=False)
        except OSError as exc:
            raise _os_error(exc, path) from None
        self.budget.files += 1

    def finish(self) -> None:
        """Folder times last (writing into a folder changes its time), deepest first."""
        for rel, mtime in sorted(self.dir_times, key=lambda t: t[0].count("/"), reverse=True):
            path = os.path.join(self.root, rel)
            with contextlib.suppress(OSError):
                os.utime(path, (mtime, mtime), follow_symlinks=False)


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
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        data = os.pread(self.fd, n, self.offset + self.pos)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self.pos = pos
        elif whence == io.SEEK_CUR:
            self.pos += pos
        else:
            self.pos = self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos


class Counting(io.RawIOBase):
    """Counts the bytes read from a raw stream (progress of a compressed archive)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.raw.readinto(b)  # type: ignore[attr-defined]
        self.count += n or 0
        return n or 0

    def seekable(self) -> bool:
        return False


# --- one archive ----------------------------------------------------------------------------


# Called for each member of an archive: (member name, data offset, size) -> True when the
# caller took the member (nested extraction hands inner archives to a worker).
InnerHook = Callable[[str, str, int, int, Any], bool]


def extract_tar_seekable(
    fd: int,
    offset: int,
    size: int,
    writer: Writer,
    *,
    on_pos: Callable[[int], None] | None = None,
    inner: InnerHook | None = None,
) -> None:
    """An uncompressed tar that is ``size`` bytes at ``offset`` of ``fd``; file data is
    copied in the kernel from its place in the archive."""
    window = Window(fd, offset, size)
    try:
        tf = tarfile.open(fileobj=cast(IO[bytes], window), mode="r:")  # noqa: SIM115
    except _DECOMPRESS_ERRORS as exc:
        raise CorruptArchive(f"{writer.budget.name}: {exc}") from None
    with tf:
        last = 0
        taken = 0
        while True:
            try:
                member = tf.next()
            except _DECOMPRESS_ERRORS as exc:
                raise CorruptArchive(f"{writer.budget.name}: {exc}") from None
            if member is None:
                _check_tar_end(window, tf.offset, writer.budget.name)
                break
            # Keep memory flat on archives of millions of members.
            _forget(tf)
            if member.isreg() and not member.issparse():
                rel = safety.check_name(member.name)
                data_at = offset + member.offset_data
                if inner is not None and inner(member.name, rel, data_at, member.size, None):
                    # The worker counts these bytes as it reads them.
                    taken += member.size
                else:
                    writer.budget.entry()
                    writer.file_from_fd(
                        rel,
                        member=member.name,
                        src_fd=fd,
                        offset=data_at,
                        size=member.size,
                        mode=safety.filtered_file_mode(member.mode),
                        mtime=member.mtime,
                    )
            else:
                _other_member(tf, member, writer)
            pos = tf.offset
            writer.budget.consumed(pos - last - taken)
            taken = 0
            last = pos
            if on_pos is not None:
                on_pos(pos)
        writer.budget.consumed(size - last)


def _forget(tf: tarfile.TarFile) -> None:
    # TarFile keeps every member it has read; on a million-member archive that is
    # hundreds of MB. The pipeline never looks back, so drop them as it goes.
    cast(Any, tf).members.clear()


def _check_tar_end(window: Window, end: int, name: str) -> None:
    # tarfile stops quietly at an unreadable header past the first one, which would make
    # a truncated archive look complete: require the end-of-archive block.
    window.seek(end)
    block = window.read(formats.BLOCK) or b""
    if len(block) < formats.BLOCK:
        raise CorruptArchive(
            f"{name}: the archive ends without its end-of-archive marker (truncated?)",
            offset=end,
        )
    if block != bytes(formats.BLOCK):
        raise CorruptArchive(f"{name}: invalid tar header at offset {end}", offset=end)


def extract_tar_stream(
    stream: IO[bytes],
    writer: Writer,
    on_member: Callable[[], None] | None = None,
    inner: InnerHook | None = None,
) -> None:
    """A tar read front to back from a (decompressing) stream."""
    try:
        tf = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115
    except _DECOMPRESS_ERRORS as exc:
        raise CorruptArchive(f"{writer.budget.name}: {exc}") from None
    except OSError as exc:
        raise CorruptArchive(f"{writer.budget.name}: {exc}") from None
    with tf:
        while True:
            try:
                member = tf.next()
            except _DECOMPRESS_ERRORS as exc:
                raise CorruptArchive(f"{writer.budget.name}: {exc}") from None
            except OSError as exc:
                raise CorruptArchive(f"{writer.budget.name}: {exc}") from None
            if member is None:
                break
            _forget(tf)
            if member.isreg():
                rel = safety.check_name(member.name)
                src = tf.extractfile(member)
                assert src is not None
                if inner is None or not inner(member.name, rel, -1, member.size, src):
                    writer.budget.entry()
                    writer.file_from_stream(
                        rel,
                        member=member.name,
                        src=src,
                        size=member.size,
                        mode=safety.filtered_file_mode(member.mode),
                        mtime=member.mtime,
                    )
            else:
                _other_member(tf, member, writer)
            if on_member is not None:
                on_member()
    # Read the compressed stream to its end: its checksum (gzip CRC, xz check) and a
    # truncation past the tar's last member are only seen there.
    try:
        while stream.read(COPY_BUFFER):
            pass
    except _DECOMPRESS_ERRORS as exc:
        raise CorruptArchive(f"{writer.budget.name}: {exc}") from None
    except OSError as exc:
        raise CorruptArchive(f"{writer.budget.name}: {exc}") from None


def _other_member(tf: tarfile.TarFile, member: tarfile.TarInfo, writer: Writer) -> None:
    writer.budget.entry()
    if member.isdir():
        rel = safety.check_name(member.name)
        writer.directory(rel, member.name, member.mtime)
    elif member.issym():
        rel = safety.check_name(member.name)
        if not rel:
            raise CorruptArchive(f"{member.name!r}: a symlink in place of the root")
        safety.filter_link(member, writer.root)
        writer.symlink(rel, member.name, member.linkname)
    elif member.islnk():
        rel = safety.check_name(member.name)
        target = safety.check_link_name(member.name, member.linkname)
        safety.filter_link(member, writer.root)
        writer.hardlink(rel, member.name, target)
    elif member.isreg():
        # A sparse file: tarfile's reader fills the holes.
        rel = safety.check_name(member.name)
        src = tf.extractfile(member)
        assert src is not None
        writer.file_from_stream(
            rel,
            member=member.name,
            src=src,
            size=member.size,
            mode=safety.filtered_file_mode(member.mode),
            mtime=member.mtime,
        )
    elif member.ischr() or member.isblk():
        raise safety.special_file(member.name, "device node")
    elif member.isfifo():
        raise safety.special_file(member.name, "FIFO")
    else:
        raise safety.special_file(member.name, f"tar entry type {member.type!r}")


def _zip_time(info: zipfile.ZipInfo) -> float | None:
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def extract_zip(
    source: IO[bytes],
    writer: Writer,
    on_member: Callable[[int], None] | None = None,
    inner: InnerHook | None = None,
) -> None:
    """A zip archive (seekable). Same rules as tar: zip has no filter of its own."""
    name = writer.budget.name
    try:
        zf = zipfile.ZipFile(cast(Any, source))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptArchive(f"{name}: {exc}") from None
    with zf:
        infos = zf.infolist()
        # Refuse from the central directory before writing anything; the sizes written
        # are counted again as they are written (a declared size may lie).
        safety.check_entries(len(infos), writer.budget.allowed_entries, name)
        declared = sum(i.file_size for i in infos)
        safety.check_bytes(declared, writer.budget.allowed, writer.budget.limits, name)
        safety.check_room(declared, writer.budget.limits, name)
        for index, info in enumerate(infos):
            writer.budget.entry()
            rel = safety.check_name(info.filename)
            if info.flag_bits & 0x1:
                raise EncryptedArchive(
                    f"{name}: {info.filename!r} is password-protected", member=info.filename
                )
            unix = info.external_attr >> 16 if info.create_system == 3 else 0
            kind = stat.S_IFMT(unix)
            mtime = _zip_time(info)
            if info.is_dir() or kind == stat.S_IFDIR:
                writer.directory(rel, info.filename, mtime)
            elif kind == stat.S_IFLNK:
                if info.file_size > 4096:
                    raise CorruptArchive(
                        f"{info.filename!r}: a symlink target of {info.file_size} bytes"
                    )
                try:
                    target = zf.read(info).decode("utf-8", errors="surrogateescape")
                except _DECOMPRESS_ERRORS as exc:
                    raise CorruptArchive(f"{info.filename!r}: {exc}") from None
                link = tarfile.TarInfo(info.filename)
                link.type = tarfile.SYMTYPE
                link.linkname = target
                safety.filter_link(link, writer.root)
                writer.symlink(rel, info.filename, target)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                raise safety.special_file(info.filename, "device node")
            elif kind == stat.S_IFIFO:
                raise safety.special_file(info.filename, "FIFO")
            elif kind == stat.S_IFSOCK:
                raise safety.special_file(info.filename, "socket")
            else:
                mode = safety.filtered_file_mode(unix & 0o7777 if unix else 0o644)
                try:
                    src = zf.open(info)
                except (NotImplementedError, RuntimeError) as exc:
                    raise CorruptArchive(f"{info.filename!r}: {exc}") from None
                except _DECOMPRESS_ERRORS as exc:
                    raise CorruptArchive(f"{info.filename!r}: {exc}") from None
                with src:
                    taken = inner is not None and inner(info.filename, rel, -1, info.file_size, src)
                    if not taken:
                        writer.file_from_stream(
                            rel,
                            member=info.filename,
                            src=src,
                            size=info.file_size,
                            mode=mode,
                            mtime=mtime,
                        )
                    # zipfile stops at the declared size, so a member that holds more
                    # writes no more than it declares; compressed data left unread says
                    # the declaration lied (best effort: zipfile keeps this private).
                    if getattr(src, "_compress_left", 0) > 0:
                        raise CorruptArchive(
                            f"{info.filename!r} holds more data than the {info.file_size} "
                            "bytes it declares",
                            member=info.filename,
                            declared=info.file_size,
                        )
            if on_member is not None:
                on_member(index + 1)


def extract_single(
    raw: IO[bytes],
    compression: str,
    out_name: str,
    writer: Writer,
) -> None:
    """One compressed file (``gz``, ``bz2``, ``xz``, ``zst``) decompressed to ``out_name``."""
    writer.budget.entry()
    stream = formats.open_decompressed(raw, compression)
    try:
        writer.file_from_stream(
            out_name, member=out_name, src=stream, size=None, mode=0o644, mtime=None
        )
    finally:
        stream.close()


# --- nested archives in worker processes ----------------------------------------------------


@dataclass(frozen=True)
class InnerJob:
    """One inner archive for a worker: ``size`` bytes at ``offset`` of ``source``,
    extracted into ``dest`` (absolute, inside the staging folder)."""

    source: str
    offset: int
    size: int
    member: str
    dest: str
    limits: Limits
    archive_size: int
    delete_source: bool = False


@dataclass(frozen=True)
class InnerResult:
    entries: int
    files: int
    bytes: int
    symlinks: tuple[str, ...]


_worker_shared: Shared | None = None
_worker_lock_fd: int | None = None


def worker_init(array: Any, lock: Any, writers_lock: str, parent: int) -> None:
    """Process-pool initializer: die with the parent, hold the staging folder's writers
    lock (so a later cleanup waits for this process), remember the shared counters."""
    global _worker_shared, _worker_lock_fd  # noqa: PLW0603 - per-process state by design
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)
    _worker_lock_fd = os.open(writers_lock, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(_worker_lock_fd, fcntl.LOCK_SH)
    _worker_shared = Shared(array, lock)


def run_inner(job: InnerJob) -> InnerResult:
    """Extract one inner archive (in a worker process, or inline)."""
    shared = _worker_shared or local_shared()
    return extract_inner(job, shared, None)


def extract_inner(job: InnerJob, shared: Shared, cancel: threading.Event | None) -> InnerResult:
    """Extract an inner archive into ``job.dest`` under the shared budget."""
    budget = Budget(job.limits, job.archive_size, job.member, shared, cancel)
    os.makedirs(job.dest, exist_ok=True)
    writer = Writer(job.dest, budget)
    fd = os.open(job.source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        window = Window(fd, job.offset, job.size)
        try:
            fmt = formats.sniff_stream(cast(IO[bytes], window))
        except UnknownFormat:
            raise CorruptArchive(
                f"{job.member!r} is named like an archive but is not one", member=job.member
            ) from None
        if fmt == "tar":
            extract_tar_seekable(fd, job.offset, job.size, writer)
        elif fmt == "zip":
            extract_zip(cast(IO[bytes], io.BufferedReader(window, 1 << 16)), writer)
            budget.consumed(job.size)
        elif fmt.startswith("tar."):
            counting = Counting(cast(IO[bytes], window))
            stream = formats.open_decompressed(
                cast(IO[bytes], io.BufferedReader(counting, 1 << 16)), fmt[4:]
            )
            extract_tar_stream(stream, writer)
            budget.consumed(job.size)
        else:
            raise CorruptArchive(
                f"{job.member!r} is a single {fmt} file, not an archive of files",
                member=job.member,
            )
        writer.finish()
        budget.flush()
    finally:
        os.close(fd)
        if job.delete_source:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(job.source)
    return InnerResult(budget.entries, budget.files, budget.bytes, tuple(writer.symlink_paths))

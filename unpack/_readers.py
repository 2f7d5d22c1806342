"""The archive readers: tar (seekable or streamed), zip and single compressed files, each
feeding a :class:`~acquired.unpack._engine.Writer`; and the inner-archive jobs that worker
processes run for nested extraction."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import os
import signal
import stat
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast

from . import formats, safety
from ._engine import (
    _DECOMPRESS_ERRORS,
    COPY_BUFFER,
    Budget,
    Counting,
    Shared,
    Window,
    Writer,
    local_shared,
)
from .errors import CorruptArchive, EncryptedArchive, UnknownFormat
from .safety import Limits

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
    """What one inner archive's extraction produced: counts and the links it placed."""

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
    try:
        return _extract_inner_with(job, writer, budget)
    finally:
        writer.close()


def _extract_inner_with(job: InnerJob, writer: Writer, budget: Budget) -> InnerResult:
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

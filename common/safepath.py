"""Open, create, rename and remove paths *beneath* a root folder without ever following a
symbolic link.

Every function takes a ``root`` (a folder path, trusted as it is, or an open directory
descriptor) and a path relative to it. Each component of that relative path is resolved
relative to the directory descriptor of its parent with ``O_NOFOLLOW``: a component that
is a symbolic link, is ``..``, or (for a parent) is not a folder is refused with
:class:`PathEscapes` or :class:`NotAFolder`. So a link planted anywhere below the root —
by an archive, a second process or a user — and a folder swapped for a link between two
steps can never send a write outside the root.

Where the kernel has it (Linux 5.6+), one ``openat2`` call with ``RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS`` does the resolution; otherwise (``ENOSYS``, or a seccomp filter
that refuses the call) the same rules are applied component by component with
``openat(..., O_NOFOLLOW | O_DIRECTORY)``. Both give the same answers (the tests check
it).

The module is part of :mod:`acquired.common`, a leaf: it imports nothing of ours but the
error base.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator
from typing import ClassVar

from .errors import AcquiredError

__all__ = [
    "NotAFolder",
    "PathEscapes",
    "UnsafePath",
    "have_openat2",
    "mkdirs_beneath",
    "open_beneath",
    "open_dir_beneath",
    "parts_of",
    "place_copy",
    "relative_to",
    "rename_beneath",
    "unlink_beneath",
    "write_beneath",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2(2): struct open_how and the RESOLVE_* flags (linux/openat2.h).
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
# The syscall number is the same on every architecture that uses the generic table and
# on x86-64 (added in 5.6); others fall back to the walk.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


class UnsafePath(AcquiredError):
    """A path below a root cannot be used without leaving the root."""

    code: ClassVar[str] = "path.unsafe"
    hint: ClassVar[str] = (
        "Something in the destination is not what the daemon created there; remove it and retry."
    )


class PathEscapes(UnsafePath):
    """A component of the path is a symbolic link (or ``..``, or absolute): following it
    could lead outside the destination."""

    code: ClassVar[str] = "path.escapes_destination"
    hint: ClassVar[str] = (
        "A symbolic link inside the destination stands where the daemon writes. The daemon "
        "never writes through links: remove the link (or replace it with a real folder), "
        "then retry the job."
    )


class NotAFolder(UnsafePath):
    """A component that must be a folder is a file (or a device, a FIFO...)."""

    code: ClassVar[str] = "path.not_a_folder"
    hint: ClassVar[str] = (
        "A file stands where the daemon needs a folder inside the destination; move it "
        "away, then retry the job."
    )


def parts_of(rel: str | os.PathLike[str]) -> list[str]:
    """The components of a relative path (``.`` and empty ones dropped); refuses an
    absolute path and ``..`` with :class:`PathEscapes`."""
    text = os.fspath(rel)
    if "\x00" in text:
        raise PathEscapes(f"{text!r}: NUL in a path", path=text)
    if text.startswith("/"):
        raise PathEscapes(f"{text}: an absolute path where a relative one is needed", path=text)
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathEscapes(f"{text}: '..' would leave the destination", path=text)
    return parts


def relative_to(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """``path`` (absolute, or relative to the current folder) relative to ``root``,
    compared lexically; :class:`PathEscapes` when it is not below ``root``."""
    r = os.path.abspath(root)
    p = os.path.abspath(path)
    if p == r:
        return ""
    if not p.startswith(r.rstrip("/") + "/"):
        raise PathEscapes(f"{p} is not inside {r}", path=p, root=r)
    return p[len(r.rstrip("/")) + 1 :]


# --- openat2 -------------------------------------------------------------------------------

_probe_lock = threading.Lock()
_openat2_state: bool | None = None
_libc: ctypes.CDLL | None = None


def _syscall_openat2(dir_fd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    assert _libc is not None
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    nr = _SYS_OPENAT2[platform.machine()]
    while True:
        fd = _libc.syscall(
            ctypes.c_long(nr),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        # EAGAIN: a rename elsewhere raced the RESOLVE_BENEATH check; the kernel asks
        # for a retry.
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)


def have_openat2() -> bool:
    """Whether ``openat2`` works here (probed once; ``ENOSYS`` or a seccomp refusal mean
    the component walk is used)."""
    global _openat2_state, _libc  # noqa: PLW0603 - one probe per process
    if _openat2_state is not None:
        return _openat2_state
    with _probe_lock:
        if _openat2_state is None:
            if os.environ.get("ACQUIRED_NO_OPENAT2") or platform.machine() not in _SYS_OPENAT2:
                _openat2_state = False
                return False
            root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _libc = ctypes.CDLL(None, use_errno=True)
                fd = _syscall_openat2(root, ".", os.O_RDONLY | os.O_DIRECTORY, 0, _RESOLVE_BENEATH)
            except (OSError, AttributeError):
                _openat2_state = False
            else:
                os.close(fd)
                _openat2_state = True
            finally:
                os.close(root)
    return bool(_openat2_state)


# --- resolution ------------------------------------------------------------------------------


@contextlib.contextmanager
def _root_fd(root: str | os.PathLike[str] | int) -> Iterator[int]:
    if isinstance(root, int):
        yield root
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _refusal(root_fd: int, parts: list[str], exc: OSError, rel: str) -> Exception:
    """Turn ``ELOOP``/``ENOTDIR``/``EXDEV`` into our errors, naming the component (found by
    a second, purely diagnostic walk with ``lstat``)."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
        return exc
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            shown = "/".join(parts[: i + 1])
            try:
                st = os.lstat(part, dir_fd=fd)
            except OSError:
                break
            if stat.S_ISLNK(st.st_mode):
                return PathEscapes(
                    f"{rel}: {shown} is a symbolic link; the daemon does not follow links "
                    "inside the destination",
                    path=rel,
                    component=shown,
                )
            if i < len(parts) - 1:
                if not stat.S_ISDIR(st.st_mode):
                    return NotAFolder(f"{rel}: {shown} is not a folder", path=rel, component=shown)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
    except OSError:
        pass
    finally:
        os.close(fd)
    if exc.errno == errno.ENOTDIR:
        return NotAFolder(f"{rel}: a component is not a folder", path=rel)
    return PathEscapes(f"{rel}: the path leaves the destination (changed meanwhile?)", path=rel)


def _walk(root_fd: int, parts: list[str], *, create: bool, mode: int) -> int:
    """A descriptor of the folder ``parts`` below ``root_fd`` (created when asked)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_in(root_fd: int, parts: list[str], flags: int, mode: int) -> int:
    if have_openat2() and parts:
        return _syscall_openat2(
            root_fd,
            "/".join(parts),
            flags | os.O_NOFOLLOW,
            mode,
            _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS,
        )
    parent = _walk(root_fd, parts[:-1], create=False, mode=0)
    try:
        if not parts:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=parent)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    finally:
        os.close(parent)


def open_beneath(
    root: str | os.PathLike[str] | int,
    rel: str | os.PathLike[str],
    flags: int = os.O_RDONLY,
    mode: int = 0o644,
) -> int:
    """``os.open(root/rel, flags, mode)`` without following any link below ``root``.

    The parent folders must exist (see :func:`mkdirs_beneath`). Raises
    :class:`PathEscapes` when a component (the last one included) is a symbolic link,
    :class:`NotAFolder` when a parent is not a folder, ``FileNotFoundError`` and the
    other ``OSError`` as ``os.open`` would.
    """
    parts = parts_of(rel)
    with _root_fd(root) as rfd:
        try:
            return _open_in(rfd, parts, flags, mode)
        except OSError as exc:
            raise _refusal(rfd, parts, exc, os.fspath(rel)) from None


def open_dir_beneath(
    root: str | os.PathLike[str] | int,
    rel: str | os.PathLike[str] = "",
    *,
    create: bool = False,
    mode: int = 0o755,
) -> int:
    """A descriptor of the folder ``root/rel`` (``O_DIRECTORY``), created with its parents
    when ``create``; the same refusals as :func:`open_beneath`."""
    parts = parts_of(rel)
    with _root_fd(root) as rfd:
        try:
            if create:
                return _walk(rfd, parts, create=True, mode=mode)
            return _open_in(rfd, parts, os.O_RDONLY | os.O_DIRECTORY, 0)
        except OSError as exc:
            raise _refusal(rfd, parts, exc, os.fspath(rel)) from None


def mkdirs_beneath(
    root: str | os.PathLike[str] | int, rel: str | os.PathLike[str], mode: int = 0o755
) -> None:
    """``mkdir -p root/rel`` without following links; refuses like :func:`open_beneath`."""
    os.close(open_dir_beneath(root, rel, create=True, mode=mode))


@contextlib.contextmanager
def _parent(
    root: str | os.PathLike[str] | int, rel: str | os.PathLike[str], create: bool
) -> Iterator[tuple[int, str]]:
    parts = parts_of(rel)
    if not parts:
        raise PathEscapes(f"{os.fspath(rel)!r}: names the root itself", path=os.fspath(rel))
    fd = open_dir_beneath(root, "/".join(parts[:-1]), create=create)
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def rename_beneath(
    root: str | os.PathLike[str] | int,
    src_rel: str | os.PathLike[str],
    dst_rel: str | os.PathLike[str],
    *,
    dst_root: str | os.PathLike[str] | int | None = None,
    sync: bool = False,
) -> None:
    """``os.replace(root/src_rel, dst_root/dst_rel)`` (``dst_root`` defaults to ``root``).

    The parents on both sides are resolved without following links (the destination's
    parents are created); the last components are renamed as entries, so a link standing
    at ``dst_rel`` is replaced, never followed. ``sync``: fsync the destination's folder
    afterwards (a durable rename).
    """
    with (
        _parent(root, src_rel, False) as (sfd, sname),
        _parent(root if dst_root is None else dst_root, dst_rel, True) as (dfd, dname),
    ):
        os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        if sync:
            os.fsync(dfd)


def unlink_beneath(
    root: str | os.PathLike[str] | int,
    rel: str | os.PathLike[str],
    *,
    missing_ok: bool = True,
) -> None:
    """Remove the entry ``root/rel`` (a link is removed itself, never its target)."""
    try:
        with _parent(root, rel, False) as (fd, name):
            os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        if not missing_ok:
            raise


def _short(name: str) -> str:
    """At most 200 bytes of ``name`` (temporary names must stay within NAME_MAX)."""
    return name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "ignore")


def write_beneath(
    root: str | os.PathLike[str] | int,
    rel: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o644,
    *,
    sync_dir: bool = False,
) -> None:
    """Replace ``root/rel`` with ``data`` atomically: a new file beside it, then a rename
    over it — whatever stood there (a planted link included) is replaced, not followed.
    ``sync_dir``: also flush the folder, so the rename survives a power loss."""
    with _parent(root, rel, True) as (fd, name):
        tmp = f".{_short(name)}.{secrets.token_hex(4)}.tmp"
        out = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=fd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            os.fsync(out)
        except BaseException:
            os.close(out)
            os.unlink(tmp, dir_fd=fd)
            raise
        os.close(out)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        if sync_dir:
            os.fsync(fd)


def place_copy(
    source: str | os.PathLike[str],
    root: str | os.PathLike[str] | int,
    rel: str | os.PathLike[str],
    *,
    remove_part: bool = True,
) -> None:
    """Put the file ``source`` (outside the root, e.g. a completed copy in a watched
    folder) at ``root/rel`` atomically: a hard link where the filesystem allows it (no
    bytes copied), else a copy flushed to disk first; then a rename into place. With
    ``remove_part`` a ``rel.part`` left by an earlier transfer is removed."""
    with _parent(root, rel, True) as (fd, name):
        tmp = f".{_short(name)}.{secrets.token_hex(4)}.watched"
        try:
            os.link(source, tmp, dst_dir_fd=fd)
        except OSError:
            out = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=fd,
            )
            try:
                with open(source, "rb") as src, open(out, "wb", closefd=False) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(out)
            except BaseException:
                os.close(out)
                os.unlink(tmp, dir_fd=fd)
                raise
            os.close(out)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        if remove_part and len(os.fsencode(name)) <= 250:  # else no ".part" can exist
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name + ".part", dir_fd=fd)

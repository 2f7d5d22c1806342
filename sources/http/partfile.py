"""The ``.part`` file: positional writes, flushes, and the rename into place."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from acquired.common import safepath

# The hasher and the algorithm names are the shared ones; imported here for the engine.
from acquired.common.digests import Hasher
from acquired.common.digests import normalize_algorithm as normalise_algorithm
from acquired.sources.errors import DiskFull

__all__ = ["Hasher", "PartFile", "normalise_algorithm"]


class PartFile:
    """An open ``.part`` file. Every write is positional, so threads share one descriptor.

    ENOSPC (and EDQUOT) surface as ``DiskFull``; what was written before stays on disk.
    """

    def __init__(self, path: Path, root: Path | None = None) -> None:
        """Open (create) ``path`` for positional writes.

        ``root``: the folder nothing may leave (the data root). The folders from there to
        the ``.part`` are created and opened without following any link, and the ``.part``
        itself is opened with ``O_NOFOLLOW``: a link planted at either place is refused
        with :class:`~acquired.common.safepath.PathEscapes` and its target is untouched.
        Without ``root`` the same holds from the ``.part``'s own folder down.
        """
        self.path = path
        if root is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._root: Path = path.parent
            rel = path.name
        else:
            self._root = root
            rel = safepath.relative_to(root, path)
        self._rel_dir, _, self._name = rel.rpartition("/")
        self._dir_fd = safepath.open_dir_beneath(self._root, self._rel_dir, create=True)
        try:
            self.fd = safepath.open_beneath(
                self._dir_fd, self._name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except BaseException:
            os.close(self._dir_fd)
            raise

    def size(self) -> int:
        """The ``.part``'s current size in bytes."""
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
        """Close the file (and the folder it lives in)."""
        self._close_fd()
        self._close_dir()

    def remove(self) -> None:
        """Close and delete the ``.part`` (the entry itself, never a link's target)."""
        own = self._identity()
        self._close_fd()
        self._unlink_if_ours(own)
        self._close_dir()

    def rename_to(self, dest: Path) -> None:
        """Atomically move the (synced) data to ``dest`` and make the rename durable.

        The folder is opened again beneath the root: if it was swapped for a link (or
        moved away) since the ``.part`` was opened, the rename is refused rather than
        following it, and the data stays where it was written.
        """
        self.sync()
        self._close_fd()
        try:
            parent = safepath.open_dir_beneath(self._root, self._rel_dir)
            try:
                if not _same_file(parent, self._dir_fd):
                    raise safepath.PathEscapes(
                        f"{self.path.parent} was replaced while {self.path.name} was being "
                        "written; the file was not moved into place",
                        path=str(self.path.parent),
                    )
                if dest.parent == self.path.parent:
                    safepath.rename_beneath(parent, self._name, dest.name, sync=True)
                else:
                    part_rel = "/".join(p for p in (self._rel_dir, self._name) if p)
                    dest_rel = safepath.relative_to(self._root, dest)
                    safepath.rename_beneath(self._root, part_rel, dest_rel, sync=True)
            finally:
                os.close(parent)
        finally:
            self._close_dir()

    def _identity(self) -> tuple[int, int] | None:
        if self.fd < 0:
            return None
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _close_dir(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _unlink_if_ours(self, own: tuple[int, int] | None) -> None:
        """Remove the ``.part`` entry — only the file this object wrote when ``own`` is
        known, and never through a link."""
        try:
            dir_fd = (
                os.dup(self._dir_fd)
                if self._dir_fd >= 0
                else safepath.open_dir_beneath(self._root, self._rel_dir)
            )
        except (FileNotFoundError, safepath.UnsafePath):
            return
        try:
            st = os.stat(self._name, dir_fd=dir_fd, follow_symlinks=False)
            if own is None or (st.st_dev, st.st_ino) == own:
                os.unlink(self._name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
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


def drop_empty_part(root: Path, dest: Path) -> None:
    """Remove ``dest``'s ``.part`` if it holds no byte (a file that failed before any data
    arrived has nothing to resume); never through a link, never a non-empty one."""
    try:
        rel = safepath.relative_to(root, dest.with_name(dest.name + ".part"))
        fd = safepath.open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, safepath.UnsafePath):
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size:
            return
        parent_rel, _, name = rel.rpartition("/")
        parent = safepath.open_dir_beneath(root, parent_rel)
        try:
            now = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(name, dir_fd=parent)
        finally:
            os.close(parent)
    except (OSError, safepath.UnsafePath):
        pass
    finally:
        os.close(fd)


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)

"""Many verified small files onto disk, durably, with one folder walk and one folder sync
per folder instead of per file.

``Folders`` holds the folders files are being written into, each opened once beneath
its root without following links (``safepath.open_dir_beneath``). Each file's ``.part``
is created in its folder's descriptor (``safepath.open_beneath``, so a link planted at
the ``.part`` is refused), written and flushed (``fdatasync``) on a worker thread, so the
filesystem commits many files together. ``place`` then checks that each folder is still
the one beneath the root (a folder swapped for a link meanwhile refuses its files),
renames each ``.part`` over its final name (entries only: a link at the final name is
replaced, never followed) and syncs each folder once. After ``place`` returns, a file it
reports placed survives a crash.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from acquired.common import safepath
from acquired.sources.errors import DiskFull


@dataclass
class Folder:
    """A folder files are written into: where it is beneath its root, its descriptor."""

    root: Path
    rel: str
    fd: int


class Folders:
    """The folders files are being written into, each opened once (used by one thread;
    ``write`` runs on workers); closed when nothing is on its way."""

    def __init__(self) -> None:
        self._open: dict[tuple[Path, str], Folder] = {}

    def folder(self, root: Path | None, dest: Path) -> tuple[Folder, str]:
        """The folder ``dest`` goes into (opened, and created, the first time) and its
        name there. ``root``: the folder nothing may leave (None: ``dest``'s own)."""
        if root is None:
            root, rel = dest.parent, dest.name
        else:
            rel = safepath.relative_to(root, dest)
        rel_dir, _, name = rel.rpartition("/")
        key = (root, rel_dir)
        found = self._open.get(key)
        if found is None:
            fd = safepath.open_dir_beneath(root, rel_dir, create=True)
            found = self._open[key] = Folder(root, rel_dir, fd)
        return found, name

    @staticmethod
    def write(folder: Folder, name: str, chunks: list[bytes]) -> None:
        """Write ``name``'s ``.part`` in ``folder`` and flush it to disk (a worker's
        part; ENOSPC is ``DiskFull``). A failed write leaves no ``.part`` behind."""
        part = name + ".part"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            # Nearly always there is no ``.part`` yet: created afresh, it needs no
            # truncating (one journal handle fewer per file).
            fd = safepath.open_beneath(folder.fd, part, flags | os.O_EXCL, 0o644)
        except FileExistsError:
            # One left by an earlier try (a small file starts again from zero: it has no
            # checkpoint), or a link planted there, which is refused.
            fd = safepath.open_beneath(folder.fd, part, flags, 0o644)
            try:
                os.ftruncate(fd, 0)
            except BaseException:
                os.close(fd)
                raise
        try:
            offset = 0
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
            os.fdatasync(fd)
        except OSError as exc:
            _unlink_own(folder.fd, part, fd)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    f"no space left on the device while writing {part}",
                    path=str(folder.root / folder.rel / part),
                    errno=exc.errno,
                ) from exc
            raise
        finally:
            os.close(fd)

    def place(self, files: list[tuple[Folder, str]]) -> dict[tuple[int, str], BaseException]:
        """Rename each written ``.part`` into place and sync each folder once; returns the
        files that could not be placed, by (folder descriptor, name), with why."""
        failed: dict[tuple[int, str], BaseException] = {}
        broken: dict[int, BaseException] = {}
        involved = {id(folder): folder for folder, _ in files}
        for folder in involved.values():
            try:
                again = safepath.open_dir_beneath(folder.root, folder.rel)
            except (OSError, safepath.UnsafePath) as exc:
                broken[folder.fd] = exc
                continue
            try:
                if not _same(again, folder.fd):
                    broken[folder.fd] = safepath.PathEscapes(
                        f"{folder.root / folder.rel} was replaced while files were being "
                        "written into it; they were not moved into place",
                        path=str(folder.root / folder.rel),
                    )
            finally:
                os.close(again)
        used: set[int] = set()
        for folder, name in files:
            why = broken.get(folder.fd)
            if why is not None:
                failed[(folder.fd, name)] = why
                continue
            try:
                # Plain names in one folder's descriptor: the entries are renamed, no link
                # is followed, and a link standing at ``name`` is replaced.
                os.replace(name + ".part", name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
            except OSError as exc:
                failed[(folder.fd, name)] = exc
                continue
            used.add(folder.fd)
        for folder in involved.values():
            if folder.fd in used:
                try:
                    os.fsync(folder.fd)
                except OSError as exc:
                    for f, name in files:
                        if f is folder:
                            failed.setdefault((folder.fd, name), exc)
        return failed

    def close(self) -> None:
        """Close every folder (the next flush opens its own)."""
        for folder in self._open.values():
            os.close(folder.fd)
        self._open.clear()


def _same(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _unlink_own(dir_fd: int, name: str, fd: int) -> None:
    """Remove ``name`` if it is still the file open as ``fd``."""
    try:
        st, mine = os.stat(name, dir_fd=dir_fd, follow_symlinks=False), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass

"""Folder watchers: hand complete files to the state thread.

The inbox (manifests) and the watched folders of completed downloads (``[unpack]
watch_dirs``) both use them. A file counts as complete when it was closed after writing
(inotify IN_CLOSE_WRITE) or moved in (IN_MOVED_TO); a file still being written is never
read half-way. Files already there at start-up are picked up too. Hidden files, editor
temporaries and the partial files of download tools are ignored, and so is the inbox's
``rejected/`` folder.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from acquired.common import safepath

from .errors import DaemonError

LOG = logging.getLogger("acquired.inbox")

# A writer may close and reopen a file (append in several steps); a manifest is handed on
# only once it has been quiet this long after its last close.
SETTLE = 0.3


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return True


def is_candidate(path: Path) -> bool:
    """Whether a file in the inbox is a manifest to read (not hidden, not a temporary)."""
    name = path.name
    partial = (".part", ".!qB", ".!ut", ".crdownload", ".aria2", ".tmp")
    if name.startswith((".", "#")) or name.endswith(("~", ".swp", ".swx", *partial)):
        return False
    return not name.endswith(".error.txt")


class UnreadableManifest(DaemonError):
    """A file in the inbox that cannot be a manifest (not a regular file, too large)."""

    code: ClassVar[str] = "inbox.not_a_manifest"
    hint: ClassVar[str] = (
        "Only regular files are read from the inbox: copy the manifest itself in (not a "
        "link, a pipe or a device)."
    )


class ManifestTooLarge(UnreadableManifest):
    """A file in the inbox larger than ``[inbox] max_manifest_size``."""

    code: ClassVar[str] = "inbox.manifest_too_large"
    hint: ClassVar[str] = (
        "Manifests are small; if this one really is this large, raise [inbox] "
        "max_manifest_size in the configuration and send the daemon SIGHUP."
    )


def read_manifest(path: Path, limit: int) -> bytes:
    """The bytes of a manifest dropped into the inbox, read without ever blocking or
    growing without bound: opened with ``O_NOFOLLOW|O_NONBLOCK`` (a link, a FIFO with no
    writer, a device are refused at once) and read up to ``limit`` bytes.

    Raises :class:`UnreadableManifest` (a link, a FIFO, a device, a folder),
    :class:`ManifestTooLarge`, ``FileNotFoundError`` (taken away meanwhile) or another
    ``OSError``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableManifest(
                f"{path.name}: is a symbolic link; the inbox reads only regular files",
                path=str(path),
                kind="symlink",
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            raise UnreadableManifest(
                f"{path.name}: is a {kind}, not a regular file; the inbox reads only regular files",
                path=str(path),
                kind=kind,
            )
        if st.st_size > limit:
            raise _too_large(path, limit)
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _too_large(path, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_large(path: Path, limit: int) -> ManifestTooLarge:
    return ManifestTooLarge(
        f"{path.name}: larger than {limit} bytes ([inbox] max_manifest_size); not read",
        path=str(path),
        limit=limit,
    )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def reject_file(inbox: Path, name: str, reason: str) -> None:
    """Move ``inbox/name`` to ``inbox/rejected/name`` and write ``reason`` beside it as
    ``name.error.txt`` — never through a link planted in ``rejected/`` (an entry standing
    there is replaced, its target untouched). Raises ``OSError`` or
    :class:`~acquired.common.safepath.UnsafePath` (``rejected`` itself is a link)."""
    safepath.mkdirs_beneath(inbox, "rejected")
    safepath.rename_beneath(inbox, name, f"rejected/{name}")
    safepath.write_beneath(inbox, f"rejected/{name}.error.txt", reason.encode())


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def on_closed(self, event: FileClosedEvent) -> None:
        self.watcher.settle(Path(str(event.src_path)))

    def on_moved(self, event: DirMovedEvent | FileMovedEvent) -> None:
        if event.is_directory:
            self.watcher.scan(Path(str(event.dest_path)))
        else:
            self.watcher.settle(Path(str(event.dest_path)))

    def on_created(self, event: DirCreatedEvent | FileCreatedEvent) -> None:
        # A folder's watch starts only after the folder appears: files written into it
        # before that raise no event, so look inside.
        if event.is_directory:
            self.watcher.scan(Path(str(event.src_path)))

    def on_any_event(self, event: FileSystemEvent) -> None:
        pass


class FolderWatcher:
    """Watches a folder and calls ``deliver(path)`` once per complete file.

    ``recursive``: also files in sub-folders (a download folder); the inbox is flat.
    """

    def __init__(
        self, folder: Path, deliver: Callable[[Path], None], *, recursive: bool = False
    ) -> None:
        self.folder = folder
        self.deliver = deliver
        self.recursive = recursive
        self._observer = InotifyObserver(generate_full_events=True)
        self._timers: dict[Path, threading.Timer] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Watch the folder, then deliver the manifests already in it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._observer.schedule(_Handler(self), str(self.folder), recursive=self.recursive)
        self._observer.start()
        # Watch first, then list: a file arriving in between is seen twice at worst, and
        # the state thread treats a repeated file as already known.
        self.scan(self.folder)

    def scan(self, folder: Path) -> None:
        """Settle every file already in ``folder`` (at start-up, or a new sub-folder)."""
        found = folder.rglob("*") if self.recursive else folder.iterdir()
        for path in sorted(found):
            # In the inbox anything that is not a folder is handed on: links, FIFOs and
            # devices are rejected with a reason rather than left there unexplained.
            if path.is_file() or (not self.recursive and not _is_dir(path)):
                self.settle(path)

    def _watches(self, path: Path) -> bool:
        if self.recursive:
            return self.folder in path.parents
        return path.parent == self.folder

    def settle(self, path: Path) -> None:
        """Deliver ``path`` once its size has stayed the same for ``SETTLE`` seconds."""
        if not self._watches(path) or not is_candidate(path):
            return
        try:
            size = path.lstat().st_size
        except OSError:
            return
        with self._lock:
            old = self._timers.pop(path, None)
            if old is not None:
                old.cancel()
            timer = threading.Timer(SETTLE, self._fire, args=(path, size))
            timer.daemon = True
            self._timers[path] = timer
            timer.start()

    def _fire(self, path: Path, size: int) -> None:
        with self._lock:
            self._timers.pop(path, None)
        try:
            now = path.lstat().st_size
        except OSError:
            return
        if now != size:
            # Found by a scan while still being written: wait until it is quiet (its
            # close will also settle it again).
            self.settle(path)
            return
        LOG.debug("%s: %s is complete", self.folder, path.name)
        self.deliver(path)

    def stop(self) -> None:
        """Stop watching and drop the files still settling."""
        self._observer.stop()
        self._observer.join(5)
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

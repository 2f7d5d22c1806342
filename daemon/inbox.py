"""Folder watchers: hand complete files to the state thread.

The inbox (manifests) and the watched folders of completed downloads (``[unpack]
watch_dirs``) both use them. A file counts as complete when it was closed after writing
(inotify IN_CLOSE_WRITE) or moved in (IN_MOVED_TO); a file still being written is never
read half-way. Files already there at start-up are picked up too. Hidden files, editor
temporaries and the partial files of download tools are ignored, and so is the inbox's
``rejected/`` folder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

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

LOG = logging.getLogger("acquired.inbox")

# A writer may close and reopen a file (append in several steps); a manifest is handed on
# only once it has been quiet this long after its last close.
SETTLE = 0.3


def is_candidate(path: Path) -> bool:
    """Whether a file in the inbox is a manifest to read (not hidden, not a temporary)."""
    name = path.name
    partial = (".part", ".!qB", ".!ut", ".crdownload", ".aria2", ".tmp")
    if name.startswith((".", "#")) or name.endswith(("~", ".swp", ".swx", *partial)):
        return False
    return not name.endswith(".error.txt")


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
            if path.is_file():
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
            size = path.stat().st_size
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
            now = path.stat().st_size
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

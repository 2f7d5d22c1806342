"""The inbox watcher: hands complete manifests to the state thread.

A manifest counts as complete when it was closed after writing (inotify IN_CLOSE_WRITE)
or moved in (IN_MOVED_TO); a file still being copied is never read half-way. Files that
are already there at start-up are picked up too. Hidden files and editor temporaries are
ignored, and so is the ``rejected/`` folder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirMovedEvent,
    FileClosedEvent,
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
    if name.startswith((".", "#")) or name.endswith(("~", ".swp", ".swx", ".tmp", ".part")):
        return False
    return not name.endswith(".error.txt")


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: InboxWatcher) -> None:
        self.watcher = watcher

    def on_closed(self, event: FileClosedEvent) -> None:
        self.watcher.settle(Path(str(event.src_path)))

    def on_moved(self, event: DirMovedEvent | FileMovedEvent) -> None:
        dest = Path(str(event.dest_path))
        if not event.is_directory and dest.parent == self.watcher.inbox:
            self.watcher.settle(dest)

    def on_any_event(self, event: FileSystemEvent) -> None:
        pass


class InboxWatcher:
    """Watches one folder (not recursively) and calls ``deliver(path)`` per manifest."""

    def __init__(self, inbox: Path, deliver: Callable[[Path], None]) -> None:
        self.inbox = inbox
        self.deliver = deliver
        self._observer = InotifyObserver(generate_full_events=True)
        self._timers: dict[Path, threading.Timer] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        (self.inbox / "rejected").mkdir(exist_ok=True)
        self._observer.schedule(_Handler(self), str(self.inbox), recursive=False)
        self._observer.start()
        # Watch first, then list: a file arriving in between is seen twice at worst,
        # and the state thread treats a repeated manifest as already known.
        for path in sorted(self.inbox.iterdir()):
            if path.is_file():
                self.settle(path)

    def settle(self, path: Path) -> None:
        if path.parent != self.inbox or not is_candidate(path):
            return
        with self._lock:
            old = self._timers.pop(path, None)
            if old is not None:
                old.cancel()
            timer = threading.Timer(SETTLE, self._fire, args=(path,))
            timer.daemon = True
            self._timers[path] = timer
            timer.start()

    def _fire(self, path: Path) -> None:
        with self._lock:
            self._timers.pop(path, None)
        if path.is_file():
            LOG.debug("inbox: %s is complete", path.name)
            self.deliver(path)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(5)
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

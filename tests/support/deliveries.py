"""What a folder watcher delivered, read through positive signals instead of quiet periods.

``take(n)`` waits for the next n deliveries. ``before_markers()`` answers "was anything
else delivered?" without sleeping: it writes a marker file and waits until the watcher
delivers it, twice. Every file settles for the same time after its last event, and the
second marker is written only once the first was delivered, so any file whose events
came before the first marker has been delivered by the time the second one is.
"""

from __future__ import annotations

import itertools
import queue
from pathlib import Path

MARKER_PREFIX = "zz-marker-"


class Deliveries:
    """The ``deliver`` callback of a watcher on ``folder``, recording paths in order."""

    def __init__(self, folder: Path, timeout: float = 30.0) -> None:
        self.folder = folder
        self.timeout = timeout
        self._queue: queue.Queue[Path] = queue.Queue()
        self._markers = itertools.count(1)

    def __call__(self, path: Path) -> None:
        self._queue.put(path)

    def _next(self, waiting_for: str) -> str:
        try:
            return self._queue.get(timeout=self.timeout).name
        except queue.Empty:
            raise AssertionError(f"no delivery within {self.timeout} s ({waiting_for})") from None

    def take(self, n: int) -> list[str]:
        """The names of the next ``n`` deliveries; fails if they do not come."""
        return [self._next(f"{i + 1} of {n}") for i in range(n)]

    def before_markers(self) -> list[str]:
        """Everything delivered before two marker files written one after the other."""
        seen: list[str] = []
        for _ in range(2):
            name = f"{MARKER_PREFIX}{next(self._markers)}.toml"
            (self.folder / name).write_text("marker\n")
            while (got := self._next(f"marker {name}")) != name:
                seen.append(got)
        return seen

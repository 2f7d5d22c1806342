"""The watched runner: hashes a completed file found in a watched folder against the
files that could be it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from acquired.daemon.messages import WatchedMatch
from acquired.daemon.runners import Post, spawn
from acquired.unpack import Candidate, match_completed


class WatchedRunner:
    """Matching reads the whole file: never on the state thread."""

    def __init__(self, post: Post, observe: Callable[[float], None]) -> None:
        self._post = post
        self._observe = observe

    def match(self, path: Path, candidates: list[Candidate]) -> None:
        """``WatchedMatch`` with the candidate's key (an int file id) or None, or the error."""

        def work() -> None:
            started = time.monotonic()
            try:
                match = match_completed(path, candidates)
            except Exception as exc:
                self._post(WatchedMatch(path, None, exc))
            else:
                self._observe(time.monotonic() - started)
                self._post(WatchedMatch(path, int(match.key) if match else None, None))

        spawn(f"match-{path.name}", work)

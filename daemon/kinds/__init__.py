"""Kinds of jobs. A kind is a planner (how a file of such a job starts, which runner
does the work) plus the messages its runners post back. The service knows kinds only
through ``JobKind``: a new kind (URL lists) adds a planner and a runner here, not a
branch in every method of the service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from acquired.daemon.lifecycle import Event
from acquired.daemon.store import FileRow


class JobKind(Protocol):
    """What the service asks of a kind of job (``jobs.kind`` names it)."""

    name: str

    def start(self, row: FileRow, event: Event = Event.START) -> None:
        """Start a queued file: move it through the lifecycle and hand it to a runner."""
        ...

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        """The messages this kind's runners post, and the state-thread code for each."""
        ...

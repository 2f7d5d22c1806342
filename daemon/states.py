"""File and job states: the transition table and the derivation of a job's state.

Pure functions only, so that every rule here is tested directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class FileState(StrEnum):
    QUEUED = "queued"
    FETCHING = "fetching"
    VERIFYING = "verifying"
    UNPACKING = "unpacking"
    DONE = "done"
    PAUSED = "paused"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PauseReason(StrEnum):
    USER = "user"
    DISK = "disk"


ACTIVE = frozenset({FileState.FETCHING, FileState.VERIFYING, FileState.UNPACKING})
FINAL = frozenset({FileState.DONE, FileState.CANCELLED})

_ALLOWED: dict[FileState, frozenset[FileState]] = {
    FileState.QUEUED: frozenset(
        {FileState.FETCHING, FileState.VERIFYING, FileState.PAUSED, FileState.CANCELLED}
    ),
    FileState.FETCHING: frozenset(
        {
            FileState.VERIFYING,
            FileState.UNPACKING,
            FileState.DONE,
            FileState.QUEUED,
            FileState.PAUSED,
            FileState.FAILED,
            FileState.CANCELLED,
        }
    ),
    FileState.VERIFYING: frozenset(
        {
            FileState.UNPACKING,
            FileState.DONE,
            FileState.QUEUED,
            FileState.PAUSED,
            FileState.FAILED,
            FileState.CANCELLED,
        }
    ),
    FileState.UNPACKING: frozenset(
        {
            FileState.DONE,
            FileState.QUEUED,
            FileState.PAUSED,
            FileState.FAILED,
            FileState.CANCELLED,
        }
    ),
    FileState.PAUSED: frozenset({FileState.QUEUED, FileState.CANCELLED}),
    FileState.FAILED: frozenset({FileState.QUEUED, FileState.CANCELLED}),
    FileState.CANCELLED: frozenset({FileState.QUEUED}),
    FileState.DONE: frozenset(),
}


class InvalidTransition(ValueError):
    """A state change the table does not allow: a bug in the caller, never user input."""


def can_move(current: FileState, new: FileState) -> bool:
    """Whether a file may go from ``current`` to ``new``."""
    return new in _ALLOWED[current]


def check_move(current: FileState, new: FileState) -> FileState:
    """Return ``new`` if the move is allowed, else raise InvalidTransition."""
    if not can_move(current, new):
        raise InvalidTransition(f"a file cannot go from {current} to {new}")
    return new


def after_command(command: str, state: FileState) -> FileState | None:
    """The state a file takes when the user runs ``command`` on its job, or None if the
    command does not touch a file in that state."""
    if command == "pause":
        return FileState.PAUSED if state == FileState.QUEUED or state in ACTIVE else None
    if command == "resume":
        return FileState.QUEUED if state == FileState.PAUSED else None
    if command == "cancel":
        return FileState.CANCELLED if state not in FINAL else None
    if command == "retry":
        return FileState.QUEUED if state in (FileState.FAILED, FileState.CANCELLED) else None
    raise ValueError(f"unknown command {command!r}")


def job_state(counts: Mapping[str, int], finish: str | None = None) -> str:
    """A job's state, derived from how many of its files are in each state and from the
    state of its own steps (``finish``: None, pending, running, done, failed).

    Work in progress wins over waiting, waiting over pauses, and a failure shows only
    once nothing else can still move, so "failed" always means "needs the user". A job
    whose files are all done is "finishing" while its own steps still have to run.
    """
    files = _files_state(counts)
    if files == "done" and finish in ("pending", "running"):
        return "finishing"
    if files == "done" and finish == "failed":
        return "failed"
    return files


def _files_state(counts: Mapping[str, int]) -> str:
    present = {FileState(s) for s, n in counts.items() if n > 0}
    if not present:
        return "empty"
    for state in (FileState.FETCHING, FileState.VERIFYING, FileState.UNPACKING):
        if state in present:
            return str(state)
    if FileState.QUEUED in present:
        return "queued"
    if FileState.PAUSED in present:
        return "paused"
    if FileState.FAILED in present:
        return "failed"
    if present == {FileState.CANCELLED}:
        return "cancelled"
    return "done"


def job_is_active(counts: Mapping[str, int], finish: str | None = None) -> bool:
    """An active job still has files that can move without the user (or are paused)."""
    return job_state(counts, finish) not in ("done", "failed", "cancelled", "empty")

"""A file's lifecycle: one transition table, and the pure ``decide`` every state change
at run time goes through.

The state thread never writes a file's state by itself: it names what happened (an
``Event``), ``decide(state, event)`` answers with the new state and the effects to carry
out, or raises ``InvalidTransition`` for a move the table does not have. The service
treats such a move as a bug: it logs it with the file and fails the file with
``internal.invalid_transition`` (in tests, ``STRICT`` makes it raise instead).

A file's way: ``queued → fetching → unpacking → done``, plus ``paused``, ``failed`` and
``cancelled``. Choosing between a swarm and mirrors is part of fetching (``PROBE``, then
``CHOSEN`` starts the transfer and the file stays fetching). Verification is part of the
source that delivers the bytes (HTTP verifies before the rename into place, the torrent
engine checks every piece and the file's digests, a watched copy is hashed before it is
matched), so no file enters ``verifying`` any more: the state is kept only because older
stores may hold it, and a restart puts such a file back in the queue.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class FileState(StrEnum):
    """Where a file is in its lifecycle (stored as its value)."""

    QUEUED = "queued"
    FETCHING = "fetching"
    VERIFYING = "verifying"  # only in stores written by older versions; see the module doc
    UNPACKING = "unpacking"
    DONE = "done"
    PAUSED = "paused"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Event(StrEnum):
    """What happened to a file (chosen by the caller from the facts it has)."""

    START = "start"  # the scheduler starts a transfer from the file's sources
    PROBE = "probe"  # the scheduler starts watching the swarm and measuring the mirrors
    CHOSEN = "chosen"  # the probe chose a source: its transfer starts
    FETCHED = "fetched"  # a source delivered the verified file; it has no unpack steps
    FETCHED_UNPACK = "fetched_unpack"  # ... and it has unpack steps
    KEPT = "kept"  # fetched before a stop, still in place, no unpack steps left
    KEPT_UNPACK = "kept_unpack"  # fetched before a stop; its unpack steps still have to run
    WATCHED = "watched"  # a completed copy was found: it is placed and unpacked
    UNPACKED = "unpacked"  # the unpack steps finished
    RETRY = "retry"  # an attempt failed and the file waits to try again
    SWITCH = "switch"  # the source changes (stalled torrent, failed mirrors)
    REQUEUE = "requeue"  # its torrent stopped for another file's sake: back in the queue
    FAIL = "fail"  # failed for good (or could not even start)
    DISK_PAUSE = "disk_pause"  # the disk guard stopped it, or the disk filled up
    SPACE_BACK = "space_back"  # the disk guard lets it go on
    PAUSE = "pause"  # the user paused its job
    RESUME = "resume"  # the user resumed its job
    CANCEL = "cancel"  # the user cancelled its job
    RETRY_BY_USER = "retry_by_user"  # the user asked for another try
    RESTART = "restart"  # the daemon starts again while the file was in flight


class Effect(StrEnum):
    """What the state thread carries out after a move (the runners do the work)."""

    FETCH = "fetch"  # start a transfer (HTTP or torrent, as the file's plan says)
    PROBE = "probe"  # start the source-choice probe
    UNPACK = "unpack"  # run the file's unpack steps on a worker
    PLACE = "place"  # place a watched copy, then run the unpack steps
    CLEAR_CHECKPOINT = "clear_checkpoint"  # resume data is of no use any more
    RESET_ATTEMPTS = "reset_attempts"
    COUNT_ATTEMPT = "count_attempt"
    CHECK_JOB = "check_job"  # every file of the job may be done: its own steps may start


Q, F, V, U, D = (
    FileState.QUEUED,
    FileState.FETCHING,
    FileState.VERIFYING,
    FileState.UNPACKING,
    FileState.DONE,
)
P, X, C = FileState.PAUSED, FileState.FAILED, FileState.CANCELLED

E = Effect
_MOVES: tuple[tuple[Event, frozenset[FileState], FileState, tuple[Effect, ...]], ...] = (
    (Event.START, frozenset({Q}), F, (E.COUNT_ATTEMPT, E.FETCH)),
    (Event.PROBE, frozenset({Q}), F, (E.PROBE,)),
    (Event.CHOSEN, frozenset({F}), F, (E.COUNT_ATTEMPT, E.FETCH)),
    (Event.FETCHED, frozenset({F}), D, (E.CLEAR_CHECKPOINT, E.CHECK_JOB)),
    (Event.FETCHED_UNPACK, frozenset({F}), U, (E.CLEAR_CHECKPOINT, E.UNPACK)),
    (Event.KEPT, frozenset({Q}), D, (E.CHECK_JOB,)),
    (Event.KEPT_UNPACK, frozenset({Q}), U, (E.UNPACK,)),
    (Event.WATCHED, frozenset({Q, F, P, X}), U, (E.CLEAR_CHECKPOINT, E.PLACE)),
    (Event.UNPACKED, frozenset({U}), D, (E.CHECK_JOB,)),
    (Event.RETRY, frozenset({F, U}), Q, ()),
    (Event.SWITCH, frozenset({F}), Q, ()),
    (Event.REQUEUE, frozenset({F}), Q, ()),
    # A file that cannot even start (no usable source, destination not creatable) fails
    # from the queue.
    (Event.FAIL, frozenset({Q, F, U}), X, ()),
    (Event.DISK_PAUSE, frozenset({F, U}), P, ()),
    (Event.SPACE_BACK, frozenset({P}), Q, ()),
    (Event.PAUSE, frozenset({Q, F, V, U}), P, ()),
    (Event.RESUME, frozenset({P}), Q, ()),
    (Event.CANCEL, frozenset({Q, F, V, U, P, X}), C, ()),
    (Event.RETRY_BY_USER, frozenset({X, C}), Q, (E.RESET_ATTEMPTS,)),
    (Event.RESTART, frozenset({F, V, U}), Q, ()),
)


@dataclass(frozen=True)
class Move:
    """A decision: the state the file takes and what follows."""

    state: FileState
    effects: tuple[Effect, ...]


TABLE: dict[tuple[FileState, Event], Move] = {
    (state, event): Move(new, effects)
    for event, sources, new, effects in _MOVES
    for state in sources
}

# In tests a forbidden move raises where it happens (tests/conftest.py sets the variable
# for the test process and for the daemons it starts); in production it fails the file.
STRICT = os.environ.get("ACQUIRED_STRICT_LIFECYCLE") == "1"
INVALID_CODE = "internal.invalid_transition"


class InvalidTransition(ValueError):
    """A move the table does not have: a bug in the caller, never user input."""

    code = INVALID_CODE
    hint = "This is a bug in acquired; please report it with the daemon's log."


def decide(state: str, event: Event) -> Move:
    """The move ``event`` makes from ``state``; raises InvalidTransition if there is none."""
    move = TABLE.get((FileState(state), event))
    if move is None:
        raise InvalidTransition(f"a file cannot take '{event}' while {state}")
    return move


def allowed(state: str, event: Event) -> bool:
    """Whether the table has a move for ``event`` from ``state``."""
    return (FileState(state), event) in TABLE


def sources_of(event: Event) -> frozenset[FileState]:
    """Every state ``event`` moves a file out of (e.g. what a restart puts back in the queue)."""
    return frozenset(s for (s, e) in TABLE if e == event)


COMMAND_EVENTS: dict[str, Event] = {
    "pause": Event.PAUSE,
    "resume": Event.RESUME,
    "cancel": Event.CANCEL,
    "retry": Event.RETRY_BY_USER,
}


def after_command(command: str, state: FileState) -> FileState | None:
    """The state a file takes when the user runs ``command`` on its job, or None if the
    command does not touch a file in that state."""
    event = COMMAND_EVENTS.get(command)
    if event is None:
        raise ValueError(f"unknown command {command!r}")
    move = TABLE.get((state, event))
    return move.state if move is not None else None


# States in which a file has a transfer or step running (or had, before a stop).
ACTIVE = frozenset({FileState.FETCHING, FileState.VERIFYING, FileState.UNPACKING})
FINAL = frozenset({FileState.DONE, FileState.CANCELLED})


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

"""The file lifecycle: every (state, event) pair against a grid written out by hand."""

import pytest

from acquired.daemon.lifecycle import (
    TABLE,
    Effect,
    Event,
    FileState,
    InvalidTransition,
    after_command,
    allowed,
    decide,
    job_is_active,
    job_state,
    sources_of,
)

# One row per event: the new state from each current state, one letter each ("-": the
# move is forbidden). Columns and letters: q queued, f fetching, v verifying,
# u unpacking, d done, p paused, x failed, c cancelled.
LETTERS = {
    "q": "queued",
    "f": "fetching",
    "v": "verifying",
    "u": "unpacking",
    "d": "done",
    "p": "paused",
    "x": "failed",
    "c": "cancelled",
}
COLUMNS = tuple(LETTERS.values())
GRID = {
    #                      q f v u d p x c
    Event.START:          "f - - - - - - -",
    Event.PROBE:          "f - - - - - - -",
    Event.CHOSEN:         "- f - - - - - -",
    Event.FETCHED:        "- d - - - - - -",
    Event.FETCHED_UNPACK: "- u - - - - - -",
    Event.KEPT:           "d - - - - - - -",
    Event.KEPT_UNPACK:    "u - - - - - - -",
    Event.WATCHED:        "u u - - - u u -",
    Event.UNPACKED:       "- - - d - - - -",
    Event.RETRY:          "- q - q - - - -",
    Event.SWITCH:         "- q - - - - - -",
    Event.REQUEUE:        "- q - - - - - -",
    Event.FAIL:           "x x - x - - - -",
    Event.DISK_PAUSE:     "- p - p - - - -",
    Event.SPACE_BACK:     "- - - - - q - -",
    Event.PAUSE:          "p p p p - - - -",
    Event.RESUME:         "- - - - - q - -",
    Event.CANCEL:         "c c c c - c c -",
    Event.RETRY_BY_USER:  "- - - - - - q q",
    Event.RESTART:        "- q q q - - - -",
}  # fmt: skip

PAIRS = [
    (FileState(s), e, LETTERS.get(GRID[e].split()[i], "-"))
    for e in Event
    for i, s in enumerate(COLUMNS)
]


def test_the_grid_names_every_event_and_state() -> None:
    assert set(GRID) == set(Event)
    assert set(COLUMNS) == {str(s) for s in FileState}


@pytest.mark.parametrize(("state", "event", "expected"), PAIRS, ids=lambda v: str(v))
def test_every_pair(state: FileState, event: Event, expected: str) -> None:
    if expected == "-":
        assert not allowed(state, event)
        with pytest.raises(InvalidTransition, match=f"'{event}' while {state}"):
            decide(state, event)
    else:
        assert allowed(state, event)
        assert decide(state, event).state == expected


def test_the_table_has_nothing_the_grid_lacks() -> None:
    assert len(TABLE) == sum(1 for *_, new in PAIRS if new != "-")


def test_done_is_final_and_nothing_enters_verifying() -> None:
    assert not any(state == FileState.DONE for state, _ in TABLE)
    assert not any(move.state == FileState.VERIFYING for move in TABLE.values())


def test_moves_that_used_to_bypass_the_table_are_named_events() -> None:
    # Choosing a source, then fetching from it: one named self-move, not any FETCHING→FETCHING.
    assert decide(FileState.FETCHING, Event.CHOSEN).effects == (Effect.COUNT_ATTEMPT, Effect.FETCH)
    assert not allowed(FileState.FETCHING, Event.START)
    # A watched copy of a paused or failed file is placed and unpacked, not fetched.
    assert decide(FileState.PAUSED, Event.WATCHED).state == FileState.UNPACKING
    assert decide(FileState.FAILED, Event.WATCHED).effects == (
        Effect.CLEAR_CHECKPOINT,
        Effect.PLACE,
    )
    # A file fetched before a stop goes from the queue straight to done or unpacking.
    assert decide(FileState.QUEUED, Event.KEPT).effects == (Effect.CHECK_JOB,)
    assert decide(FileState.QUEUED, Event.KEPT_UNPACK).effects == (Effect.UNPACK,)
    assert not allowed(FileState.QUEUED, Event.FETCHED)


def test_effects() -> None:
    assert decide(FileState.QUEUED, Event.START).effects == (Effect.COUNT_ATTEMPT, Effect.FETCH)
    assert decide(FileState.FETCHING, Event.FETCHED).effects == (
        Effect.CLEAR_CHECKPOINT,
        Effect.CHECK_JOB,
    )
    assert decide(FileState.FAILED, Event.RETRY_BY_USER).effects == (Effect.RESET_ATTEMPTS,)


def test_restart_requeues_every_in_flight_state() -> None:
    assert sources_of(Event.RESTART) == {
        FileState.FETCHING,
        FileState.VERIFYING,
        FileState.UNPACKING,
    }


@pytest.mark.parametrize(
    ("command", "state", "expected"),
    [
        ("pause", FileState.FETCHING, FileState.PAUSED),
        ("pause", FileState.DONE, None),
        ("resume", FileState.PAUSED, FileState.QUEUED),
        ("cancel", FileState.DONE, None),
        ("cancel", FileState.FAILED, FileState.CANCELLED),
        ("retry", FileState.FAILED, FileState.QUEUED),
        ("retry", FileState.FETCHING, None),
    ],
)
def test_commands(command: str, state: FileState, expected: FileState | None) -> None:
    assert after_command(command, state) == expected


def test_unknown_command() -> None:
    with pytest.raises(ValueError, match="unknown command"):
        after_command("explode", FileState.QUEUED)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, "empty"),
        ({"done": 3}, "done"),
        ({"done": 2, "fetching": 1}, "fetching"),
        ({"failed": 1, "queued": 1}, "queued"),
        ({"failed": 1, "done": 4}, "failed"),
        ({"paused": 1, "done": 1}, "paused"),
        ({"cancelled": 2}, "cancelled"),
        ({"cancelled": 1, "done": 1}, "done"),
        ({"verifying": 1, "queued": 3}, "verifying"),
        ({"queued": 0, "done": 1}, "done"),
    ],
)
def test_job_state(counts: dict[str, int], expected: str) -> None:
    assert job_state(counts) == expected


def test_job_steps_hold_the_job_until_they_are_done() -> None:
    assert job_state({"done": 2}, "pending") == "finishing"
    assert job_state({"done": 2}, "running") == "finishing"
    assert job_state({"done": 2}, "done") == "done"
    assert job_state({"done": 2}, "failed") == "failed"
    assert job_state({"done": 1, "fetching": 1}, "pending") == "fetching"
    assert job_is_active({"done": 2}, "pending")


def test_job_is_active() -> None:
    assert job_is_active({"queued": 1})
    assert job_is_active({"paused": 1, "done": 1})
    assert not job_is_active({"done": 1})
    assert not job_is_active({"failed": 1, "done": 1})

"""The file-state table and job-state derivation, called directly."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acquired.daemon.states import (
    FileState,
    InvalidTransition,
    after_command,
    can_move,
    check_move,
    job_is_active,
    job_state,
)


def test_happy_path_is_allowed() -> None:
    path = [FileState.QUEUED, FileState.FETCHING, FileState.VERIFYING, FileState.UNPACKING]
    for a, b in zip(path, [*path[1:], FileState.DONE], strict=True):
        assert can_move(a, b)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (FileState.DONE, FileState.QUEUED),
        (FileState.DONE, FileState.FETCHING),
        (FileState.PAUSED, FileState.FETCHING),
        (FileState.FAILED, FileState.DONE),
        (FileState.CANCELLED, FileState.FETCHING),
    ],
)
def test_forbidden_moves_raise(current: FileState, new: FileState) -> None:
    assert not can_move(current, new)
    with pytest.raises(InvalidTransition, match=f"from {current} to {new}"):
        check_move(current, new)


@given(st.sampled_from(["pause", "resume", "cancel", "retry"]), st.sampled_from(list(FileState)))
def test_commands_only_make_allowed_moves(command: str, state: FileState) -> None:
    new = after_command(command, state)
    if new is not None and new != state:
        assert can_move(state, new), (command, state, new)


def test_commands() -> None:
    assert after_command("pause", FileState.FETCHING) == FileState.PAUSED
    assert after_command("pause", FileState.DONE) is None
    assert after_command("resume", FileState.PAUSED) == FileState.QUEUED
    assert after_command("cancel", FileState.DONE) is None
    assert after_command("retry", FileState.FAILED) == FileState.QUEUED
    assert after_command("retry", FileState.FETCHING) is None
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

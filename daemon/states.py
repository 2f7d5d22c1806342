"""Old import path of the file states; the lifecycle lives in ``acquired.daemon.lifecycle``."""

from acquired.daemon.lifecycle import (
    ACTIVE,
    FINAL,
    FileState,
    InvalidTransition,
    after_command,
    job_is_active,
    job_state,
)

__all__ = [
    "ACTIVE",
    "FINAL",
    "FileState",
    "InvalidTransition",
    "after_command",
    "job_is_active",
    "job_state",
]

"""Errors of the unpack pipeline. Each has a stable ``code`` and a ``hint`` for the user."""

from __future__ import annotations

from typing import ClassVar


class UnpackError(Exception):
    """Base of every failure of verify, extract and layout steps."""

    code: ClassVar[str] = "unpack.error"
    hint: ClassVar[str] = "See the daemon's log for details."
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details

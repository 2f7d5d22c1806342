"""Errors a source can raise. Each has a stable ``code`` and a ``hint`` for the user."""

from __future__ import annotations

from typing import ClassVar

from acquired.common.errors import AcquiredError
from acquired.common.errors import DiskFull as _DiskFull


class SourceError(AcquiredError):
    """Base of every failure a source reports to its caller.

    ``details`` carries JSON-able facts (URL, expected vs actual, status code) that the
    daemon stores next to the message.
    """

    code: ClassVar[str] = "source.error"
    hint: ClassVar[str] = "See the daemon's log for details."
    retryable: ClassVar[bool] = False


class DiskFull(_DiskFull, SourceError):
    """The filesystem ran out of space while writing (ENOSPC); the data so far is kept.

    Code and hint are the shared ``disk.full`` of :mod:`acquired.common.errors`; this
    subclass keeps it a :class:`SourceError` for the engines' own handling.
    """

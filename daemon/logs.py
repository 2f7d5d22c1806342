"""Logging: journald with structured fields under systemd, stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys

LOG = logging.getLogger("acquired")


def under_systemd() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def setup_logging(level: str = "info") -> None:
    """Route the ``acquired`` loggers to journald or stderr at the given level.

    Records may carry ``extra={"job": ..., "file": ..., "source": ..., "code": ...}``;
    under journald they become the ACQUIRED_JOB/ACQUIRED_FILE/... fields.
    """
    root = logging.getLogger("acquired")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    handler: logging.Handler
    if under_systemd():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="acquired")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)

"""Logging: journald with structured fields under systemd, stderr otherwise, and a local
log file that ``acquirectl logs`` can read when the journal cannot be.

Records may carry ``extra={"job": ..., "file": ..., "source": ..., "code": ...}``. Under
journald they become the ``ACQUIRED_JOB``, ``ACQUIRED_FILE``, ``ACQUIRED_SOURCE`` and
``ACQUIRED_CODE`` fields (``journalctl ACQUIRED_JOB=cifar10``); in the local log file they
are keys of one JSON object per line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from systemd.journal import JournalHandler
from systemd.journal import send as journal_send

from acquired.common.redact import redact_text

LOG = logging.getLogger("acquired")

#: SYSLOG_IDENTIFIER of every record; ``acquirectl logs`` filters on it.
IDENTIFIER = "acquired"

#: ``extra`` keys that become journal fields, and the field names.
FIELDS: dict[str, str] = {
    "job": "ACQUIRED_JOB",
    "file": "ACQUIRED_FILE",
    "source": "ACQUIRED_SOURCE",
    "code": "ACQUIRED_CODE",
}

#: Local log file: name in the state dir, size before rotation, rotated files kept.
LOG_FILE_NAME = "acquired.log"
LOG_FILE_MAX_BYTES = 10_000_000
LOG_FILE_BACKUPS = 3

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS |= {"error": logging.ERROR, "critical": logging.CRITICAL}


def under_systemd() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def priority(levelno: int) -> int:
    """syslog priority of a logging level: DEBUG 7, INFO 6, WARNING 4, ERROR 3, CRITICAL 2."""
    return int(JournalHandler.map_priority(levelno))


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The ``ACQUIRED_*`` journal fields of a record (only those that are set)."""
    fields: dict[str, str] = {}
    for key, name in FIELDS.items():
        value = getattr(record, key, None)
        if value is not None and value != "":
            fields[name] = str(value)
    return fields


class AcquiredJournalHandler(JournalHandler):
    """systemd-python's JournalHandler, sending only well-formed fields.

    The stock handler forwards every attribute of the record (``job``, ``msg``,
    ``args`` ...), which journald drops because field names must be upper case; this one
    sends MESSAGE, PRIORITY, LOGGER, THREAD_NAME, CODE_*, the ``ACQUIRED_*`` fields,
    ``ACQUIRED_MONOTONIC_USEC`` (when the record was sent, on CLOCK_MONOTONIC) and, for
    exceptions, the traceback in MESSAGE and EXCEPTION_TEXT.
    ``sender_function`` (default ``systemd.journal.send``) is the seam for tests.
    """

    def __init__(
        self,
        level: int = logging.NOTSET,
        sender_function: Callable[..., Any] = journal_send,
        **fields: str,
    ) -> None:
        fields.setdefault("SYSLOG_IDENTIFIER", IDENTIFIER)
        super().__init__(level, sender_function=sender_function, **fields)

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record to the journal with its fields."""
        try:
            message = self.format(record)
            extras: dict[str, Any] = dict(self._extra)
            if record.exc_text:
                extras["EXCEPTION_TEXT"] = record.exc_text
            extras.update(record_fields(record))
            # CLOCK_MONOTONIC, the clock of systemd's *TimestampMonotonic properties:
            # lets a reader order a record against READY=1 or a restart exactly.
            extras["ACQUIRED_MONOTONIC_USEC"] = str(time.monotonic_ns() // 1000)
            self.send(
                message,
                PRIORITY=str(priority(record.levelno)),
                LOGGER=record.name,
                THREAD_NAME=record.threadName,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **extras,
            )
        except Exception:
            self.handleError(record)


def strip_where(message: str, job: object, file: object) -> str:
    """``message`` without a leading ``[job]`` or ``[job/file]`` that repeats its fields
    (every reader shows those fields already)."""
    if not job or not message.startswith("["):
        return message
    for where in (f"{job}/{file}" if file else None, str(job)):
        if where and message.startswith(f"[{where}] "):
            return message[len(where) + 3 :]
    return message


class RecordFilter(logging.Filter):
    """Makes a record fit to be shown: secrets in URLs redacted (message and traceback),
    and no ``[job/file]`` prefix doubling the record's own job and file fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops one."""
        message = record.getMessage()
        clean = redact_text(
            strip_where(message, getattr(record, "job", None), getattr(record, "file", None))
        )
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, job, file, source, code."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "priority": priority(record.levelno),
            "logger": record.name,
            "message": message,
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None and value != "":
                entry[key] = str(value)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """stderr lines: time, level, message, then ``job=... file=...`` when set."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as a text line with its job/file tags."""
        line = super().format(record)
        tags = " ".join(
            f"{key}={getattr(record, key)}"
            for key in FIELDS
            if getattr(record, key, None) not in (None, "")
        )
        if not tags:
            return line
        head, sep, tail = line.partition("\n")
        return f"{head} [{tags}]{sep}{tail}"


def setup_logging(
    level: str = "info",
    *,
    log_file: Path | str | None = None,
    journal: bool | None = None,
    journal_handler: logging.Handler | None = None,
    stream: TextIO | None = None,
) -> list[logging.Handler]:
    """Route the ``acquired`` loggers to journald or stderr, and to ``log_file`` if given.

    ``journal``: None chooses journald when running under systemd; ``journal_handler``
    replaces the journald handler (the seam for tests). ``log_file`` (the daemon passes
    ``<state_dir>/acquired.log``) is a size-rotated JSON-lines file that ``acquirectl
    logs`` reads when the journal is not available to the operator. Calling it again
    (on reload) replaces the handlers. Returns the handlers installed.
    """
    name = level.lower() if isinstance(level, str) else level
    if name not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    root = logging.getLogger("acquired")
    for old in list(root.handlers):
        root.removeHandler(old)
        with contextlib.suppress(Exception):
            old.close()
    root.setLevel(LEVELS[name])
    root.propagate = False
    handlers: list[logging.Handler] = []
    use_journal = under_systemd() if journal is None else journal
    if journal_handler is not None:
        handlers.append(journal_handler)
    elif use_journal:
        handlers.append(AcquiredJournalHandler())
    else:
        console = logging.StreamHandler(stream or sys.stderr)
        console.setFormatter(TextFormatter())
        handlers.append(console)
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path,
            maxBytes=LOG_FILE_MAX_BYTES,
            backupCount=LOG_FILE_BACKUPS,
            encoding="utf-8",
        )
        rotating.setFormatter(JsonLineFormatter())
        handlers.append(rotating)
    for handler in handlers:
        handler.addFilter(RecordFilter())
        root.addHandler(handler)
    return handlers


# ---------------------------------------------------------------- reading the logs back


def parse_line(line: str) -> dict[str, Any] | None:
    """One entry of the local log file, or None for a line that is not one (torn write)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or "message" not in entry:
        return None
    return entry


def journal_entry(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A ``journalctl -o json`` object in the local log file's shape."""

    def text(value: Any) -> str:
        # journalctl prints a field that is not valid UTF-8 as a list of byte values
        if isinstance(value, list):
            return bytes(int(b) for b in value).decode("utf-8", "replace")
        return str(value)

    ts = raw.get("__REALTIME_TIMESTAMP")
    prio = int(raw.get("PRIORITY", 6) or 6)
    entry: dict[str, Any] = {
        "ts": int(ts) / 1e6 if ts else 0.0,
        "level": _LEVEL_OF_PRIORITY.get(prio, "info"),
        "priority": prio,
        "logger": text(raw.get("LOGGER", raw.get("SYSLOG_IDENTIFIER", ""))),
        "message": text(raw.get("MESSAGE", "")),
    }
    for key, name in FIELDS.items():
        if name in raw:
            entry[key] = text(raw[name])
    return entry


_LEVEL_OF_PRIORITY = {0: "critical", 1: "critical", 2: "critical", 3: "error"}
_LEVEL_OF_PRIORITY |= {4: "warning", 5: "info", 6: "info", 7: "debug"}


def format_entry(entry: Mapping[str, Any]) -> str:
    """One entry as a line for people: ``2024-05-01 12:00:00 INFO [job/file] message``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry.get("ts") or 0)))
    where = "/".join(str(entry[k]) for k in ("job", "file") if entry.get(k))
    tags = [where] if where else []
    if entry.get("code"):
        tags.append(str(entry["code"]))
    tag = f" [{' '.join(tags)}]" if tags else ""
    message = strip_where(str(entry.get("message", "")), entry.get("job"), entry.get("file"))
    return f"{stamp} {str(entry.get('level', 'info')).upper()}{tag} {redact_text(message)}"


def read_log_file(
    path: Path, job: str | None = None, lines: int | None = None
) -> list[dict[str, Any]]:
    """Entries of the local log file and its rotated predecessors, oldest first.

    ``job`` keeps only that job's entries; ``lines`` keeps only the last so many.
    """
    files = [path.with_name(f"{path.name}.{i}") for i in range(LOG_FILE_BACKUPS, 0, -1)]
    files.append(path)
    entries: list[dict[str, Any]] = []
    for candidate in files:
        try:
            with candidate.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    entry = parse_line(line)
                    if entry is not None and (job is None or entry.get("job") == job):
                        entries.append(entry)
        except FileNotFoundError:
            continue
    if lines is not None:
        entries = entries[-lines:] if lines > 0 else []
    return entries


def follow_log_file(
    path: Path,
    job: str | None = None,
    poll: float = 0.25,
    stop: Callable[[], bool] = lambda: False,
    history: int | None = 0,
) -> Iterator[dict[str, Any]]:
    """New entries appended to the local log file, across rotations, until ``stop()``.

    ``history``: how many earlier entries to yield first (None: all, 0: none, start at
    the end). They are read through the same open file that is then followed, so no
    entry written meanwhile is lost or shown twice. A rotation shows as the path naming another
    file (inode) or a file shorter than what was read. The rest of the old file is read,
    then the rotated files written after it (found by the old file's inode among
    ``acquired.log.N``), then the new file from its start, so nothing is skipped even when
    the log rotated more than once between two polls.
    """
    pending = ""

    def entries(chunk: str, final: bool = False) -> list[dict[str, Any]]:
        nonlocal pending
        pending += chunk
        *complete, pending = pending.split("\n")
        if final:
            complete.append(pending)
            pending = ""
        found = []
        for line in complete:
            entry = parse_line(line)
            if entry is not None and (job is None or entry.get("job") == job):
                found.append(entry)
        return found

    def inode_of(candidate: Path) -> int | None:
        try:
            return candidate.stat().st_ino
        except FileNotFoundError:
            return None

    handle: TextIO | None = None
    inode: int | None = None

    def open_current(at_end: bool) -> None:
        nonlocal handle, inode
        try:
            handle = path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            handle, inode = None, None
            return
        inode = os.fstat(handle.fileno()).st_ino
        if at_end:
            handle.seek(0, os.SEEK_END)

    open_current(at_end=history == 0)
    if history != 0:
        backups = [path.with_name(f"{path.name}.{i}") for i in range(LOG_FILE_BACKUPS, 0, -1)]
        earlier: list[dict[str, Any]] = []
        for backup in backups:
            try:
                earlier += entries(backup.read_text("utf-8", "replace"), final=True)
            except FileNotFoundError:
                continue
        if handle is not None:
            earlier += entries(handle.read())
        yield from earlier if history is None else earlier[-history:]
    try:
        while not stop():
            if handle is None:
                open_current(at_end=False)
                if handle is None:
                    time.sleep(poll)
                    continue
            chunk = handle.read()
            if chunk:
                yield from entries(chunk)
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                time.sleep(poll)  # between the rename and the new file
                continue
            if st.st_ino == inode and st.st_size >= handle.tell():
                time.sleep(poll)
                continue
            yield from entries(handle.read(), final=True)
            handle.close()
            handle = None
            backups = [path.with_name(f"{path.name}.{i}") for i in range(1, LOG_FILE_BACKUPS + 1)]
            ours = next((i for i, b in enumerate(backups) if inode_of(b) == inode), None)
            for successor in reversed(backups[: ours or 0]):
                try:
                    yield from entries(successor.read_text("utf-8", "replace"), final=True)
                except FileNotFoundError:
                    continue
            open_current(at_end=False)
    finally:
        if handle is not None:
            handle.close()

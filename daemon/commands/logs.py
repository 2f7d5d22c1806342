"""``acquirectl logs [JOB] [-f]``: the daemon's log, from the journal or the local log file.

With ``--from auto`` (the default) the local log file (``<state_dir>/acquired.log``,
readable by the group ``acquired``) of a daemon named by ``--config`` or started by hand
(found through its record) is read; otherwise the journal is used when ``journalctl``
exists and returns the daemon's entries to this user (root, or the groups ``adm`` /
``systemd-journal``), and the local log file of the system service when it does not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from acquired.daemon.errors import DaemonError
from acquired.daemon.logs import (
    FIELDS,
    IDENTIFIER,
    LOG_FILE_NAME,
    follow_log_file,
    format_entry,
    journal_entry,
    read_log_file,
)

DEFAULT_LINES = 100


class LogsUnavailable(DaemonError):
    """Neither the journal nor a local log file can be read."""

    code = "logs.unavailable"
    hint = (
        "Read the journal as root or as a member of systemd-journal (journalctl -u acquired), "
        "or pass --file <state_dir>/acquired.log."
    )


def journal_command(job: str | None, lines: int | None, follow: bool) -> list[str]:
    """The journalctl invocation for the daemon's entries (of one job)."""
    cmd = ["journalctl", "--no-pager", "--quiet", "-o", "json", f"SYSLOG_IDENTIFIER={IDENTIFIER}"]
    if job is not None:
        cmd.append(f"{FIELDS['job']}={job}")
    if lines is not None:
        cmd += ["-n", str(lines)]
    else:
        cmd.append("--no-tail")
    if follow:
        cmd.append("--follow")
    return cmd


def journal_available() -> bool:
    """True when journalctl exists and shows this user at least one of the daemon's entries."""
    if shutil.which("journalctl") is None:
        return False
    try:
        probe = subprocess.run(
            journal_command(None, 1, False),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


def journal_entries(job: str | None, lines: int | None, follow: bool) -> Iterator[dict[str, Any]]:
    """Entries from journalctl, oldest first; with ``follow`` until interrupted."""
    proc = subprocess.Popen(
        journal_command(job, lines, follow),
        stdout=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            yield journal_entry(raw)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()


def own_log_file(args: argparse.Namespace) -> Path | None:
    """The local log of the daemon this invocation names or finds (``--file``,
    ``--config``, the record of a daemon started by hand), if it exists."""
    if getattr(args, "file", None):
        return Path(args.file)
    from acquired.daemon.config import Config
    from acquired.daemon.control import DaemonNotRunning
    from acquired.daemon.discovery import find_daemon, read_records

    found: list[Path] = []
    if getattr(args, "config", None) is not None:
        with contextlib.suppress(DaemonError):
            found.append(Config.load(Path(args.config)).state_dir / LOG_FILE_NAME)
    with contextlib.suppress(DaemonNotRunning, DaemonError):
        daemon = find_daemon(getattr(args, "socket", None), getattr(args, "config", None))
        if daemon.log_file is not None:
            found.append(daemon.log_file)
        for record in read_records():
            if record.get("socket") == str(daemon.socket) and record.get("log_file"):
                found.append(Path(record["log_file"]))
    return next((p for p in found if p.exists()), None)


def log_file_candidates(args: argparse.Namespace) -> list[Path]:
    """Where the daemon this invocation talks to keeps its local log: its own first,
    then every other place acquirectl looks for a daemon."""
    own = own_log_file(args)
    if getattr(args, "file", None):
        return [Path(args.file)]
    from acquired.daemon.config import Config
    from acquired.daemon.discovery import SYSTEM_CONFIG, candidates

    found: list[Path] = [own] if own is not None else []
    with contextlib.suppress(DaemonError):
        places, _ = candidates(getattr(args, "socket", None), getattr(args, "config", None))
        found += [p.log_file for p in places if p.log_file is not None]
        if getattr(args, "socket", None) is not None or getattr(args, "config", None):
            places, _ = candidates(None, None)
            found += [p.log_file for p in places if p.log_file is not None]
    if SYSTEM_CONFIG.is_file():
        with contextlib.suppress(DaemonError):
            found.append(Config.load(SYSTEM_CONFIG).state_dir / LOG_FILE_NAME)
    return list(dict.fromkeys(found))


def file_entries(
    path: Path, job: str | None, lines: int | None, follow: bool
) -> Iterator[dict[str, Any]]:
    """Entries of the local log file; with ``follow``, then the new ones until interrupted."""
    if follow:
        yield from follow_log_file(path, job=job, history=lines)
    else:
        yield from read_log_file(path, job=job, lines=lines)


def write_entries(entries: Iterable[dict[str, Any]], out: TextIO, as_json: bool) -> int:
    """Print entries one per line; returns how many."""
    n = 0
    for entry in entries:
        out.write((json.dumps(entry) if as_json else format_entry(entry)) + "\n")
        out.flush()
        n += 1
    return n


class NoSuchJobInLog(DaemonError):
    """``logs JOB`` for a job the log has never mentioned."""

    code = "logs.unknown_job"
    hint = "`acquirectl status --all` lists the jobs."


def cmd_logs(args: argparse.Namespace) -> int:
    """Show (``-f``: follow) the daemon's log lines, of one job if JOB is given."""
    lines = None if args.lines == 0 else args.lines
    source = args.source
    if source == "auto":
        # the daemon named or found here (by hand, --config) has its own log; the journal
        # is for the system service
        mine = own_log_file(args)
        source = "file" if mine is not None else ("journal" if journal_available() else "file")
    try:
        if source == "journal":
            if shutil.which("journalctl") is None:
                raise LogsUnavailable("journalctl is not installed on this machine")
            if not journal_available():
                raise LogsUnavailable(
                    "the journal has no entries of acquired that this user can read "
                    "(the daemon is not running under systemd here, or the journal is "
                    "not readable by this user)"
                )
            entries: Iterable[dict[str, Any]] = journal_entries(args.job, lines, args.follow)
        else:
            candidates = log_file_candidates(args)
            path = next((p for p in candidates if p.exists()), None)
            if path is None:
                where = ", ".join(str(p) for p in candidates) or "no configuration"
                raise LogsUnavailable(
                    f"the journal has no entries of acquired for this user, and there is "
                    f"no local log file ({where})",
                    candidates=[str(p) for p in candidates],
                )
            if not args.json and sys.stderr.isatty():
                print(f"(from {path})", file=sys.stderr)
            if args.job is not None and not _job_in_log(path, args.job):
                raise NoSuchJobInLog(
                    f"no job named '{args.job}' in the log {path}", job=args.job, path=str(path)
                )
            entries = file_entries(path, args.job, lines, args.follow)
        written = write_entries(entries, sys.stdout, args.json)
        if written == 0 and args.job is not None and not args.follow and source == "journal":
            raise NoSuchJobInLog(f"no job named '{args.job}' in the journal", job=args.job)
    except KeyboardInterrupt:
        return 0
    except PermissionError as exc:
        raise LogsUnavailable(
            f"cannot read {exc.filename}: permission denied", path=str(exc.filename)
        ) from None
    return 0


def _job_in_log(path: Path, job: str) -> bool:
    """Whether any entry of the local log (or its rotated files) is of ``job``."""
    return bool(read_log_file(path, job=job, lines=1))


def register(subparsers: Any) -> None:
    """Add ``logs`` to acquirectl's parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "logs",
        help="the daemon's log (journal or local log file), of one job if given",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", nargs="?", help="only this job's lines (journal field ACQUIRED_JOB)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument(
        "-n",
        "--lines",
        type=int,
        default=DEFAULT_LINES,
        help=f"show the last N lines (default {DEFAULT_LINES}; 0 = all)",
    )
    p.add_argument(
        "--from",
        dest="source",
        choices=("auto", "journal", "file"),
        default="auto",
        help="where to read (default: the journal if readable, else the local log file)",
    )
    p.add_argument("--file", help="read this local log file (implies --from file)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_logs)

"""``acquirectl pause|resume|cancel|retry|forget JOB``: control one job.

A command that changes nothing says why and names the command that would (``resume``
on a cancelled job: "use `acquirectl retry JOB`"), and exits 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from acquired.daemon.errors import DaemonError

FINAL = ("done", "failed", "cancelled")


class NothingToDo(DaemonError):
    """A job command that applies to none of the job's files."""

    code = "cli.nothing_to_do"
    hint = "`acquirectl show JOB` lists each file's state."

    def __init__(self, message: str, hint: str, **details: object) -> None:
        super().__init__(message, **details)
        setattr(self, "hint", hint)  # noqa: B010 - hint is a class attribute elsewhere


def explain(cmd: str, job: str, state: str) -> tuple[str, str]:
    """Why ``cmd`` changed nothing on a job in ``state``, and what to run instead."""
    show = f"`acquirectl show {job}` lists each file's state."
    if cmd == "resume":
        if state in ("cancelled", "failed"):
            return (
                f"nothing to resume: job '{job}' is {state}",
                f"Use `acquirectl retry {job}` to fetch its {state} files again.",
            )
        if state == "done":
            return f"nothing to resume: job '{job}' is done", show
        return f"nothing to resume: job '{job}' is {state}, not paused", show
    if cmd == "pause":
        if state == "paused":
            return (
                f"job '{job}' is already paused",
                f"`acquirectl resume {job}` continues it.",
            )
        return f"nothing to pause: job '{job}' is {state}", show
    if cmd == "cancel":
        if state in FINAL:
            return (
                f"nothing to cancel: job '{job}' is {state} already",
                f"`acquirectl forget {job}` removes it from the list.",
            )
        return f"nothing to cancel in job '{job}' ({state})", show
    if cmd == "retry":
        if state == "paused":
            return (
                f"nothing to retry: job '{job}' is paused, not failed",
                f"Use `acquirectl resume {job}`.",
            )
        return f"nothing to retry: job '{job}' has no failed or cancelled file ({state})", show
    return f"{cmd} changed nothing in job '{job}' ({state})", show


def cmd_job_command(args: argparse.Namespace) -> int:
    """pause, resume, cancel or retry one job."""
    from acquired.daemon.cli import call

    result = call(args, {"cmd": args.cmd, "job": args.job})
    if not result.get("files"):
        shown = call(args, {"cmd": "show", "job": args.job})
        message, hint = explain(args.cmd, args.job, str(shown.get("state")))
        raise NothingToDo(message, hint, job=args.job, state=shown.get("state"))
    print(f"{result['job']}: {args.cmd} applied to {result['files']} file(s)")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Remove a finished, failed or cancelled job (and, if asked, its data)."""
    from acquired.daemon.cli import call

    result: dict[str, Any] = call(
        args, {"cmd": "forget", "job": args.job, "delete_data": args.delete_data}
    )
    print(f"{result['job']}: forgotten (it was {result['state']})")
    if result.get("deleted"):
        print(f"  deleted {result['deleted']}")
    elif args.delete_data:
        print("  no data to delete")
    else:
        print("  its data stays where it is")
    return 0


def register(subparsers: Any) -> None:
    """Add the job commands to acquirectl's parser."""
    for name, text in (
        ("pause", "pause a job's transfers (progress is kept)"),
        ("resume", "resume a paused job"),
        ("cancel", "cancel a job (downloaded data is kept)"),
        ("retry", "retry a job's failed or cancelled files"),
    ):
        p = subparsers.add_parser(name, help=text)
        p.add_argument("job")
        p.set_defaults(func=cmd_job_command, cmd=name)
    p = subparsers.add_parser("forget", help="remove a done, failed or cancelled job from the list")
    p.add_argument("job")
    p.add_argument(
        "--delete-data",
        action="store_true",
        help="also delete the job's destination folder (not when other jobs share it)",
    )
    p.set_defaults(func=cmd_forget)

"""``acquirectl``: the operator's client for the control socket.

Core commands live here; other families (mirrors, doctor, top, logs) live in
``acquired.daemon.commands`` and register themselves on the parser.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from acquired.daemon.control import request
from acquired.daemon.discovery import Candidate, find_daemon
from acquired.daemon.errors import describe
from acquired.daemon.manifest import manifest_schema
from acquired.daemon.tui import render_status
from acquired.daemon.units import format_bytes

COMMAND_FAMILIES = ("add", "jobs", "mirrors", "doctor", "top", "logs", "urllist", "fleet")


def find(args: argparse.Namespace) -> Candidate:
    """The daemon this invocation talks to (found once, then remembered on ``args``)."""
    found: Candidate | None = getattr(args, "_daemon", None)
    if found is None:
        found = find_daemon(args.socket, args.config)
        args._daemon = found
    return found


def socket_path(args: argparse.Namespace) -> Path:
    """The control socket of the daemon this invocation talks to."""
    return find(args).socket


def call(args: argparse.Namespace, payload: dict[str, Any]) -> Any:
    """Send one request to the daemon this invocation talks to."""
    return request(socket_path(args), payload)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    print(json.dumps(value, indent=2, default=str))


# -- commands ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Jobs, transfers and events once (``--json``: the snapshot as it is)."""
    snapshot = call(args, {"cmd": "status"})
    if args.json:
        print_json(snapshot)
        return 0
    Console().print(render_status(snapshot, all_jobs=args.all))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """One job: each file's state, attempts, source and last error."""
    job = call(args, {"cmd": "show", "job": args.job})
    if args.json:
        print_json(job)
        return 0
    console = Console()
    console.print(f"[bold]{job['id']}[/bold]  {job['state']}  → {job['destination']}")
    for w in job["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    table = Table()
    for col in ("file", "state", "done/size", "attempts", "source", "reason / last error"):
        table.add_column(col)
    for f in job["files"]:
        err = f["error"]
        notes = [f["reason"] or ""]
        if err and f["state"] == "failed":
            notes = [f"{err['code']}: {err['message']}", f"hint: {err['hint']}"]
        if f.get("plan"):
            notes.append(f"source: {f['plan']['reason']}")
        size = format_bytes(f["size"]) if f["size"] is not None else "?"
        source = " · ".join(x for x in (f["source"], f.get("detail")) if x)
        table.add_row(
            f["path"],
            f["state"],
            f"{format_bytes(f['bytes_done'])}/{size}",
            str(f["attempts"]),
            source,
            "\n".join(n for n in notes if n),
        )
    console.print(table)
    steps = job.get("job_steps") or {}
    if steps.get("state"):
        console.print(f"job steps: {steps['state']}")
        if steps.get("error"):
            err = steps["error"]
            console.print(f"  {err['code']}: {err['message']}\n  hint: {err['hint']}")
    for ev in job["events"][-10:]:
        console.print(f"  {ev['level']:7} {ev['message']}", highlight=False)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the manifest's JSON Schema."""
    print_json(manifest_schema())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """acquirectl's parser, with every command family registered."""
    parser = argparse.ArgumentParser(prog="acquirectl", description="Control the acquired daemon.")
    parser.add_argument("--socket", help="control socket (default: found automatically)")
    parser.add_argument("--config", type=Path, help="the daemon's configuration file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", help="jobs with progress, speed and ETA")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="every job (default: active and recent)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("show", help="one job: files, attempts, last errors")
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("schema", help="print the manifest's JSON Schema")
    p.set_defaults(func=cmd_schema)

    for family in COMMAND_FAMILIES:
        module = importlib.import_module(f"acquired.daemon.commands.{family}")
        register: Callable[[Any], None] = module.register
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one acquirectl command; errors are one message and a hint (JSON under --json)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        info = describe(exc)
        if info.code == "internal.error":
            raise
        if getattr(args, "json", False):
            print_json({"ok": False, "error": info.as_dict()})
            return 1
        print(f"acquirectl: {info.message}", file=sys.stderr)
        if info.hint:
            print(f"  hint: {info.hint}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())

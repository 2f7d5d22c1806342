"""``acquirectl``: the operator's client for the control socket.

Core commands live here; other families (mirrors, doctor, top, logs) live in
``acquired.daemon.commands`` and register themselves on the parser.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from acquired.daemon.config import Config
from acquired.daemon.control import request
from acquired.daemon.errors import describe
from acquired.daemon.manifest import manifest_schema
from acquired.daemon.tui import render_status
from acquired.daemon.units import format_bytes

SYSTEM_CONFIG = Path("/etc/acquired/acquired.toml")
COMMAND_FAMILIES = ("mirrors", "doctor", "top", "logs", "urllist")


def default_socket() -> Path:
    """The socket to talk to: $ACQUIRED_SOCKET, else a daemon started here with the
    embedded defaults (`make run`), else the system service's, else the local default."""
    env = os.environ.get("ACQUIRED_SOCKET")
    if env:
        return Path(env)
    local = Config.load(None).socket_path
    if local.exists():
        return local
    if SYSTEM_CONFIG.is_file():
        try:
            return Config.load(SYSTEM_CONFIG).socket_path
        except Exception:
            return Path("/run/acquired/acquired.sock")
    return local


def socket_path(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    if args.config is not None:
        return Config.load(args.config).socket_path
    return default_socket()


def call(args: argparse.Namespace, payload: dict[str, Any]) -> Any:
    """Send one request to the daemon this invocation talks to."""
    return request(socket_path(args), payload)


# -- commands ---------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# -- commands ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    snapshot = call(args, {"cmd": "status"})
    if args.json:
        print_json(snapshot)
        return 0
    Console().print(render_status(snapshot))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
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


def cmd_add(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as exc:
        print(f"acquirectl: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    result = call(args, {"cmd": "add", "name": path.name, "text": text, "replace": args.replace})
    print(f"{result['job']}: {result['message']}")
    return 0


def cmd_job_command(args: argparse.Namespace) -> int:
    result = call(args, {"cmd": args.cmd, "job": args.job})
    print(f"{result['job']}: {args.cmd} applied to {result['files']} file(s)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print_json(manifest_schema())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acquirectl", description="Control the acquired daemon.")
    parser.add_argument("--socket", help="control socket (default: found automatically)")
    parser.add_argument("--config", type=Path, help="the daemon's configuration file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", help="jobs with progress, speed and ETA")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("show", help="one job: files, attempts, last errors")
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("add", help="submit a manifest (as if dropped into the inbox)")
    p.add_argument("file")
    p.add_argument("--replace", action="store_true", help="replace an active job of that name")
    p.set_defaults(func=cmd_add)

    for name, text in (
        ("pause", "pause a job's transfers (progress is kept)"),
        ("resume", "resume a paused job"),
        ("cancel", "cancel a job (downloaded data is kept)"),
        ("retry", "retry a job's failed or cancelled files"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job")
        p.set_defaults(func=cmd_job_command, cmd=name)

    p = sub.add_parser("schema", help="print the manifest's JSON Schema")
    p.set_defaults(func=cmd_schema)

    for family in COMMAND_FAMILIES:
        module = importlib.import_module(f"acquired.daemon.commands.{family}")
        register: Callable[[Any], None] = module.register
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
        print(f"acquirectl: {info.message}", file=sys.stderr)
        if info.hint:
            print(f"  hint: {info.hint}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())

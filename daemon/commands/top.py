"""``acquirectl top``: the live status screen.

Redraws ``render_status`` about twice a second from the control socket. When the daemon
does not answer (restart, stop) it says so, keeps the last picture, and reconnects by
itself. A terminal resize is picked up at the next redraw. On a non-terminal (a pipe, a
file) it prints one snapshot and exits. Ctrl-C quits.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from acquired.daemon.errors import describe
from acquired.daemon.tui import StatusView, render_status, render_unreachable

DEFAULT_INTERVAL = 0.5
#: How long one status request may take before it counts as "not reachable".
REQUEST_TIMEOUT = 5.0

Fetch = Callable[[], dict[str, Any]]


def status_fetcher(socket: Path, timeout: float = REQUEST_TIMEOUT) -> Fetch:
    """A function that asks the daemon at ``socket`` for its status snapshot."""
    from acquired.daemon.control import request

    def fetch() -> dict[str, Any]:
        result: dict[str, Any] = request(socket, {"cmd": "status"}, timeout=timeout)
        return result

    return fetch


def run_live(
    console: Console,
    fetch: Fetch,
    socket: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    screen: bool = True,
    stop: Callable[[], bool] = lambda: False,
    all_jobs: bool = False,
) -> None:
    """Redraw until ``stop()`` (or Ctrl-C, which the caller handles)."""
    last: dict[str, Any] | None = None
    down_since: float | None = None
    footer = Text("Ctrl-C to quit", style="dim")
    with Live(
        console=console,
        screen=screen,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
        transient=False,
    ) as live:
        while not stop():
            started = time.monotonic()
            try:
                last = fetch()
                down_since = None
                view: Any = StatusView(last, notice=None, all_jobs=all_jobs)
            except Exception as exc:
                # any failure to get a snapshot (refused, gone, timed out, garbled) means
                # "not reachable"; the loop keeps trying
                if down_since is None:
                    down_since = time.time()
                view = render_unreachable(socket, describe(exc).message, down_since, last)
            live.update(Group(view, footer), refresh=True)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


def cmd_top(args: argparse.Namespace) -> int:
    """Live status screen; one snapshot on a non-terminal."""
    from acquired.daemon.cli import socket_path

    socket = socket_path(args)
    console = Console()
    fetch = status_fetcher(socket)
    if not console.is_terminal or args.once:
        console.print(render_status(fetch(), all_jobs=args.all))
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        run_live(
            console,
            fetch,
            str(socket),
            interval=args.interval,
            screen=not args.no_screen,
            all_jobs=args.all,
        )
    return 0


def register(subparsers: Any) -> None:
    """Add ``top`` to acquirectl's parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "top",
        help="live status screen (active files, speed, ETA, disk, events)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help=f"seconds between redraws (default {DEFAULT_INTERVAL})",
    )
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--all", action="store_true", help="every job (default: active and recent)")
    p.add_argument(
        "--no-screen",
        action="store_true",
        help="draw in the normal screen instead of the alternate one",
    )
    p.set_defaults(func=cmd_top)

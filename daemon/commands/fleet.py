"""``acquirectl nodes [--json]``: the daemons of the fleet this one belongs to (name,
alive, age of its last report, shards held, samples/s), as this node last read them from
Redis; and the fleet's lines in ``status``/``top``. The daemon answers from its cached
snapshot, so this works (and says so) while Redis is unreachable."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from acquired.daemon.fleet_tui import fleet_line, nodes_table


def cmd_nodes(args: argparse.Namespace) -> int:
    """List the fleet's nodes."""
    from acquired.daemon.cli import call, print_json

    fleet = call(args, {"cmd": "nodes"})
    if args.json:
        print_json(fleet)
        return 0
    console = Console()
    console.print(fleet_line(fleet))
    if fleet.get("nodes"):
        console.print(nodes_table(fleet))
    else:
        console.print("no node seen yet")
    return 0


def register(subparsers: Any) -> None:
    """Add ``nodes``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "nodes",
        help="the fleet's daemons: alive, last report, shards held, samples/s",
        description=__doc__,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_nodes)

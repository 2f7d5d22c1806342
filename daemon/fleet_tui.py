"""The fleet in ``acquirectl status``, ``top`` and ``nodes``: one line (this node, the
nodes alive, the fleet's rate, Redis and the age of the figures) and the nodes' table."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def fleet_line(fleet: Mapping[str, Any]) -> Text:
    """One line: this node, the nodes alive, the fleet's rate, Redis and the data's age
    (pure)."""
    nodes = fleet.get("nodes") or []
    alive = [n["node"] for n in nodes if n.get("alive")]
    parts = [
        f"fleet: node {fleet.get('node')}",
        f"{len(alive)} node(s) alive" + (f" ({', '.join(alive)})" if alive else ""),
        f"{float(fleet.get('samples_per_s') or 0):.0f} samples/s together",
    ]
    style = ""
    if fleet.get("redis") == "unreachable":
        since = fleet.get("down_since")
        stamp = time.strftime("%H:%M:%S", time.localtime(since)) if since else "?"
        parts.append(
            f"redis unreachable since {stamp}: {fleet.get('error')}"
            f" (figures from {_age(fleet.get('age'))} ago)"
        )
        style = "bold yellow"
    elif fleet.get("redis") == "ok":
        parts.append(f"redis ok (read {_age(fleet.get('age'))} ago)")
    else:
        parts.append("redis not read yet")
    return Text(" · ".join(parts), style=style)


def nodes_table(fleet: Mapping[str, Any]) -> Table:
    """The nodes, one row each (pure)."""
    table = Table(box=None, pad_edge=False, padding=(0, 2))
    for name, justify in (
        ("node", "left"),
        ("alive", "left"),
        ("last report", "right"),
        ("shards held", "right"),
        ("samples/s", "right"),
        ("MB/s", "right"),
        ("jobs", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for n in fleet.get("nodes") or []:
        table.add_row(
            str(n["node"]),
            "yes" if n.get("alive") else "no",
            f"{_age(n.get('age'))} ago" if n.get("age") is not None else "-",
            str(n.get("shards_held", 0)),
            f"{float(n.get('samples_per_s') or 0):.0f}",
            f"{float(n.get('bytes_per_s') or 0) / 1e6:.1f}",
            ", ".join(sorted(n.get("jobs") or {})) or "-",
        )
    return table

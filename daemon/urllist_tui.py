"""The URL-list jobs' table in ``acquirectl status`` and ``top``: samples done/total,
samples/s, MB/s, success rate, shards (done/in progress/total), duplicates, filtered,
ETA and failures by class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from acquired.daemon.units import format_duration


def _count(n: Any) -> str:
    return f"{int(n or 0):,}"


def nodes_cell(nodes: Sequence[Mapping[str, Any]]) -> str:
    """``a 120/s (2 held) · b 80/s (1 held)``: a clustered job's nodes (pure)."""
    return " · ".join(
        f"{n['node']} {float(n.get('samples_per_s') or 0):.0f}/s ({n.get('shards_held', 0)} held)"
        for n in nodes
    )


def urllist_table(jobs: Sequence[Mapping[str, Any]]) -> Table | None:
    """One row per URL-list job, or None when there is none (pure)."""
    rows = [j for j in jobs if j.get("urllist")]
    if not rows:
        return None
    table = Table(box=None, expand=True, pad_edge=False, show_edge=False, padding=(0, 1))
    for name, justify in (
        ("job", "left"),
        ("samples", "right"),
        ("/s", "right"),
        ("MB/s", "right"),
        ("ok", "right"),
        ("shards", "right"),
        ("dup", "right"),
        ("filt", "right"),
        ("ETA", "right"),
        ("failures", "left"),
    ):
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            min_width=len(name),
            ratio=3 if name == "failures" else None,
        )
    for job in rows:
        f = job["urllist"]
        total = f.get("samples_total")
        rate = f.get("success_rate")
        failures = f.get("failures") or {}
        worst = sorted(failures.items(), key=lambda kv: -kv[1])[:4]
        table.add_row(
            str(job.get("id")),
            f"{_count(f.get('samples_done'))}/{_count(total) if total is not None else '?'}",
            f"{float(f.get('samples_per_s') or 0):.0f}",
            f"{float(f.get('bytes_per_s') or 0) / 1e6:.1f}",
            f"{100 * rate:.1f}%" if rate is not None else "-",
            "/".join(
                str(f.get(k, 0)) for k in ("shards_done", "shards_in_progress", "shards_total")
            ),
            _count(f.get("duplicates")),
            _count(f.get("filtered")),
            format_duration(f.get("eta")),
            ", ".join(f"{k} {v}" for k, v in worst) or "-",
        )
        if f.get("nodes"):
            table.add_row("", *[""] * 8, "nodes: " + nodes_cell(f["nodes"]))
    return table

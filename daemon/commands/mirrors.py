"""``acquirectl mirrors URL...`` and ``acquirectl pip-mirror``: rank mirrors by measuring
them from this machine. These commands talk to the network directly, not to the daemon.

``mirrors`` reads the first MiB of each URL with a range request and ranks the mirrors
by the time to fetch the file (latency plus size over throughput; the size the mirrors
state, or ``--size`` bytes). A mirror whose size or version differs from the others is
listed last with a note (ETags are compared when both servers send one, else
Last-Modified dates); a mirror without Range support gets a warning.

``pip-mirror`` ranks the index pip uses now (from PIP_INDEX_URL, pip's configuration or
pip's built-in default) and a list of public PyPI mirrors (the shipped defaults,
$ACQUIRED_PIP_MIRRORS, --mirrors-file, --mirror) by the latency of a simple-index page
and the throughput of a wheel download. ``--write user|global|PATH`` makes the fastest
one pip's index-url (trusted-host only for plain http).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from acquired.sources.http.pip_mirrors import (
    DEFAULT_PROJECT,
    IndexResult,
    Ranking,
    current_index,
    mirror_list,
    pip_command,
    rank_pip_indexes,
    write_pip_config,
)
from acquired.sources.http.probe import probe_all
from acquired.sources.http.ranking import Ranked, known_size, rank

DEFAULT_SIZE = 1 << 30


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if value < 1024 or unit == "GiB/s":
            return f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "∞"
    return f"{value:.1f} s"


# -- mirrors ---------------------------------------------------------------------------------
NO_RANGES = "no Range support: the daemon fetches from it over one connection only"


def _size(value: int) -> str:
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def _notes(r: Ranked) -> str:
    notes = [r.note] if r.note else []
    if r.sample.reachable and r.sample.ranges is False:
        notes.append(NO_RANGES)
    return "; ".join(notes)


def mirrors_table(ranked: list[Ranked], size: int, *, size_known: bool = False) -> Table:
    """The ranking as a rich table (pure: tests render it)."""
    what = "the file" if size_known else "a file"
    table = Table(title=f"Mirrors ranked by estimated time for {what} of {_size(size)}")
    for name in ("#", "mirror", "latency", "throughput", "estimate", "size", "note"):
        table.add_column(name, overflow="fold")
    for r in ranked:
        s = r.sample
        table.add_row(
            str(r.rank),
            s.url,
            _ms(s.latency),
            _rate(s.throughput),
            _seconds(r.seconds) if s.reachable else "unreachable",
            "-" if s.size is None else str(s.size),
            _notes(r),
        )
    return table


def range_warnings(ranked: list[Ranked]) -> list[str]:
    """One line per reachable mirror that answered a range request with the whole file."""
    return [
        f"warning: {r.sample.url} has {NO_RANGES}"
        for r in ranked
        if r.sample.reachable and r.sample.ranges is False
    ]


def ranked_as_json(ranked: list[Ranked]) -> list[dict[str, Any]]:
    """The ranking as JSON-able rows."""
    return [
        {
            "rank": r.rank,
            "url": r.sample.url,
            "reachable": r.sample.reachable,
            "latency": r.sample.latency,
            "throughput": r.sample.throughput,
            "estimate": r.seconds,
            "size": r.sample.size,
            "validator": r.sample.validator,
            "etag": r.sample.etag,
            "last_modified": r.sample.last_modified,
            "ranges": r.sample.ranges,
            "note": r.note,
            "warning": NO_RANGES if r.sample.reachable and r.sample.ranges is False else None,
            "error": r.sample.error,
        }
        for r in ranked
    ]


def cmd_mirrors(args: argparse.Namespace) -> int:
    """Probe the mirrors, rank them by the estimate for the file's size, print."""
    samples = probe_all(args.urls, sample_bytes=args.sample, timeout=args.timeout)
    known = known_size(samples)
    size = args.size if args.size is not None else (known if known is not None else DEFAULT_SIZE)
    ranked = rank(samples, size=size)
    if args.json:
        print(json.dumps(ranked_as_json(ranked), indent=2))
    else:
        console = Console()
        stated = args.size is None and known is not None
        console.print(mirrors_table(ranked, size, size_known=stated))
        for line in range_warnings(ranked):
            console.print(line)
    return 0 if any(r.sample.reachable for r in ranked) else 1


# -- pip-mirror ------------------------------------------------------------------------------
def pip_table(ranking: Ranking) -> Table:
    """The pip index ranking as a rich table (pure: tests render it)."""
    table = Table(title=f"Package indexes (page latency of '{ranking.project}', wheel throughput)")
    for name in ("#", "index", "page latency", "wheel throughput", "estimate", "note"):
        table.add_column(name, overflow="fold")
    for r in ranking.results:
        note = []
        if r.current:
            note.append(f"current ({r.source})")
        if r.error:
            note.append(f"unreachable: {r.error}")
        table.add_row(
            str(r.rank),
            r.url,
            _ms(r.latency),
            _rate(r.throughput),
            _seconds(r.seconds),
            "; ".join(note),
        )
    return table


def _best(ranking: Ranking) -> IndexResult | None:
    return ranking.best


def cmd_pip_mirror(args: argparse.Namespace) -> int:
    """Rank the package indexes; optionally write the fastest into pip's configuration."""
    pip = pip_command(args.pip)
    candidates = mirror_list(
        args.mirror or (),
        mirrors_file=Path(args.mirrors_file) if args.mirrors_file else None,
        defaults=not args.no_defaults,
    )
    ranking = rank_pip_indexes(
        candidates,
        current=current_index(pip),
        project=args.project,
        timeout=args.timeout,
    )
    best = _best(ranking)
    written: Path | None = None
    if args.write and best is not None:
        written = write_pip_config(args.write, best.url, pip)
    if args.json:
        print(
            json.dumps(
                {
                    "current": ranking.current,
                    "current_source": ranking.current_source,
                    "best": best.url if best else None,
                    "written": str(written) if written else None,
                    "notes": ranking.notes,
                    "indexes": [r.as_dict() for r in ranking.results],
                },
                indent=2,
            )
        )
    else:
        console = Console()
        console.print(pip_table(ranking))
        for note in ranking.notes:
            console.print(f"note: {note}")
        if best is None:
            console.print("No index answered.")
        elif written is not None:
            console.print(f"Wrote index-url = {best.url} to {written}")
        elif best.current:
            console.print("pip already uses the fastest index.")
        else:
            console.print(
                f"Fastest: {best.url}  (pip-mirror --write user  makes it pip's index-url)"
            )
    if best is None:
        print("acquirectl: no package index answered", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``mirrors`` and ``pip-mirror`` to acquirectl's parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "mirrors",
        help="rank mirrors of a file by latency and throughput (measured from here)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("urls", nargs="+", metavar="URL", help="the same file on several mirrors")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")
    p.add_argument(
        "--sample", type=int, default=1 << 20, help="bytes read from each mirror (default 1 MiB)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="rank by the time to fetch this many bytes (default: the size the mirrors "
        "state, else 1 GiB)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per mirror")
    p.set_defaults(func=cmd_mirrors)

    q: argparse.ArgumentParser = subparsers.add_parser(
        "pip-mirror",
        help="rank PyPI indexes (the current one and public mirrors); optionally configure pip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument(
        "--mirror", action="append", metavar="URL", help="another index to compare (repeatable)"
    )
    q.add_argument("--mirrors-file", metavar="FILE", help="indexes to compare, one per line")
    q.add_argument(
        "--no-defaults", action="store_true", help="do not compare the shipped public mirrors"
    )
    q.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        help=f"project whose page and wheel are measured (default {DEFAULT_PROJECT})",
    )
    q.add_argument(
        "--write",
        metavar="user|global|PATH",
        help="write the fastest index to pip's user or global configuration, or to PATH",
    )
    q.add_argument("--pip", help="the pip to ask and configure (default: pip on PATH)")
    q.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    q.add_argument("--json", action="store_true", help="print the ranking as JSON")
    q.set_defaults(func=cmd_pip_mirror)

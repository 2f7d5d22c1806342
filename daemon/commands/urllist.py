"""``acquirectl failures JOB [--class X,Y] [--export FILE.parquet]`` and
``acquirectl retry JOB --failed [--class timeout,http_5xx]``: a URL-list job's failure
queue; and the URL-list figures added to ``acquirectl show JOB``.

``failures`` lists the failed samples the daemon keeps (one row per sample: input row,
URL, class, message, HTTP status, attempts, the shard that last tried it), or writes them
all to a parquet file, fetched from the daemon a page at a time. ``retry --failed``
re-feeds only those samples as new retry shards (the temporary classes — timeout, dns,
connect, http_5xx, http_429 — unless ``--class`` says which); samples already done are
never fetched again. ``--failed`` is added to the ``retry`` command that exists already.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from acquired.daemon.manifest import redact_url
from acquired.daemon.urllist_tui import nodes_cell

COLUMNS = ("row", "url", "class", "message", "http_status", "attempts", "shard")


def _classes(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [c.strip() for c in text.split(",") if c.strip()]


def pages(
    call: Callable[[dict[str, Any]], Any], job: str, classes: list[str] | None
) -> Iterator[list[dict[str, Any]]]:
    """The job's failures, a page at a time."""
    offset = 0
    while True:
        result = call({"cmd": "failures", "job": job, "classes": classes, "offset": offset})
        page = result["failures"]
        if not page:
            return
        yield page
        offset += len(page)


def export(path: Path, batches: Iterator[list[dict[str, Any]]]) -> int:
    """Write the failures to ``path`` (parquet) batch by batch; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("row", pa.int64()),
            ("url", pa.string()),
            ("class", pa.string()),
            ("message", pa.string()),
            ("http_status", pa.int32()),
            ("attempts", pa.int32()),
            ("shard", pa.int64()),
        ]
    )
    n = 0
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    tmp.replace(path)
    return n


def render(failures: list[dict[str, Any]], limit: int = 50) -> str:
    """Counts by class, then the first ``limit`` failures (pure)."""
    by_class = Counter(f["class"] for f in failures)
    lines = [
        f"{len(failures)} failed sample(s): "
        + ", ".join(f"{k} {v}" for k, v in by_class.most_common())
    ]
    for f in failures[:limit]:
        status = f" HTTP {f['http_status']}" if f.get("http_status") else ""
        lines.append(
            f"  row {f['row']:>9}  {f['class']:<15}{status}  {redact_url(f['url'])}  {f['message']}"
        )
    if len(failures) > limit:
        lines.append(f"  ... {len(failures) - limit} more (--export FILE.parquet writes them all)")
    return "\n".join(lines)


def render_figures(fig: dict[str, Any]) -> str:
    """A URL-list job's figures as `show` prints them (pure)."""
    total = fig.get("samples_total")
    rate = fig.get("success_rate")
    eta = fig.get("eta")
    lines = [
        f"samples: {fig.get('samples_done', 0):,}/{total:,}"
        if total is not None
        else f"samples: {fig.get('samples_done', 0):,}/?",
        f"  ok {fig.get('samples_ok', 0):,}"
        + (f" ({100 * rate:.1f}%)" if rate is not None else "")
        + f" · duplicates {fig.get('duplicates', 0):,} · filtered {fig.get('filtered', 0):,}",
        f"  {float(fig.get('samples_per_s') or 0):.0f} samples/s ·"
        f" {float(fig.get('bytes_per_s') or 0) / 1e6:.1f} MB/s"
        + (f" · ETA {eta:.0f} s" if eta is not None else ""),
        f"shards: {fig.get('shards_done', 0)} done · {fig.get('shards_in_progress', 0)} in"
        f" progress · {fig.get('shards_dead', 0)} dead · {fig.get('shards_total', 0)} in all",
    ]
    failures = fig.get("failures") or {}
    if failures:
        ranked = sorted(failures.items(), key=lambda kv: -kv[1])
        lines.append("failures: " + ", ".join(f"{k} {v:,}" for k, v in ranked))
    if fig.get("nodes"):
        age = fig.get("fleet_age")
        lines.append(
            "nodes: "
            + nodes_cell(fig["nodes"])
            + (f" (fleet figures read {age:.0f} s ago)" if age is not None else "")
        )
    for dead in fig.get("dead") or []:
        lines.append(f"  dead shard {dead['shard']} after {dead['deliveries']}: {dead['error']}")
    return "\n".join(lines)


def cmd_failures(args: argparse.Namespace) -> int:
    """List or export a URL-list job's failed samples."""
    from acquired.daemon.cli import call

    classes = _classes(args.cls)
    batches = pages(lambda payload: call(args, payload), args.job, classes)
    if args.export:
        n = export(Path(args.export), batches)
        print(f"{args.job}: {n} failed sample(s) written to {args.export}")
        return 0
    failures = [f for page in batches for f in page]
    print(render(failures))
    return 0


def register(subparsers: Any) -> None:
    """Add ``failures``, and ``--failed``/``--class`` to the existing ``retry``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "failures",
        help="a URL-list job's failed samples: list, or --export FILE.parquet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job")
    p.add_argument("--class", dest="cls", metavar="X[,Y]", help="only these failure classes")
    p.add_argument("--export", metavar="FILE.parquet", help="write every failure to a parquet file")
    p.set_defaults(func=cmd_failures)

    show: argparse.ArgumentParser | None = subparsers.choices.get("show")
    if show is not None:
        plain_show = show.get_default("func")

        def cmd_show(args: argparse.Namespace) -> int:
            code = int(plain_show(args))
            if not getattr(args, "json", False):
                from acquired.daemon.cli import call

                fig = call(args, {"cmd": "show", "job": args.job}).get("urllist")
                if fig:
                    print(render_figures(fig))
            return code

        show.set_defaults(func=cmd_show)

    retry: argparse.ArgumentParser | None = subparsers.choices.get("retry")
    if retry is None:
        return
    plain = retry.get_default("func")
    retry.add_argument(
        "--failed", action="store_true", help="URL-list job: re-feed its failed samples"
    )
    retry.add_argument(
        "--class",
        dest="cls",
        metavar="X[,Y]",
        help="with --failed: only these classes (default: timeout,dns,connect,http_5xx,http_429)",
    )

    def cmd_retry(args: argparse.Namespace) -> int:
        if not args.failed:
            return int(plain(args))
        from acquired.daemon.cli import call

        payload = {"cmd": "retry-failed", "job": args.job, "classes": _classes(args.cls)}
        result = call(args, payload)
        print(
            f"{result['job']}: {result['samples']} failed sample(s) queued again"
            f" in {result['shards']} retry shard(s)"
        )
        return 0

    retry.set_defaults(func=cmd_retry)

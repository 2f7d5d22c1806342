"""The operator's view: the status snapshot (docs/architecture.md) as rich renderables.

Pure functions of the snapshot: nothing here talks to the daemon. ``acquirectl status``
prints ``render_status(snapshot)`` once; ``acquirectl top`` redraws it twice a second.
The layout adapts to the width it is given (resizing a terminal re-renders it)::

    acquired 0.1.0 · pid 812 · up 1h02m · data /srv/acquired/data
    2 active · 3.1 MB/s · 1 queued · 12 done · 1 failed
    disk 91.2 GB free (reserve 1.1 GB) · DHT 312 nodes
    transfers ──────────────────────────────────────────────────────────────────────
    file                   progress        %          bytes     speed    ETA  source
    cifar10/cifar-10-py…   ━━━━━╸        41%  70.0/170.5 MB  1.5 MB/s  1m07s  http 2…
    ...
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.progress_bar import ProgressBar
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from acquired.common.redact import redact_value
from acquired.daemon.fleet_tui import fleet_line
from acquired.daemon.units import format_bytes, format_duration, format_rate
from acquired.daemon.urllist_tui import urllist_table

#: Recent events shown under the transfers, and job rows shown at most.
MAX_EVENTS = 8
MAX_JOBS = 12
#: Below this many times the reserve, free space is shown as a warning.
DISK_WARN_FACTOR = 2
#: Narrower than this, the transfers table has no progress bar column.
NARROW = 80

_LEVEL_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "red"}
_STATE_STYLES = {
    "done": "green",
    "failed": "red",
    "paused": "yellow",
    "cancelled": "dim",
    "queued": "cyan",
}


def _bytes_pair(done: float | None, total: float | None) -> str:
    if not total:
        return format_bytes(done)
    # one unit for both, chosen by the total: "70.0/170.5 MB"
    value, unit = format_bytes(total).split(" ")
    scale = float(total) / float(value) if float(value) else 1.0
    done_text = f"{(done or 0) / scale:.1f}" if unit != "B" else f"{int(done or 0)}"
    return f"{done_text}/{value} {unit}"


def _percent(done: float | None, total: float | None) -> str:
    if not total:
        return ""
    return f"{min(100.0, 100.0 * float(done or 0) / float(total)):.0f}%"


def header(snapshot: Mapping[str, Any]) -> Text:
    """``acquired 0.1.0 · pid 812 · up 1h02m · data /srv/acquired/data``."""
    d = snapshot.get("daemon") or {}
    text = Text()
    text.append(f"acquired {d.get('version', '?')}", style="bold")
    text.append(f" · pid {d.get('pid', '?')} · up {format_duration(d.get('uptime'))}")
    if d.get("data_root"):
        text.append(f" · data {d['data_root']}")
    return text


JOB_GROUPS = ("active", "queued", "failed", "paused", "done", "cancelled")
_GROUP_OF = {
    "fetching": "active",
    "verifying": "active",
    "unpacking": "active",
    "finishing": "active",
    "queued": "queued",
    "failed": "failed",
    "paused": "paused",
    "done": "done",
    "cancelled": "cancelled",
    "empty": "done",
}
_GROUP_STYLES = {**_STATE_STYLES, "active": "bold"}


def job_group(state: object) -> str:
    """Which of ``JOB_GROUPS`` a job state belongs to."""
    return _GROUP_OF.get(str(state), "active")


def job_counts(jobs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many jobs are in each group (groups without jobs left out)."""
    counts: dict[str, int] = {}
    for job in jobs:
        group = job_group(job.get("state"))
        counts[group] = counts.get(group, 0) + 1
    return {g: counts[g] for g in JOB_GROUPS if g in counts}


def summary(snapshot: Mapping[str, Any]) -> Text:
    """``jobs 3: 1 active · 1 failed · 1 done`` and, below,
    ``files: 2 active · 3.1 MB/s · 12 done · 0 failed``.

    Jobs and files are counted apart, each saying what it counts.
    """
    counts = snapshot.get("counts") or {}
    active = snapshot.get("active") or []
    jobs = snapshot.get("jobs") or []
    speed = sum(float(a.get("speed") or 0) for a in active)
    text = Text()
    text.append(f"jobs {len(jobs)}", style="bold")
    by_group = job_counts(jobs)
    if by_group:
        text.append(": ")
        text.append_text(
            Text(" · ").join(
                Text(f"{n} {g}", style=_GROUP_STYLES.get(g, "")) for g, n in by_group.items()
            )
        )
    text.append("\nfiles: ", style="bold")
    text.append(f"{int(counts.get('active', len(active)) or 0)} active")
    text.append(f" · {format_rate(speed)}")
    for key in ("queued", "paused"):
        if counts.get(key):
            text.append(f" · {int(counts[key])} {key}", style=_STATE_STYLES[key])
    text.append(f" · {int(counts.get('done') or 0)} done", style="green")
    failed = int(counts.get("failed") or 0)
    text.append(f" · {failed} failed", style="bold red" if failed else "")
    return text


def resources(snapshot: Mapping[str, Any]) -> Text | None:
    """``disk 91.2 GB free (reserve 1.1 GB) · DHT 312 nodes``; None when neither is known.

    Free space at or under the reserve reads ``FULL`` (downloads wait), under twice the
    reserve ``LOW``: words, so the warning survives without colour.
    """
    d = snapshot.get("daemon") or {}
    parts: list[Text] = []
    free, reserve = d.get("disk_free"), d.get("disk_reserve")
    if free is not None:
        disk = f"disk {format_bytes(free)} free"
        if reserve:
            disk += f" (reserve {format_bytes(reserve)})"
        style = ""
        if reserve and free <= reserve:
            disk += " FULL: downloads wait for space"
            style = "bold red"
        elif reserve and free < DISK_WARN_FACTOR * reserve:
            disk += " LOW"
            style = "yellow"
        parts.append(Text(disk, style=style))
    if d.get("dht_nodes") is not None:
        parts.append(Text(f"DHT {int(d['dht_nodes'])} nodes"))
    if not parts:
        return None
    return Text(" · ").join(parts)


def _source_cell(item: Mapping[str, Any]) -> Text:
    state = str(item.get("state") or "")
    parts = []
    if state and state != "fetching":
        parts.append(state + (f" {item['step']}" if item.get("step") else ""))
    if item.get("source"):
        parts.append(str(item["source"]))
    if item.get("detail"):
        parts.append(str(item["detail"]))
    return Text(" · ".join(parts))


def transfers_table(active: Sequence[Mapping[str, Any]], width: int) -> Table:
    """One row per active file: name, bar, %, bytes, speed, ETA, source.

    Below ``NARROW`` columns the bar is left out (the percentage stays), so names and
    sources keep some room.
    """
    with_bar = width >= NARROW
    bar_width = max(8, min(30, width // 6))
    table = Table(box=None, expand=True, pad_edge=False, show_edge=False, padding=(0, 1))
    table.add_column("file", ratio=3, no_wrap=True, overflow="ellipsis", min_width=12)
    if with_bar:
        table.add_column("progress", width=bar_width, no_wrap=True)
    table.add_column("%", justify="right", width=4, no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("speed", justify="right", no_wrap=True)
    table.add_column("ETA", justify="right", no_wrap=True)
    table.add_column("source", ratio=2, no_wrap=True, overflow="ellipsis", min_width=8)
    for item in active:
        total = item.get("bytes_total")
        done = item.get("bytes_done") or 0
        speed = item.get("speed")
        cells: list[RenderableType] = [f"{item.get('job', '?')}/{item.get('file', '?')}"]
        if with_bar:
            # no bar when the size is unknown: a pulsing bar reads as "complete" in a log
            cells.append(
                ProgressBar(total=float(total), completed=float(done), width=bar_width)
                if total
                else Text("")
            )
        cells += [
            _percent(done, total),
            _bytes_pair(done, total),
            format_rate(speed) if speed else "-",
            format_duration(item.get("eta")),
            _source_cell(item),
        ]
        table.add_row(*cells)
    return table


def rank_jobs(
    jobs: Sequence[Mapping[str, Any]], limit: int | None = MAX_JOBS
) -> tuple[list[Mapping[str, Any]], int]:
    """The jobs to list, in order, and how many finished ones were left out.

    Jobs that are moving come first, then queued, failed and paused ones, then finished
    ones; within each group the newest first (the snapshot lists jobs oldest first).
    Every job that is not finished is listed; finished ones fill up to ``limit`` rows
    (None: all of them).
    """
    order = {g: i for i, g in enumerate(JOB_GROUPS)}
    newest_first = list(reversed(jobs))
    ranked = sorted(newest_first, key=lambda j: order[job_group(j.get("state"))])
    if limit is None:
        return ranked, 0
    unfinished = [j for j in ranked if job_group(j.get("state")) not in ("done", "cancelled")]
    finished = ranked[len(unfinished) :]
    room = max(0, limit - len(unfinished))
    return unfinished + finished[:room], max(0, len(finished) - room)


def jobs_table(
    jobs: Sequence[Mapping[str, Any]], width: int = 100, limit: int | None = MAX_JOBS
) -> Table:
    """Jobs in the order of :func:`rank_jobs`; speed and ETA only where the width leaves
    the job's name room."""
    ranked, hidden = rank_jobs(jobs, limit)
    table = Table(box=None, expand=True, pad_edge=False, show_edge=False, padding=(0, 1))
    table.add_column("job", ratio=2, no_wrap=True, overflow="ellipsis", min_width=8)
    table.add_column("state", no_wrap=True)
    table.add_column("files", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    timing = width >= NARROW
    if timing:
        table.add_column("speed", justify="right", no_wrap=True)
        table.add_column("ETA", justify="right", no_wrap=True)
    table.add_column("source / note", ratio=3, no_wrap=True, overflow="ellipsis")
    for job in ranked:
        state = str(job.get("state") or "?")
        speed = job.get("speed")
        cells: list[RenderableType] = [
            str(job.get("id", "?")),
            Text(state, style=_STATE_STYLES.get(state, "")),
            f"{job.get('files_done', 0)}/{job.get('files_total', 0)}",
            _bytes_pair(job.get("bytes_done"), job.get("bytes_total")),
        ]
        if timing:
            cells += [format_rate(speed) if speed else "-", format_duration(job.get("eta"))]
        cells.append(str(job.get("reason") or job.get("source") or ""))
        table.add_row(*cells)
    if hidden:
        table.add_row(f"… {hidden} more (--all)", *[""] * (len(table.columns) - 1))
    return table


def events_lines(events: Sequence[Mapping[str, Any]], limit: int = MAX_EVENTS) -> Group:
    """The last ``limit`` events, oldest first: ``12:00:01 warning cifar10  message``."""
    lines = []
    for event in list(events)[-limit:]:
        level = str(event.get("level") or "info")
        stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("ts") or 0)))
        where = "/".join(str(event[k]) for k in ("job", "file") if event.get(k))
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"{stamp} ", style="dim")
        line.append(f"{level:<7} ", style=_LEVEL_STYLES.get(level, ""))
        if where:
            line.append(f"{where}  ", style="bold")
        line.append(str(event.get("message") or ""))
        lines.append(line)
    return Group(*lines)


def seeding_lines(seeding: Sequence[Mapping[str, Any]]) -> Group:
    """Finished torrents still seeding: ratio, peers and upload rate of each."""
    return Group(
        *(
            Text(
                f"{item.get('job', '?')}  ratio {float(item.get('ratio') or 0):.2f}"
                f" · {int(item.get('peers') or 0)} peers · up {format_rate(item.get('upload'))}",
                no_wrap=True,
                overflow="ellipsis",
            )
            for item in seeding
        )
    )


class StatusView:
    """The whole status screen; lays itself out for the width it is rendered at."""

    def __init__(
        self, snapshot: Mapping[str, Any], notice: Text | None = None, all_jobs: bool = False
    ) -> None:
        # the daemon redacts its replies; this also covers one configured differently
        self.snapshot: Mapping[str, Any] = redact_value(dict(snapshot))
        self.notice = notice
        self.all_jobs = all_jobs

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        snap = self.snapshot
        width = options.max_width
        if self.notice is not None:
            yield self.notice
        yield header(snap)
        yield summary(snap)
        extra = resources(snap)
        if extra is not None:
            yield extra
        if snap.get("fleet"):
            yield fleet_line(snap["fleet"])
        active = snap.get("active") or []
        yield Rule("transfers", style="dim", align="left")
        if active:
            yield transfers_table(active, width)
        else:
            yield Text("no active transfers", style="dim")
        seeding = snap.get("seeding") or []
        if seeding:
            yield Rule("seeding", style="dim", align="left")
            yield seeding_lines(seeding)
        jobs = snap.get("jobs") or []
        if jobs:
            yield Rule("jobs", style="dim", align="left")
            yield jobs_table(jobs, width, limit=None if self.all_jobs else MAX_JOBS)
            if (lists := urllist_table(jobs)) is not None:
                yield Rule("URL lists", style="dim", align="left")
                yield lists
        events = snap.get("events") or []
        if events:
            yield Rule("recent events", style="dim", align="left")
            yield events_lines(events)


def render_status(snapshot: Mapping[str, Any], *, all_jobs: bool = False) -> RenderableType:
    """The status snapshot as one renderable (``acquirectl status`` and ``top``);
    ``all_jobs`` lists every job instead of the unfinished and the recent ones."""
    return StatusView(snapshot, all_jobs=all_jobs)


def render_unreachable(
    socket: str, error: str, since: float, last: Mapping[str, Any] | None = None
) -> RenderableType:
    """What ``top`` shows while the daemon does not answer: the reason, and the last
    snapshot it got (stale) so the screen does not go blank during a restart."""
    stamp = time.strftime("%H:%M:%S", time.localtime(since))
    notice = Text(
        f"daemon not reachable at {socket} since {stamp}, retrying: {error}",
        style="bold yellow",
    )
    if last is None:
        return notice
    return StatusView(last, notice=notice)

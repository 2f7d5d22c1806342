"""Planning a URL-list job: the manifest's ``[urllist]`` turned into the plain settings
the worker processes take, the input located under the destination, and the input cut
into shards by one streaming pass (run off the state thread).

The plan is also written to ``<state>/urllist/<job>.plan.json`` (the byte offset of every
normal shard's first row), so that a retry shard of a text input can seek to the shard
holding its first row instead of reading the input from the start.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from acquired.daemon.errors import DaemonError
from acquired.daemon.manifest import resolve_under
from acquired.daemon.manifest_urllist import UrllistSpec
from acquired.daemon.workqueue import ClusterUnreachable, QueueJob, ShardSpec, WorkQueue
from acquired.sources.urllist import readers
from acquired.sources.urllist.readers import ShardSlice
from acquired.sources.urllist.settings import (
    DedupeSettings,
    FetchSettings,
    FilterSettings,
    InputSettings,
    OutputSettings,
    ResizeSettings,
    UrlListSettings,
)

# Shards published per call to the queue: each call is one short transaction.
PUBLISH_SLICE = 1000


class InputMissing(DaemonError):
    """The URL list a job names is not under its destination."""

    code = "urllist.input_missing"
    hint = (
        "Put the file at [urllist] input under the job's destination, or list it as a "
        "[[files]] entry so that the daemon fetches it first."
    )


@dataclass(frozen=True)
class Plan:
    """A job's shards and the byte offsets of their first rows (None for parquet)."""

    shards: list[ShardSpec]
    offsets: list[int | None]
    rows: int


def job_settings(spec: UrllistSpec, input_path: Path) -> tuple[InputSettings, UrlListSettings]:
    """The worker's plain settings from a validated ``[urllist]`` section."""
    inp = InputSettings(
        path=str(input_path),
        format=spec.input_format,
        url_column=spec.url_column,
        caption_column=spec.caption_column,
        keep_columns=tuple(spec.keep_columns),
        shard_size=spec.shard_size,
    )
    f = spec.filters
    resize = None
    if spec.resize is not None:
        r = spec.resize
        resize = ResizeSettings(mode=r.mode, size=r.size, format=r.format, quality=r.quality)
    d = spec.dedupe
    if d is None:
        dedupe = DedupeSettings(exact=False, perceptual=False)
    else:
        dedupe = DedupeSettings(
            exact=d.exact,
            perceptual=d.perceptual is not None,
            max_distance=d.perceptual.max_distance if d.perceptual is not None else 4,
            action=d.action,
        )
    settings = UrlListSettings(
        fetch=FetchSettings(
            timeout=spec.timeout,
            retries=spec.retries,
            per_host_connections=spec.per_host_connections,
            max_bytes=spec.max_bytes,
        ),
        filters=FilterSettings(
            min_side=f.min_side,
            max_aspect=f.max_aspect or 0.0,
            max_pixels=f.max_pixels,
            mime=tuple(f.mime),
        ),
        resize=resize,
        dedupe=dedupe,
        output=OutputSettings(format=spec.output),
    )
    return inp, settings


def locate_input(job_root: Path, spec: UrllistSpec, job: str) -> Path:
    """The input file under the job's destination (links out of it refused)."""
    path = resolve_under(job_root, spec.input, "urllist.input", job)
    if not path.is_file():
        raise InputMissing(f"{job}: the URL list {spec.input!r} is not at {path}", path=str(path))
    return path


def make_plan(job: str, path: Path, spec: UrllistSpec) -> Plan:
    """Check the input's columns and cut it into shards (one streaming pass for text,
    the metadata only for parquet). Blocking: run it off the state thread."""
    needed = [spec.url_column, *filter(None, [spec.caption_column]), *spec.keep_columns]
    readers.check_columns(path, spec.input_format, needed)
    slices = readers.plan_shards(path, spec.input_format, spec.shard_size)
    shards = [ShardSpec(job, s.shard_id, s.start, s.stop, s.offset) for s in slices]
    rows = slices[-1].stop if slices else 0
    return Plan(shards, [s.offset for s in slices], rows)


def save_offsets(folder: Path, job: str, plan: Plan) -> None:
    """Write the plan's offsets atomically (see the module's docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{job}.plan.json.tmp"
    tmp.write_text(json.dumps({"rows": plan.rows, "offsets": plan.offsets}))
    os.replace(tmp, folder / f"{job}.plan.json")


def load_offsets(folder: Path, job: str) -> list[int | None]:
    """The offsets saved by :func:`save_offsets` (empty if none)."""
    try:
        return list(json.loads((folder / f"{job}.plan.json").read_text())["offsets"])
    except (OSError, ValueError, KeyError):
        return []


def load_rows(folder: Path, job: str) -> int | None:
    """The input's row count saved with the plan (None before it is planned)."""
    try:
        return int(json.loads((folder / f"{job}.plan.json").read_text())["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shard_slice(shard: ShardSpec, shard_size: int, offsets: list[int | None]) -> ShardSlice:
    """The reader's slice for a queued shard. A retry shard reads from the start of the
    normal shard that holds its first row up to its last row (its ``rows`` pick)."""
    if shard.kind != "retry":
        return ShardSlice(shard.shard_id, shard.start_row, shard.stop_row, shard.byte_offset)
    home = shard.start_row // shard_size
    offset = offsets[home] if home < len(offsets) else None
    return ShardSlice(shard.shard_id, home * shard_size, shard.stop_row, offset)


def in_slices(shards: list[ShardSpec], size: int = PUBLISH_SLICE) -> list[list[ShardSpec]]:
    """The plan cut into the slices it is published in."""
    return [shards[i : i + size] for i in range(0, len(shards), size)] or [[]]


LOG = logging.getLogger("acquired.urllist")

# Seconds between two attempts to publish a plan while the fleet's Redis is away.
PUBLISH_RETRY_S = 2.0


def publish_plan(
    open_queue: Callable[[], WorkQueue],
    job: QueueJob,
    shards: list[ShardSpec],
    wanted: Callable[[], bool],
    pause: Callable[[float], None] = time.sleep,
) -> bool:
    """Publish ``shards`` in slices on a queue of their own; while Redis is unreachable,
    wait and publish again (publishing continues where the job's last slice ended, so
    nothing is published twice) for as long as ``wanted()``. False when given up."""
    waiting_since: float | None = None
    while wanted():
        try:
            queue = open_queue()
            try:
                slices = in_slices(shards)
                for i, piece in enumerate(slices):
                    queue.publish(job, piece, final=i == len(slices) - 1)
            finally:
                close = getattr(queue, "close", None)
                if close is not None:
                    close()
        except ClusterUnreachable as exc:
            if waiting_since is None:
                waiting_since = time.monotonic()
                LOG.warning(
                    "[%s] waiting for Redis to publish the shards: %s (%s)", job.name, exc, exc.code
                )
            pause(PUBLISH_RETRY_S)
            continue
        if waiting_since is not None:
            LOG.info(
                "[%s] shards published after %.0f s waiting for Redis",
                job.name,
                time.monotonic() - waiting_since,
            )
        return True
    return False

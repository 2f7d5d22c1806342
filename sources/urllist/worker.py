"""One shard from input slice to durable files: ``run_shard(task, on_progress)``.

It runs in a worker process (see ``pool``), single-threaded: rows stream from the reader
into the fetcher, each body is hashed and checked as it arrives (while the other transfers
go on in the kernel), and kept samples are decided about in batches by the job-wide
dedupe service before they are written. Every input row of the task ends in the shard's
parquet exactly once. Nothing here knows about the daemon: the task carries plain values,
the result is a plain dataclass, progress goes to a callback.
"""

from __future__ import annotations

import errno
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from acquired.sources.errors import DiskFull
from acquired.sources.urllist import outcome
from acquired.sources.urllist.dedupe import DedupeIndex, DedupeService
from acquired.sources.urllist.fetch import Fetcher, FetchItem, FetchResult
from acquired.sources.urllist.images import ImageResult, process_image
from acquired.sources.urllist.readers import Row, ShardSlice, read_rows
from acquired.sources.urllist.settings import InputSettings, UrlListSettings
from acquired.sources.urllist.shards import SampleRecord, ShardWriter, sample_key, shard_name

# Kept samples wait for their dedupe decision in batches this large: one round trip to
# the central index per batch, and at most this many bodies held in memory.
DEDUPE_BATCH = 64
PROGRESS_EVERY = 0.5  # seconds


@dataclass(frozen=True)
class ShardTask:
    """Everything one shard needs; picklable, so it crosses into a worker process."""

    input: InputSettings
    shard: ShardSlice
    settings: UrlListSettings
    out_dir: str
    rows: tuple[int, ...] | None = None
    """Only these row indices of the slice (a retry shard); ``None``: all of them."""
    name: str | None = None
    """The shard's file stem; default ``NNNNN`` from the shard id."""
    dedupe: DedupeService | None = None
    """The job-wide index (a proxy to the parent's, later a Redis client); ``None``:
    duplicates are found within this shard only."""


@dataclass(frozen=True)
class FailedSample:
    """One sample that did not make it (the daemon's failure table keeps these)."""

    row_index: int
    url: str | None
    error_class: str
    message: str | None
    http_status: int | None
    attempts: int


@dataclass(frozen=True)
class Progress:
    """How far one shard is (sent about twice a second and once at the end)."""

    shard_id: int
    name: str
    done: int
    total: int
    ok: int
    bytes: int


@dataclass
class ShardResult:
    """What a finished shard reports: additive counts, so totals are sums of shards."""

    shard_id: int
    name: str
    rows: int
    statuses: dict[str, int]
    """Rows by status: ok, failed, filtered, duplicate (they sum to ``rows``)."""
    classes: dict[str, int]
    """Rows by failure class (filtered and duplicate rows included)."""
    bytes_fetched: int
    bytes_stored: int
    failed: list[FailedSample]
    """Every row that is not ok, with its class (filtered and duplicates too)."""
    hashes: list[tuple[str, str | None, int | None]]
    """``(key, sha256, phash)`` of the stored samples, for a job-wide index to keep."""
    files: dict[str, str]
    seconds: float
    requests: int
    marked_duplicates: int = 0


@dataclass
class _Pending:
    row: Row
    fetched: FetchResult
    image: ImageResult
    sha256: str


@dataclass
class _State:
    task: ShardTask
    writer: ShardWriter
    dedupe: DedupeService | None
    rows: dict[int, Row] = field(default_factory=dict)
    pending: list[_Pending] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)
    failed: list[FailedSample] = field(default_factory=list)
    hashes: list[tuple[str, str | None, int | None]] = field(default_factory=list)
    bytes_fetched: int = 0
    bytes_stored: int = 0
    marked: int = 0
    done: int = 0


def run_shard(
    task: ShardTask, on_progress: Callable[[Progress], None] | None = None
) -> ShardResult:
    """Fetch, check, dedupe and write one shard; returns its counts once it is durable.

    Raises ``DiskFull`` when the disk fills (the shard is not written; redo it later) and
    lets any other error out after dropping the temporary files."""
    started = time.monotonic()
    settings = task.settings
    name = task.name or shard_name(task.shard.shard_id)
    dedupe = task.dedupe
    if dedupe is None and (settings.dedupe.exact or settings.dedupe.perceptual):
        dedupe = DedupeIndex(
            exact=settings.dedupe.exact,
            perceptual=settings.dedupe.perceptual,
            max_distance=settings.dedupe.max_distance,
        )
    writer = ShardWriter(
        Path(task.out_dir),
        task.shard.shard_id,
        output=settings.output.format,
        keep_columns=task.input.keep_columns,
        name=name,
    )
    state = _State(task, writer, dedupe)
    total = len(task.rows) if task.rows is not None else task.shard.rows
    last_report = 0.0

    def report(force: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if on_progress is not None and (force or now - last_report >= PROGRESS_EVERY):
            last_report = now
            on_progress(
                Progress(
                    task.shard.shard_id,
                    name,
                    state.done,
                    total,
                    state.statuses[outcome.OK],
                    state.bytes_fetched,
                )
            )

    try:
        with Fetcher(settings.fetch) as fetcher:
            for fetched in fetcher.fetch(_items(state)):
                _handle(state, fetched)
                report()
            _flush(state)
            requests = fetcher.requests
        stats = {
            "shard_id": task.shard.shard_id,
            "name": name,
            "rows": total,
            "statuses": dict(state.statuses),
            "classes": dict(state.classes),
            "bytes_fetched": state.bytes_fetched,
            "bytes_stored": state.bytes_stored,
            "marked_duplicates": state.marked,
            "seconds": round(time.monotonic() - started, 3),
            "requests": requests,
        }
        files = writer.commit(stats)
    except OSError as exc:
        writer.abort()
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while writing shard {name}", path=task.out_dir) from exc
        raise
    except BaseException:
        writer.abort()
        raise
    report(force=True)
    return ShardResult(
        shard_id=task.shard.shard_id,
        name=name,
        rows=total,
        statuses=dict(state.statuses),
        classes=dict(state.classes),
        bytes_fetched=state.bytes_fetched,
        bytes_stored=state.bytes_stored,
        failed=state.failed,
        hashes=state.hashes,
        files=files,
        seconds=time.monotonic() - started,
        requests=requests,
        marked_duplicates=state.marked,
    )


def _items(state: _State) -> Iterator[FetchItem]:
    """Fetchable rows as fetch items; malformed rows are recorded on the way."""
    task = state.task
    wanted = set(task.rows) if task.rows is not None else None
    spec = task.input
    for row in read_rows(
        spec.path,
        spec.format,
        task.shard,
        url_column=spec.url_column,
        caption_column=spec.caption_column,
        keep_columns=spec.keep_columns,
    ):
        if wanted is not None and row.row_index not in wanted:
            continue
        if row.error is not None or row.url is None:
            _record(state, row, outcome.BAD_ROW, row.error or "no URL", attempts=0)
            continue
        state.rows[row.row_index] = row
        yield FetchItem(row.row_index, row.url)


def _key(state: _State, row_index: int) -> str:
    return sample_key(row_index, state.task.input.shard_size)


def _record(
    state: _State,
    row: Row,
    error_class: str | None,
    message: str | None,
    *,
    fetched: FetchResult | None = None,
    attempts: int | None = None,
    image: ImageResult | None = None,
    sha256: str | None = None,
    duplicate_of: str | None = None,
    data: bytes | None = None,
) -> None:
    key = _key(state, row.row_index)
    status = outcome.status_of(error_class)
    tries = attempts if attempts is not None else (fetched.attempts if fetched else 0)
    http_status = fetched.http_status if fetched else None
    record = SampleRecord(
        key=key,
        row_index=row.row_index,
        url=row.url,
        caption=row.caption,
        extra=row.extra,
        status=status,
        error_class=error_class,
        error_message=message,
        http_status=http_status,
        attempts=tries,
        bytes=len(fetched.body) if fetched and fetched.body is not None else None,
        sha256=sha256,
        duplicate_of=duplicate_of,
    )
    if image is not None:
        record.original_width = image.original_width
        record.original_height = image.original_height
        if data is not None:
            record.width, record.height = image.width, image.height
        if image.phash is not None:
            record.phash = f"{image.phash:016x}"
    state.writer.add(record, data, image.ext if image is not None else "jpg")
    state.statuses[status] += 1
    state.done += 1
    if error_class is not None:
        state.classes[error_class] += 1
        state.failed.append(
            FailedSample(row.row_index, row.url, error_class, message, http_status, tries)
        )
    if data is not None:
        state.bytes_stored += len(data)
        state.hashes.append((key, sha256, image.phash if image is not None else None))


def _handle(state: _State, fetched: FetchResult) -> None:
    row = state.rows.pop(fetched.tag)
    if not fetched.ok or fetched.body is None:
        _record(state, row, fetched.error_class, fetched.message, fetched=fetched)
        return
    body = fetched.body
    state.bytes_fetched += len(body)
    settings = state.task.settings
    sha = hashlib.sha256(body).hexdigest()
    image = process_image(
        body,
        settings.filters,
        settings.resize,
        want_phash=settings.dedupe.perceptual,
    )
    if image.error_class is not None:
        _record(
            state, row, image.error_class, image.message, fetched=fetched, image=image, sha256=sha
        )
        return
    state.pending.append(_Pending(row, fetched, image, sha))
    if len(state.pending) >= DEDUPE_BATCH:
        _flush(state)


def _flush(state: _State) -> None:
    """Decide the waiting samples (in row order) and write them."""
    if not state.pending:
        return
    pending = sorted(state.pending, key=lambda p: p.row.row_index)
    state.pending = []
    if state.dedupe is not None:
        decisions = state.dedupe.decide(
            [(_key(state, p.row.row_index), p.sha256, p.image.phash) for p in pending]
        )
    else:
        decisions = [None] * len(pending)
    drop = state.task.settings.dedupe.action == "drop"
    for p, dup in zip(pending, decisions, strict=True):
        if dup is not None and drop:
            _record(
                state,
                p.row,
                outcome.DUPLICATE_CLASS,
                f"duplicate of {dup}",
                fetched=p.fetched,
                image=p.image,
                sha256=p.sha256,
                duplicate_of=dup,
            )
            continue
        if dup is not None:
            state.marked += 1
        _record(
            state,
            p.row,
            None,
            None,
            fetched=p.fetched,
            image=p.image,
            sha256=p.sha256,
            duplicate_of=dup,
            data=p.image.data,
        )

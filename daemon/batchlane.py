"""The small-file lane, on the state thread: which files go to the small-file runner
(``runners/batch.py``) instead of one ``HttpDownload`` each, how they start, and how a
flush of their ends is applied.

A file goes there when a whole-file GET is all it needs: its size is known and at most
``BATCH_FILE``, it comes from HTTP mirrors only (no torrent, no probe), and it has no
progress to resume from (a file interrupted on the one-download path keeps its
checkpoint and resumes there). Large files, resumes and torrents keep the
one-download-per-file path with its mirror ranking, segments and stall switching.

The cost per file is what makes thousands of small files slow, so the lane works on
many at once: the scheduler hands it the files it starts in a tick, grouped by job (one
statement batch moves them all to fetching, one submit hands them to the runner), and a
flush of ends is applied the same way — each file still decided by the lifecycle table,
written together, its job's end checked once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from acquired.daemon.errors import describe
from acquired.daemon.lifecycle import (
    STRICT,
    Effect,
    Event,
    InvalidTransition,
    allowed,
    decide,
)
from acquired.daemon.manifest import FileSpec, Manifest
from acquired.daemon.messages import BatchEnded, TransferEnded
from acquired.daemon.scheduler import order_mirrors
from acquired.daemon.store import FileRow, JobRow
from acquired.sources.http import DownloadResult, FileRequest, HttpOptions
from acquired.sources.http.batch import BatchItem

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")

# Files of a known size up to BATCH_FILE go to the small-file runner. It reports a file
# only once it is in place (no progress, no checkpoint on the way): below this size a
# file takes a round trip or two, so neither would ever be seen; larger small files keep
# their progress and resume on the one-download path.
BATCH_FILE = 256 << 10


def batchable(size: int | None, mirrors: int, resume: dict[str, Any] | None) -> bool:
    """Whether a file fetched over HTTP goes to the small-file runner."""
    return size is not None and size <= BATCH_FILE and mirrors > 0 and resume is None


class SmallLane:
    """Starts small files on the small-file runner and applies their ends."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def wanted(self, row: FileRow, spec: FileSpec) -> bool:
        """Whether a queued file starts on the small-file runner (no torrent to choose,
        nothing fetched or resumable yet)."""
        torrent = spec.sources.torrent is not None and self.svc.torrents is not None
        return (
            batchable(row.size, len(spec.sources.mirrors), None)
            and row.digests is None
            and row.bytes_done == 0
            and not torrent
        )

    def options(self) -> HttpOptions:
        """The runner's transfer settings (timeouts, the shared per-host cap)."""
        http = self.svc.config.http
        return HttpOptions(
            connections=1,
            per_host_connections=http.per_host_connections,
            connect_timeout=http.connect_timeout,
            read_timeout=http.read_timeout,
            min_speed=http.min_speed,
            min_speed_window=http.min_speed_window,
            max_tries=http.max_tries,
            host_slots=self.svc.host_slots,
        )

    # -- starting ------------------------------------------------------------------------
    def start_many(self, job: JobRow, manifest: Manifest, rows: Sequence[FileRow]) -> None:
        """Start queued files of one job (``wanted`` said yes to each) on the runner."""
        changes = [(row, {"source": "http", "error": row.error}) for row in rows]
        moved = self.move_many(changes, Event.START)
        if not moved:
            return
        limiters = self.svc.files.limiters(job.id, job.bandwidth_limit)
        base = self.svc.config.data_root / job.destination
        work = []
        for row in moved:
            spec = manifest.files[row.idx]
            mirrors = list(spec.sources.mirrors)
            # The mirror that served bad data last time is tried last.
            avoid = (row.error or {}).get("details", {}).get("url") if row.error else None
            token = self.svc.next_token()
            item = BatchItem(
                key=token,
                urls=tuple(order_mirrors(mirrors, avoid)),
                dest=base / row.path,
                root=self.svc.config.data_root,
                size=spec.size,
                digests=dict(spec.digests),
                limiters=limiters,
            )
            work.append((row, spec, token, item))
        tickets = self.svc.batch_runner.start_many(
            [(row.id, token, item) for row, _, token, item in work], self.options()
        )
        for (row, spec, token, _), ticket in zip(work, tickets, strict=True):
            n = len(spec.sources.mirrors)
            source = "http" if n == 1 else f"http {n} mirrors"
            self.svc.active[row.id] = self.svc.track(
                row, token, ticket.thread, source=source, handle=ticket
            )

    def start(
        self,
        row: FileRow,
        request: FileRequest,
        options: HttpOptions,
        *,
        token: int,
        event: Event,
        source: str,
    ) -> bool:
        """Start one file on the runner if it belongs there (True: it did, or the move
        refused it); False: the caller starts a download of its own."""
        if not batchable(request.size, len(request.urls), request.resume) or row.bytes_done:
            return False
        # The last error stays shown while the file is tried again.
        if self.svc.move(row.id, event, source="http", error=row.error) is None:
            return True
        item = BatchItem(
            key=token,
            urls=tuple(request.urls),
            dest=request.dest,
            root=request.root,
            size=request.size,
            digests=dict(request.digests),
            limiters=options.limiters,
        )
        (ticket,) = self.svc.batch_runner.start_many([(row.id, token, item)], options)
        self.svc.active[row.id] = self.svc.track(
            row, token, ticket.thread, source=source, handle=ticket
        )
        return True

    # -- moving many ---------------------------------------------------------------------
    def move_many(
        self, changes: Sequence[tuple[FileRow, dict[str, Any]]], event: Event
    ) -> list[FileRow]:
        """``Service.move`` for many files whose rows were read in this turn: each decided
        by the lifecycle table, all written in one statement batch. A move the table does
        not have goes through ``Service.move`` alone (which fails that file, or raises
        in tests). Returns the rows that moved."""
        writes: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        cleared: list[int] = []
        jobs: set[str] = set()
        moved: list[FileRow] = []
        for row, given in changes:
            if not allowed(row.state, event):
                self.svc.move(row.id, event, **given)
                continue
            move = decide(row.state, event)
            fields = dict(given)
            if Effect.COUNT_ATTEMPT in move.effects:
                fields["attempts"] = row.attempts + 1
            if Effect.RESET_ATTEMPTS in move.effects:
                fields["attempts"] = 0
            if Effect.CLEAR_CHECKPOINT in move.effects:
                cleared.append(row.id)
            if Effect.CHECK_JOB in move.effects:
                jobs.add(row.job_id)
            writes.setdefault(move.state, []).append((row.id, fields))
            moved.append(row)
        if cleared:
            self.svc.store.clear_checkpoints(cleared)
        for state, rows in writes.items():
            self.svc.store.set_states(state, rows)
        for job_id in sorted(jobs):
            self.svc.jobsteps.check(job_id)
        return moved

    # -- ends ------------------------------------------------------------------------------
    def on_batch_ended(self, message: BatchEnded) -> None:
        """Apply every end of a flush: the files done together, any other end (failure,
        stop, a file with unpack steps) the usual way; one file's trouble is its own."""
        with self.svc.jobsteps.deferred():
            done: list[tuple[Any, DownloadResult]] = []
            rest = []
            for end in message.ends:
                file_id, token, result, error = end
                act = self.svc.active.get(file_id)
                plain = error is None and isinstance(result, DownloadResult)
                if plain and act is not None and act.token == token and act.stop_reason is None:
                    assert isinstance(result, DownloadResult)
                    done.append((act, result))
                else:
                    rest.append(end)
            if done:
                try:
                    self._fetched_many(done)
                except Exception as exc:
                    if STRICT and isinstance(exc, InvalidTransition):
                        raise
                    LOG.exception("internal error while ending %d small files", len(done))
            for file_id, token, result, error in rest:
                try:
                    self.svc.outcomes.on_transfer_ended(
                        TransferEnded(file_id, token, result, error)
                    )
                except Exception as exc:
                    if STRICT and isinstance(exc, InvalidTransition):
                        raise
                    LOG.exception("internal error while ending file %s", file_id)

    def _fetched_many(self, done: list[tuple[Any, DownloadResult]]) -> None:
        rows = self.svc.store.get_files([act.file_id for act, _ in done])
        manifests: dict[str, Manifest | None] = {}
        changes: list[tuple[FileRow, dict[str, Any]]] = []
        now = time.monotonic()
        for act, result in done:
            self.svc.active.pop(act.file_id, None)
            row = rows.get(act.file_id)
            if row is None:
                continue  # its job was replaced or removed meanwhile
            self.svc.metrics.observe_bytes("http", result.size - act.bytes_done)
            if row.job_id not in manifests:
                manifests[row.job_id] = self._manifest(row.job_id)
            manifest = manifests[row.job_id]
            if manifest is None or manifest.files[row.idx].unpack:
                self.svc.files.fetched(row, result.digests, size=result.size)
                continue
            counts = self.svc.files.bulk.setdefault(row.job_id, [0, 0, now])
            counts[0] += 1
            counts[1] += result.size
            changes.append((row, {"digests": result.digests, "bytes_done": result.size}))
        self.move_many(changes, Event.FETCHED)

    def _manifest(self, job_id: str) -> Manifest | None:
        job = self.svc.store.get_job(job_id)
        try:
            return self.svc.manifests.get(job) if job is not None else None
        except Exception as exc:  # unusable: each file goes the one-by-one way
            LOG.warning("%s: %s", job_id, describe(exc).message)
            return None

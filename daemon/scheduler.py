"""Scheduling and the disk guard, on the state thread; the decisions are pure functions
(``plan_start``, ``retry_delay``, ``order_mirrors``) tested directly."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from acquired.daemon.errors import describe
from acquired.daemon.lifecycle import (
    STRICT,
    Event,
    InvalidTransition,
)
from acquired.daemon.runners.batch import BatchTicket
from acquired.daemon.store import FileRow
from acquired.daemon.units import format_bytes

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")

DISK_WAIT = "waiting for disk"
# Files of known size up to SMALL_FILE go in a lane of their own, SMALL_LANE at once,
# beside the max_concurrent_files large ones: for a small file the round trips, not the
# bandwidth, are the cost, so more of them at once is what makes a job of thousands of
# them fast without letting big transfers crowd the disk or the network.
SMALL_FILE = 1 << 20
SMALL_LANE = 32
# Small files fetched whole from mirrors go to the small-file runner (one thread, many
# transfers, one message per flush): a lane of their own, wide enough to keep its
# connections busy while a flush is being applied.
BATCH_LANE = 512
LARGE, SMALL, BATCH = "large", "small", "batch"
SCHEDULE_EVERY = 0.2  # seconds between scheduling passes while the small-file lane is full


def in_batch(handle: object) -> bool:
    """Whether a file in flight is one of the small-file runner's."""
    return isinstance(handle, BatchTicket)


def is_small(size: int | None) -> bool:
    """Whether a file goes in the small-file lane."""
    return size is not None and size <= SMALL_FILE


class DiskView(NamedTuple):
    """Free space and the reserve kept free, in bytes."""

    free: int
    reserve: int


def plan_start(size: int | None, bytes_done: int, committed: int, disk: DiskView) -> str | None:
    """Whether a file may start now: None if yes, else the reason it waits.

    ``committed`` is what transfers already running still need to write: two files that
    each fit alone must not both start when only one fits.
    """
    if size is None:
        return None if disk.free > disk.reserve else _disk_reason(None, disk)
    need = max(size - bytes_done, 0)
    if need + committed <= disk.free - disk.reserve:
        return None
    return _disk_reason(need, disk)


def _disk_reason(need: int | None, disk: DiskView) -> str:
    have = max(disk.free - disk.reserve, 0)
    if need is None:
        return f"{DISK_WAIT}: free {format_bytes(disk.free)} is below the reserve"
    return f"{DISK_WAIT}: need {format_bytes(need)}, free {format_bytes(have)} above the reserve"


def retry_delay(attempt: int, *, base: float = 5.0, cap: float = 600.0) -> float:
    """Back-off before a file's next attempt: exponential with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))


def order_mirrors(mirrors: list[str], avoid: str | None) -> list[str]:
    """Put the mirror that served bad data last, keeping the manifest order otherwise."""
    if not avoid or avoid not in mirrors:
        return list(mirrors)
    return [m for m in mirrors if m != avoid] + [avoid]


class Scheduler:
    """Starts queued files as slots and disk allow; pauses and resumes for the disk."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.disk = DiskView(0, 0)
        self.last_check = 0.0
        self.last_pass = 0.0
        # Transfers and steps of replaced jobs still stopping: job id -> their tokens.
        self.draining: dict[str, set[int]] = {}
        self.drain_since: dict[str, float] = {}

    def check_disk(self, *, force: bool = False) -> None:
        """Read free space; pause transfers below the reserve, resume disk pauses when it is
        back."""
        now = time.monotonic()
        if not force and now - self.last_check < 2.0:
            return
        self.last_check = now
        try:
            total, free = self.svc.disk_usage(self.svc.config.data_root)
        except OSError as exc:
            LOG.error("cannot read free space of %s: %s", self.svc.config.data_root, exc)
            return
        self.disk = DiskView(free, self.svc.config.reserve_bytes(total))
        # Paused files come back only with some room above the reserve, so that a disk
        # that filled up (ENOSPC) does not flap between pausing and resuming.
        resume_at = self.disk.reserve + max(total // 100, 1 << 20)
        if free < self.disk.reserve:
            for act in list(self.svc.active.values()):
                if act.stop_reason is None and act.kind in ("http", "torrent"):
                    self.svc.event(
                        "warning",
                        f"pausing: free space {format_bytes(free)} is below the reserve"
                        f" {format_bytes(self.disk.reserve)}",
                        job_id=act.job_id,
                        file_id=act.file_id,
                    )
                    self.svc.stop_active(act, "disk")
        elif free >= resume_at:
            for row in self.svc.store.paused_because(DISK_WAIT):
                self.svc.move(row.id, Event.SPACE_BACK, reason="space is back")
                self.svc.event("info", "space is back; resuming", job_id=row.job_id, row=row)

    def committed(self) -> int:
        """Bytes the files in flight still have to write."""
        return sum(max((a.size or 0) - a.bytes_done, 0) for a in self.svc.active.values())

    def schedule(self) -> None:
        """Start queued files while slots and disk allow."""
        if self.svc.stopping:
            return
        active = self.svc.active
        n_batch = sum(1 for a in active.values() if in_batch(a.handle))
        n_small = sum(1 for a in active.values() if is_small(a.size)) - n_batch
        free = {
            LARGE: self.svc.config.max_concurrent_files - (len(active) - n_small - n_batch),
            SMALL: SMALL_LANE - n_small,
            BATCH: BATCH_LANE - n_batch,
        }
        if all(n <= 0 for n in free.values()):
            return
        # Finding queued files is a query over the queue: while small files stream through
        # their lane, run it when a good part of the lane is free, or a few times a
        # second for the other lanes, not after every message.
        now = time.monotonic()
        if free[BATCH] < BATCH_LANE // 8 and now - self.last_pass < SCHEDULE_EVERY:
            return
        self.last_pass = now
        # Look a little past the free slots so files waiting for disk do not block
        # smaller ones behind them.
        limit = sum(max(n, 0) for n in free.values()) + 32
        rows = self.svc.store.next_queued(time.time(), limit=limit, skip=active)
        committed = self.committed()
        jobs: dict[str, Any] = {}
        # Files for the small-file runner start together, per job, after the loop.
        batches: dict[str, tuple[Any, Any, list[FileRow]]] = {}
        for row in rows:
            if not any(n > 0 for n in free.values()):
                break
            if row.id in active:
                continue  # started just now with another file of its torrent
            if row.job_id in self.draining and not self.drain_overdue(row.job_id):
                continue  # the replaced job's transfers are still stopping
            if row.job_id not in jobs:
                jobs[row.job_id] = self.svc.store.get_job(row.job_id)
            job = jobs[row.job_id]
            try:
                manifest = self.svc.manifests.get(job) if job is not None else None
            except Exception as exc:  # the stored manifest is unusable: the file fails
                self.svc.outcomes.fail(row, describe(exc))
                continue
            if job is not None and manifest is None:
                continue  # loading
            lane = LARGE
            if is_small(row.size):
                spec = manifest.files[row.idx] if manifest is not None else None
                lane = BATCH if spec is not None and self.svc.batches.wanted(row, spec) else SMALL
            if free[lane] <= 0:
                continue
            wait = plan_start(row.size, row.bytes_done, committed, self.disk)
            if wait is not None:
                if row.reason != wait:
                    self.svc.store.set_reason(row.id, wait)
                    # The reason is logged when the wait starts, not each time a figure
                    # in it (the free space) moves.
                    if not (row.reason or "").startswith(DISK_WAIT):
                        self.svc.event("info", wait, job_id=row.job_id, row=row)
                continue
            if (row.reason or "").startswith(DISK_WAIT):
                self.svc.event("info", "space is there: starting", job_id=row.job_id, row=row)
            if lane == BATCH:
                batches.setdefault(row.job_id, (job, manifest, []))[2].append(row)
            else:
                self.start_guarded(row)
            committed += max((row.size or 0) - row.bytes_done, 0)
            free[lane] -= 1
        for job, manifest, batch in batches.values():
            self.start_batch(job, manifest, batch)

    def start_batch(self, job: Any, manifest: Any, rows: list[FileRow]) -> None:
        """Start small files of one job on the small-file runner; a failure to start
        them fails them (each with the code and hint of what went wrong), scheduling
        goes on."""
        try:
            self.svc.batches.start_many(job, manifest, rows)
        except Exception as exc:
            if STRICT and isinstance(exc, InvalidTransition):
                raise
            info = describe(exc)
            if info.code == "internal.error":
                LOG.exception("internal error while starting %d files of %s", len(rows), job.id)
            for row in rows:
                if row.id not in self.svc.active:
                    with contextlib.suppress(KeyError):
                        self.svc.outcomes.fail(self.svc.store.get_file(row.id), info)

    def start_guarded(self, row: FileRow) -> None:
        """Start one file; a failure to start fails that file alone, with its code and
        hint (a destination that cannot be created, a bad row), and scheduling goes on."""
        try:
            job = self.svc.store.get_job(row.job_id)
            if job is not None:
                self.svc.kinds[job.kind].start(row)
        except Exception as exc:
            if STRICT and isinstance(exc, InvalidTransition):
                raise
            act = self.svc.active.pop(row.id, None)
            if act is not None and act.torrent_key is not None:
                self.svc.torrent.groups.pop(act.torrent_key, None)
            info = describe(exc)
            if info.code == "internal.error":
                LOG.exception("internal error while starting %s/%s", row.job_id, row.path)
            self.svc.outcomes.fail(self.svc.store.get_file(row.id), info)

    def drain_overdue(self, job_id: str) -> bool:
        """A transfer that has not ended a minute after it was told to stop is given up
        on (and logged), so that a stuck worker cannot hold a job back for ever."""
        since = self.drain_since.setdefault(job_id, time.monotonic())
        if time.monotonic() - since < 60:
            return False
        LOG.error("%s: a stopped transfer did not end within 60 s; starting anyway", job_id)
        self.draining.pop(job_id, None)
        self.drain_since.pop(job_id, None)
        return True

    def drained(self, token: int) -> None:
        """A stopped transfer of a replaced job has ended: its job's files may start."""
        for job_id, tokens in list(self.draining.items()):
            tokens.discard(token)
            if not tokens:
                del self.draining[job_id]
                self.drain_since.pop(job_id, None)

    def drop_job(self, job_id: str) -> dict[tuple[str, str], Any]:
        """Stop a job's transfers and delete it; return what its files carry over to a
        replacing manifest (``Store.carry_over``)."""
        # The transfers must be off the job's files before the new job writes to the same
        # paths, but the state thread does not wait for them: they stay in ``_draining``
        # until they post their end, and the job's files do not start before that.
        for act in [a for a in self.svc.active.values() if a.job_id == job_id]:
            self.svc.stop_active(act, "cancel")
            self.svc.active.pop(act.file_id, None)
            if act.kind != "choosing":  # a probe does not write to the file
                self.draining.setdefault(job_id, set()).add(act.token)
        if job_id in self.svc.jobsteps.finishing:
            token, handle, _, _ = self.svc.jobsteps.finishing.pop(job_id)
            handle.cancel()
            self.draining.setdefault(job_id, set()).add(token)
        self.svc.urllist.drop(job_id)
        carried = self.svc.store.carry_over(job_id)
        self.svc.store.delete_job(job_id)
        self.svc.manifests.drop(job_id)
        return carried

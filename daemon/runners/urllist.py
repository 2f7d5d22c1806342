"""The URL-list runner: one thread per running URL-list job that claims shards from the
work queue while it has free worker processes and the disk allows, runs them in those
processes (``acquired.sources.urllist.pool``), renews their leases, records their
failures and acks each shard once it is durable.

It owns its own ``WorkQueue`` (a connection of its own to the store's database, or a
Redis client), so the state thread never waits on the queue; it tells the state thread
what happened with a message per shard and one report a second, never one per sample.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acquired.daemon.kinds.urllist_plan import shard_slice
from acquired.daemon.runners import Post
from acquired.daemon.runners.urllist_link import QueueLink, open_with_backoff
from acquired.daemon.urllist_messages import UrllistEnded, UrllistReport, UrllistShardEnded
from acquired.daemon.workqueue import FailedSample, Lease, LeaseLost, ShardSummary, WorkQueue
from acquired.sources.urllist.settings import InputSettings, UrlListSettings
from acquired.sources.urllist.shards import remove_temporaries, shard_name

LOG = logging.getLogger("acquired.urllist")

# A worker process or the job's dedupe manager process died (killed, out of memory): the
# pool takes no more work; its shards go back to the queue and the job gets a new pool.
POOL_GONE = (BrokenProcessPool, ConnectionError, EOFError)

REPORT_EVERY = 1.0  # seconds between reports to the state thread
LOOP_WAIT = 0.1  # seconds the runner sleeps when nothing is finished


@dataclass
class RunnerSettings:
    """Everything one job's runner needs, as plain values."""

    job: str
    token: int
    node: str
    lease_s: float
    workers: int
    out_dir: Path
    input: InputSettings
    settings: UrlListSettings
    offsets: list[int | None]
    quota: int | None = None


@dataclass
class _InFlight:
    lease: Lease
    future: Future[Any]
    name: str
    renewed: float = field(default_factory=time.monotonic)
    done: int = 0
    ok: int = 0
    bytes: int = 0
    total: int = 0


@dataclass
class _Rate:
    """Samples and bytes per second over the last reports (exponentially smoothed)."""

    samples: float = 0.0
    bytes: float = 0.0
    last: tuple[float, int, int] | None = None

    def update(self, now: float, samples: int, nbytes: int) -> None:
        if self.last is not None and now > self.last[0]:
            dt = now - self.last[0]
            s = max(samples - self.last[1], 0) / dt
            b = max(nbytes - self.last[2], 0) / dt
            self.samples = s if self.samples == 0 else 0.7 * self.samples + 0.3 * s
            self.bytes = b if self.bytes == 0 else 0.7 * self.bytes + 0.3 * b
        self.last = (now, samples, nbytes)


# After a shard ran out of space, claiming waits until this much more is free.
FULL_MARGIN = 64 << 20


def hold_reason(
    *,
    disk_free: int,
    disk_reserve: int,
    quota: int | None,
    bytes_on_disk: int,
    paused: bool,
    full_at: int | None = None,
) -> str | None:
    """Why the runner claims no new shard now (None: it may). ``full_at``: the free
    space when a shard last hit ENOSPC. Pure."""
    if paused:
        return "paused by user"
    if quota is not None and bytes_on_disk >= quota:
        return f"quota reached: {bytes_on_disk} of max_bytes_on_disk {quota} bytes"
    if disk_free < disk_reserve:
        return "waiting for disk: free space is below the reserve"
    if full_at is not None and disk_free < full_at + FULL_MARGIN:
        return "waiting for disk: a shard ran out of space"
    return None


class UrllistRunner:
    """Runs one URL-list job's shards until every shard is done or dead, or ``stop()``."""

    def __init__(
        self,
        settings: RunnerSettings,
        open_queue: Callable[[], WorkQueue],
        post: Post,
        disk: Callable[[], tuple[int, int]],
        pool_factory: Callable[[RunnerSettings], Any],
    ) -> None:
        self.s = settings
        self._open_queue = open_queue
        self._post = post
        self._disk = disk
        self._pool_factory = pool_factory
        self._stop = threading.Event()
        self.paused = False
        self._full_at: int | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        """Start the runner's thread."""
        self.thread = threading.Thread(target=self._main, name=f"urllist-{self.s.job}", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """Stop claiming, give back the shards in flight, stop the workers."""
        self._stop.set()

    def _main(self) -> None:
        error: BaseException | None = None
        finished = False
        try:
            finished = self._run()
        except BaseException as exc:
            LOG.exception("[%s] the URL-list runner failed", self.s.job)
            error = exc
        self._post(UrllistEnded(self.s.job, self.s.token, finished, error))

    def _waiting(self, reason: str) -> None:
        self._post(UrllistReport(self.s.job, self.s.token, {}, {}, 0, hold=reason))

    def _run(self) -> bool:
        s = self.s
        opened = open_with_backoff(self._open_queue, self._stop, self._waiting, s.job)
        if opened is None:
            return False
        queue = opened
        link = QueueLink(queue, s.job)
        back = link.recover(s.node)
        if back:
            LOG.info("[%s] %d shard(s) this node held before are queued again", s.job, back)
        # No worker of this job runs yet (those of a killed daemon died with it): what a
        # shard left half-written goes before the shard is redone.
        s.out_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_temporaries(s.out_dir)
        if removed:
            LOG.info("[%s] removed %d unfinished shard file(s)", s.job, removed)
        pool = self._pool_factory(s)
        inflight: dict[int, _InFlight] = {}
        rate = _Rate()
        last_report = 0.0
        hold: str | None = None
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                broken = False
                try:
                    reports = pool.progress()
                except POOL_GONE:
                    reports, broken = [], True
                for p in reports:
                    f = inflight.get(p.shard_id)
                    if f is not None:
                        f.done, f.ok, f.bytes, f.total = p.done, p.ok, p.bytes, p.total
                for shard_id, f in list(inflight.items()):
                    if f.future.done():
                        del inflight[shard_id]
                        broken |= self._finish(queue, f)
                    elif now - f.renewed >= s.lease_s / 3 and not link.down:
                        try:
                            f.lease = link.renew(f.lease, s.lease_s)
                        except LeaseLost:
                            # Another consumer holds it now; our work may still ack first.
                            LOG.warning("[%s] lost the lease of shard %s", s.job, f.name)
                        f.renewed = now
                if broken and not inflight:
                    # A worker process died (killed, out of memory): the executor takes no
                    # more work, so the job gets fresh processes; its shards were given back.
                    LOG.warning("[%s] a worker process died; starting new ones", s.job)
                    pool.close(wait=False)
                    pool = self._pool_factory(s)
                # The counts are read here only for a quota, or to learn what came
                # back while Redis was away; otherwise once a report (each round trip
                # of every node of a fleet costs the one Redis server).
                counts = link.refresh() if s.quota is not None or link.down else link.counts
                live_bytes = sum(f.bytes for f in inflight.values())
                free, reserve = self._disk()
                if self._full_at is not None and free >= self._full_at + FULL_MARGIN:
                    self._full_at = None
                hold = link.hold() or hold_reason(
                    disk_free=free,
                    disk_reserve=reserve,
                    quota=s.quota,
                    bytes_on_disk=counts.bytes + live_bytes,
                    paused=self.paused,
                    full_at=self._full_at,
                )
                # A broken pool takes no new shard: it would only use up their deliveries.
                room = 0 if broken else s.workers - len(inflight)
                if hold is None and room > 0:
                    for lease in queue.claim(s.node, room, s.lease_s, jobs=[s.job]):
                        f = self._submit(pool, lease)
                        inflight[lease.shard.shard_id] = f
                        LOG.info(
                            "[%s] shard %s started (%d rows, delivery %d)",
                            s.job,
                            f.name,
                            lease.shard.size,
                            lease.deliveries,
                            extra={"job": s.job},
                        )
                if now - last_report >= REPORT_EVERY or not inflight:
                    last_report = now
                    counts = link.refresh()
                    hold = link.hold() or hold
                    self._report(link, counts, inflight, rate, hold)
                    if link.fresh and counts.finished and not inflight:
                        return True
                time.sleep(LOOP_WAIT) if not any(
                    f.future.done() for f in inflight.values()
                ) else None
        finally:
            for f in inflight.values():
                # Stopping: the shard goes back to the queue at once; a worker that still
                # finishes it writes the same files (shard output is idempotent).
                try:
                    queue.nack(f.lease, "stopped", requeue=True)
                except Exception:
                    LOG.exception("[%s] could not give back shard %s", s.job, f.name)
            pool.close(wait=False)
            close = getattr(queue, "close", None)
            if close is not None:
                close()
        return False

    def _submit(self, pool: Any, lease: Lease) -> _InFlight:
        from acquired.sources.urllist.worker import ShardTask

        s = self.s
        shard = lease.shard
        task = ShardTask(
            input=s.input,
            shard=shard_slice(shard, s.input.shard_size, s.offsets),
            settings=s.settings,
            out_dir=str(s.out_dir),
            rows=shard.rows if shard.kind == "retry" else None,
        )
        return _InFlight(lease, pool.submit(task), shard_name(shard.shard_id), total=shard.size)

    def _finish(self, queue: WorkQueue, f: _InFlight) -> bool:
        """Ack a finished shard, or give it back; True when its worker process died."""
        s, shard_id = self.s, f.lease.shard.shard_id
        try:
            result = f.future.result()
        except Exception as exc:
            code = getattr(exc, "code", "internal.error")
            text = f"{code}: {exc}"
            if code == "disk.full":
                # Not the shard's fault: hold claims until space comes back, so that a
                # full disk does not use up the shard's deliveries.
                self._full_at = self._disk()[0]
            state = queue.nack(f.lease, text, requeue=True)
            self._post(UrllistShardEnded(s.job, s.token, shard_id, f.name, error=text, state=state))
            return isinstance(exc, POOL_GONE)
        queue.record_failures(
            s.job,
            shard_id,
            (
                FailedSample(
                    x.row_index,
                    x.url or "",
                    x.error_class,
                    x.message or "",
                    x.http_status,
                    x.attempts,
                )
                for x in result.failed
            ),
        )
        samples = {"ok": result.statuses.get("ok", 0), **result.classes}
        samples = {k: v for k, v in samples.items() if v}
        queue.ack(f.lease, ShardSummary(samples, result.bytes_stored))
        self._post(
            UrllistShardEnded(
                s.job, s.token, shard_id, f.name, samples, result.bytes_stored, result.seconds
            )
        )
        return False

    def _report(
        self,
        link: QueueLink,
        counts: Any,
        inflight: dict[int, _InFlight],
        rate: _Rate,
        hold: str | None,
    ) -> None:
        s = self.s
        live_done = sum(f.done for f in inflight.values())
        live_bytes = sum(f.bytes for f in inflight.values())
        done = sum(counts.samples.values()) + live_done
        rate.update(time.monotonic(), done, counts.bytes + live_bytes)
        dead = (
            [
                {"shard": d.shard_id, "deliveries": d.deliveries, "error": d.last_error}
                for d in link.call(lambda: link.queue.dead(s.job), [])
            ]
            if counts.shards.get("dead")
            else []
        )
        self._post(
            UrllistReport(
                s.job,
                s.token,
                dict(counts.shards),
                dict(counts.samples),
                counts.bytes,
                live_done=live_done,
                live_ok=sum(f.ok for f in inflight.values()),
                live_bytes=live_bytes,
                in_progress=[
                    {"shard": f.name, "done": f.done, "total": f.total} for f in inflight.values()
                ],
                samples_per_s=rate.samples,
                bytes_per_s=rate.bytes,
                hold=hold,
                dead=dead,
            )
        )

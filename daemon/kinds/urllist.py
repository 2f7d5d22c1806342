"""The URL-list job kind (``kind = "urllist"``), on the state thread.

A URL-list job's ``[[files]]`` (the list itself, if listed) are ordinary files: they go
through the files kind. Once they are done (or there are none), the job's *finish* step
is this kind's work: plan the shards off the state thread, publish them to the work
queue in slices, then run a :class:`~acquired.daemon.runners.urllist.UrllistRunner`
until every shard is done or dead. ``jobs.finish`` says where a job is: ``pending``
(to plan, also after a restart), ``running``, ``done`` or ``failed``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acquired.daemon.errors import describe
from acquired.daemon.kinds.urllist_fleet import FleetSide, locate_fleet_input
from acquired.daemon.kinds.urllist_plan import (
    Plan,
    job_settings,
    load_offsets,
    load_rows,
    make_plan,
    publish_plan,
    save_offsets,
)
from acquired.daemon.lifecycle import Event, FileState
from acquired.daemon.manifest import Manifest
from acquired.daemon.messages import Reply
from acquired.daemon.runners.urllist import RunnerSettings, UrllistRunner
from acquired.daemon.shardstore import open_queue
from acquired.daemon.store import FileRow, JobRow
from acquired.daemon.urllist_messages import (
    UrllistEnded,
    UrllistPlanned,
    UrllistReport,
    UrllistShardEnded,
)
from acquired.daemon.urllist_metrics import UrllistMetrics
from acquired.daemon.urllist_view import commands, job_view
from acquired.daemon.workqueue import QueueJob, WorkQueue

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")


@dataclass
class JobRun:
    """The state thread's record of one URL-list job past its files."""

    token: int
    phase: str = "planning"  # planning | running
    plan: Plan | None = None
    runner: UrllistRunner | None = None
    report: UrllistReport | None = None


class UrllistKind:
    """Jobs of a list of URLs fetched into shards (``kind = 'urllist'``)."""

    name = "urllist"

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.runs: dict[str, JobRun] = {}
        self._rows: dict[str, int | None] = {}
        # The last report of each job whose runner ended (a fleet's counters are in
        # Redis, not in the store: status shows these until the job runs again).
        self.final: dict[str, UrllistReport] = {}
        self.metrics = UrllistMetrics(svc.metrics.registry)
        # The state thread's queue shares the store's connection: short calls only
        # (retry_failed, failures pages, counts for finished jobs).
        self.queue: WorkQueue = svc.store.work_queue()
        self.node = (
            svc.config.cluster.node_name if svc.config.cluster is not None else os.uname()[1]
        )
        self.lease_s = svc.config.cluster.lease if svc.config.cluster is not None else 300.0
        # Shards this node held when it stopped go back to the queue at once.
        back = self.queue.recover(self.node)
        if back:
            LOG.info("%d URL-list shard(s) interrupted by the last stop are queued again", back)
        # With [cluster]: the fleet thread (heartbeats, discovery, the fleet's figures).
        self.fleet = FleetSide(self)

    # -- JobKind ------------------------------------------------------------------------

    def start(self, row: FileRow, event: Event = Event.START) -> None:
        """A ``[[files]]`` entry of a URL-list job is fetched like any file."""
        self.svc.files.start(row, event)

    def handlers(self) -> dict[type, Any]:
        """The messages of the planner and the runner."""
        return {
            UrllistPlanned: self.on_planned,
            UrllistReport: self.on_report,
            UrllistShardEnded: self.on_shard_ended,
            UrllistEnded: self.on_ended,
            **self.fleet.handlers(),
        }

    # -- the job past its files ---------------------------------------------------------

    def files_done(self, job: JobRow) -> None:
        """Called with a pending job: start planning once every file is done."""
        if job.id in self.runs or job.finish != "pending":
            return
        counts = self.svc.store.job_totals(job.id).counts
        if set(counts) - {FileState.DONE}:
            return
        manifest = self.svc.manifests.get(job)
        if manifest is None or manifest.urllist is None:
            return  # loading; called again once it is
        run = self.runs[job.id] = JobRun(self.svc.next_token())
        self.fleet.planning(job)
        job_root = self.svc.config.data_root / job.destination
        folder = self.plans_dir
        offsets = load_offsets(folder, job.id)
        if offsets:
            # Planned and published in a previous life: straight to the runner.
            run.plan = Plan([], offsets, 0)
            self._run(job, manifest, run)
            return
        spec, post, token = manifest.urllist, self.svc.post, run.token
        open_queue, digest = self.open_queue, job.manifest_digest
        # Published with the job so that the other nodes of a fleet can join it.
        published = manifest.model_dump(mode="json") if self.fleet.clustered else None

        def wanted() -> bool:
            # Read from the planner thread: a stop or a removal ends its wait for Redis.
            return not self.svc.stopping and self.runs.get(job.id) is run

        def plan() -> None:
            # Off the state thread: the streaming pass, then the shards published in
            # slices (each a short transaction or a few round trips) on its own queue.
            try:
                path = locate_fleet_input(job_root, spec, job.id, published is not None)
                plan = make_plan(job.id, path, spec)
                qjob = QueueJob(job.id, digest, published)
                if not publish_plan(open_queue, qjob, plan.shards, wanted):
                    return  # stopped, or the job was removed, while Redis was away
                save_offsets(folder, job.id, plan)
                post(UrllistPlanned(job.id, token, plan))
            except BaseException as exc:
                post(UrllistPlanned(job.id, token, error=exc))

        threading.Thread(target=plan, name=f"plan-{job.id}", daemon=True).start()
        self.svc.event("info", "planning shards", job_id=job.id)

    @property
    def plans_dir(self) -> Path:
        """Where the plans' offsets are kept."""
        return self.svc.config.state_dir / "urllist"

    def on_planned(self, m: UrllistPlanned) -> None:
        """The planner published every shard (or failed): start the runner, or fail the job."""
        run = self.runs.get(m.job_id)
        job = self.svc.store.get_job(m.job_id)
        if run is None or run.token != m.token or job is None:
            return
        if m.error is not None:
            self._fail(m.job_id, m.error)
            return
        run.plan = m.plan
        self._rows.pop(m.job_id, None)
        self.svc.event(
            "info",
            f"{m.plan.rows} rows in {len(m.plan.shards)} shard(s) published",
            job_id=m.job_id,
        )
        manifest = self.svc.manifests.get(job)
        if manifest is not None:
            self._run(job, manifest, run)

    def _run(self, job: JobRow, manifest: Manifest, run: JobRun) -> None:
        spec = manifest.urllist
        assert spec is not None and run.plan is not None
        job_root = self.svc.config.data_root / job.destination
        inp, settings = job_settings(spec, job_root / spec.input)
        rs = RunnerSettings(
            job=job.id,
            token=run.token,
            node=self.node,
            lease_s=self.lease_s,
            workers=self.svc.config.urllist.workers or urllist_workers(),
            out_dir=job_root,
            input=inp,
            settings=settings,
            offsets=run.plan.offsets,
            quota=spec.max_bytes_on_disk,
        )
        runner = UrllistRunner(rs, self.open_queue, self.svc.post, self._disk, make_pool)
        from acquired.daemon.runners.urllist_pool import start_forkserver

        start_forkserver()
        run.runner, run.phase = runner, "running"
        self.svc.store.set_finish(job.id, "running")
        runner.start()
        self.svc.event("info", f"fetching shards with {rs.workers} worker(s)", job_id=job.id)

    def open_queue(self) -> WorkQueue:
        """A work queue of its own for a planner or runner thread: a connection to the
        store's database, or to the fleet's Redis with ``[cluster]``."""
        cluster = self.svc.config.cluster
        if cluster is not None:
            from acquired.daemon.redisqueue import connect_cluster

            return connect_cluster(cluster)
        return open_queue(self.svc.store.path)

    def _disk(self) -> tuple[int, int]:
        disk = self.svc.scheduler.disk
        return disk.free, disk.reserve

    def on_report(self, m: UrllistReport) -> None:
        """A runner's periodic figures: kept for status, show and the metrics."""
        run = self.runs.get(m.job_id)
        if run is None or run.token != m.token:
            return
        before = run.report.hold if run.report is not None else None
        run.report = m
        self.metrics.update(m)
        self.fleet.report_changed()
        if m.hold != before:
            if m.hold is not None:
                self.svc.event("warning", f"not claiming shards: {m.hold}", job_id=m.job_id)
            else:
                self.svc.event("info", "claiming shards again", job_id=m.job_id)

    def on_shard_ended(self, m: UrllistShardEnded) -> None:
        """One shard finished (or failed): one journal line for it, never one per sample."""
        run = self.runs.get(m.job_id)
        if run is None or run.token != m.token:
            return
        self.fleet.shard_ended(m)
        if m.error is not None:
            level = "error" if m.state == "dead" else "warning"
            self.svc.event(level, f"shard {m.name} {m.state}: {m.error}", job_id=m.job_id)
            return
        ok = m.summary.get("ok", 0)
        rows = sum(m.summary.values())
        self.svc.metrics.observe_bytes("urllist", m.bytes)
        self.svc.event(
            "info",
            f"shard {m.name} done: {ok}/{rows} ok, {m.bytes} bytes in {m.seconds:.1f}s",
            job_id=m.job_id,
        )

    def on_ended(self, m: UrllistEnded) -> None:
        """A runner stopped: the job is done, failed, paused or waits for disk."""
        run = self.runs.get(m.job_id)
        if run is None or run.token != m.token:
            return
        del self.runs[m.job_id]
        if run.report is not None:
            self.final[m.job_id] = run.report
        self.fleet.report_changed()
        if self.svc.stopping:
            return
        if m.error is not None:
            self._fail(m.job_id, m.error)
        elif m.finished:
            self.svc.store.set_finish(m.job_id, "done")
            samples = run.report.samples if run.report is not None else {}
            ok = samples.get("ok", 0)
            self.svc.event(
                "info", f"done: {ok}/{sum(samples.values())} samples ok", job_id=m.job_id
            )
            job = self.svc.store.get_job(m.job_id)
            if job is not None:
                self.fleet.finished(job)

    def _fail(self, job_id: str, exc: BaseException) -> None:
        run = self.runs.pop(job_id, None)
        if run is not None and run.runner is not None:
            run.runner.stop()
        info = describe(exc)
        self.svc.store.set_finish(job_id, "failed", info.as_dict())
        self.svc.event("error", f"{info.message} — {info.hint}", job_id=job_id, code=info.code)

    # -- commands, views, shutdown ------------------------------------------------------

    def rerun(self, job_id: str) -> None:
        """New retry shards were queued: run the job again if its runner had ended."""
        job = self.svc.store.get_job(job_id)
        if job is None or job_id in self.runs:
            return
        self.svc.store.set_finish(job_id, "pending")
        job = self.svc.store.get_job(job_id)
        if job is not None:
            self.files_done(job)

    def total_rows(self, job_id: str) -> int | None:
        """The job's input rows, once planned."""
        rows = self._rows.get(job_id)
        if rows is None:
            rows = self._rows[job_id] = load_rows(self.plans_dir, job_id)
        return rows

    def command(self, cmd: str, job_id: str) -> bool:
        """pause, resume or cancel a URL-list job's runner; True if it applied."""
        if cmd in ("pause", "resume"):
            return self.set_paused(job_id, cmd == "pause")
        if cmd == "cancel":
            return self.cancel(job_id)
        return False

    def set_paused(self, job_id: str, paused: bool) -> bool:
        """Pause or resume claiming for a running job; True if it has a runner."""
        run = self.runs.get(job_id)
        if run is None or run.runner is None:
            return False
        run.runner.paused = paused
        return True

    def cancel(self, job_id: str) -> bool:
        """Stop a running job's runner (shards in flight go back to the queue); the job
        is failed with ``urllist.cancelled`` until ``retry`` runs it again."""
        run = self.runs.pop(job_id, None)
        if run is None:
            return False
        if run.runner is not None:
            run.runner.stop()
        error = {"code": "urllist.cancelled", "message": "cancelled by user", "hint": ""}
        self.svc.store.set_finish(job_id, "failed", error)
        return True

    def drop(self, job_id: str) -> None:
        """The job is deleted or replaced: stop its runner, forget its shards and plan."""
        run = self.runs.pop(job_id, None)
        if run is not None and run.runner is not None:
            run.runner.stop()
        try:
            self.queue.remove(job_id)
        except Exception:
            LOG.exception("[%s] could not remove the job's shards from the queue", job_id)
        self._rows.pop(job_id, None)
        self.final.pop(job_id, None)
        # ".dedupe": the saved index of earlier versions (now rebuilt from the shards).
        for suffix in (".plan.json", ".dedupe"):
            (self.plans_dir / f"{job_id}{suffix}").unlink(missing_ok=True)

    def shutdown(self) -> list[threading.Thread]:
        """Stop every runner and the fleet thread; returns the runners' threads."""
        self.fleet.shutdown()
        threads = []
        for run in self.runs.values():
            if run.runner is not None:
                run.runner.stop()
                if run.runner.thread is not None:
                    threads.append(run.runner.thread)
        return threads

    def view(self, job: JobRow) -> dict[str, Any]:
        """The URL-list figures of a job for status and show ({} for other kinds)."""
        if job.kind != self.name:
            return {}
        run = self.runs.get(job.id)
        return job_view(self, job, run)

    def answer(self, payload: dict[str, Any], reply: Reply | None = None) -> dict[str, Any] | None:
        """The URL-list commands (failures, retry --failed); None for any other;
        ``urllist_view.DEFERRED`` when the fleet thread fills ``reply`` itself."""
        return commands(self, payload, reply)


def urllist_workers() -> int:
    """Worker processes per running URL-list job: one per core."""
    return max(len(os.sched_getaffinity(0)), 1)


def make_pool(s: RunnerSettings) -> Any:
    """The worker processes of one job, with its job-wide dedupe index."""
    from acquired.daemon.runners.urllist_pool import JobPool

    return JobPool(s)

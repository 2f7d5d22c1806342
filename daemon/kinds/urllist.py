"""The URL-list job kind (``kind = "urllist"``), on the state thread.

A URL-list job's ``[[files]]`` (the list itself, if listed) are ordinary files: they go
through the files kind. Once they are done (or there are none), the job's *finish* step
is this kind's work: plan the shards off the state thread, publish them to the work
queue in slices, then run a :class:`~acquired.daemon.runners.urllist.UrllistRunner`
until every shard is done or dead. ``jobs.finish`` says where a job is: ``pending``
(to plan, also after a restart), ``running``, ``done`` or ``failed``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acquired.daemon.errors import describe
from acquired.daemon.kinds.urllist_plan import (
    Plan,
    in_slices,
    job_settings,
    load_offsets,
    load_rows,
    locate_input,
    make_plan,
    save_offsets,
)
from acquired.daemon.lifecycle import Event, FileState
from acquired.daemon.manifest import Manifest
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
    phase: str = "planning"  # planning | publishing | running
    plan: Plan | None = None
    slices: list[Any] = field(default_factory=list)
    runner: UrllistRunner | None = None
    report: UrllistReport | None = None


class UrllistKind:
    """Jobs of a list of URLs fetched into shards (``kind = 'urllist'``)."""

    name = "urllist"

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.runs: dict[str, JobRun] = {}
        self._rows: dict[str, int | None] = {}
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
        job_root = self.svc.config.data_root / job.destination
        folder = self.plans_dir
        offsets = load_offsets(folder, job.id)
        if offsets:
            # Planned and published in a previous life: straight to the runner.
            run.plan = Plan([], offsets, 0)
            self._run(job, manifest, run)
            return
        spec, post, token = manifest.urllist, self.svc.post, run.token

        def plan() -> None:
            try:
                path = locate_input(job_root, spec, job.id)
                post(UrllistPlanned(job.id, token, make_plan(job.id, path, spec)))
            except BaseException as exc:
                post(UrllistPlanned(job.id, token, error=exc))

        threading.Thread(target=plan, name=f"plan-{job.id}", daemon=True).start()
        self.svc.event("info", "planning shards", job_id=job.id)

    @property
    def plans_dir(self) -> Path:
        """Where the plans' offsets are kept."""
        return self.svc.config.state_dir / "urllist"

    def on_planned(self, m: UrllistPlanned) -> None:
        run = self.runs.get(m.job_id)
        job = self.svc.store.get_job(m.job_id)
        if run is None or run.token != m.token or job is None:
            return
        if m.error is not None:
            self._fail(m.job_id, m.error)
            return
        run.plan, run.phase = m.plan, "publishing"
        run.slices = in_slices(m.plan.shards)
        self.svc.event(
            "info",
            f"{m.plan.rows} rows in {len(m.plan.shards)} shard(s); publishing",
            job_id=m.job_id,
        )

    def tick(self) -> None:
        """Publish one slice of each planning job's shards (a few ms each)."""
        for job_id, run in list(self.runs.items()):
            if run.phase != "publishing" or run.plan is None:
                continue
            job = self.svc.store.get_job(job_id)
            if job is None:
                self.runs.pop(job_id, None)
                continue
            piece = run.slices.pop(0)
            final = not run.slices
            try:
                self.queue.publish(QueueJob(job_id, job.manifest_digest), piece, final=final)
            except Exception as exc:
                self._fail(job_id, exc)
                continue
            if final:
                save_offsets(self.plans_dir, job_id, run.plan)
                self._rows.pop(job_id, None)
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
            workers=urllist_workers(),
            out_dir=job_root,
            input=inp,
            settings=settings,
            offsets=run.plan.offsets,
            quota=spec.max_bytes_on_disk,
            index_path=self.plans_dir / f"{job.id}.dedupe",
        )
        path = self.svc.store.path
        runner = UrllistRunner(rs, lambda: open_queue(path), self.svc.post, self._disk, make_pool)
        from acquired.daemon.runners.urllist_pool import start_forkserver

        start_forkserver()
        run.runner, run.phase = runner, "running"
        self.svc.store.set_finish(job.id, "running")
        runner.start()
        self.svc.event("info", f"fetching shards with {rs.workers} worker(s)", job_id=job.id)

    def _disk(self) -> tuple[int, int]:
        disk = self.svc.scheduler.disk
        return disk.free, disk.reserve

    def on_report(self, m: UrllistReport) -> None:
        run = self.runs.get(m.job_id)
        if run is None or run.token != m.token:
            return
        before = run.report.hold if run.report is not None else None
        run.report = m
        self.metrics.update(m)
        if m.hold != before:
            if m.hold is not None:
                self.svc.event("warning", f"not claiming shards: {m.hold}", job_id=m.job_id)
            else:
                self.svc.event("info", "claiming shards again", job_id=m.job_id)

    def on_shard_ended(self, m: UrllistShardEnded) -> None:
        run = self.runs.get(m.job_id)
        if run is None or run.token != m.token:
            return
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
        run = self.runs.get(m.job_id)
        if run is None or run.token != m.token:
            return
        del self.runs[m.job_id]
        if self.svc.stopping:
            return
        if m.error is not None:
            self._fail(m.job_id, m.error)
        elif m.finished:
            self.svc.store.set_finish(m.job_id, "done")
            counts = self.queue.counts(m.job_id)
            ok = counts.samples.get("ok", 0)
            self.svc.event(
                "info", f"done: {ok}/{sum(counts.samples.values())} samples ok", job_id=m.job_id
            )

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

    def set_paused(self, job_id: str, paused: bool) -> bool:
        """Pause or resume claiming for a running job; True if it has a runner."""
        run = self.runs.get(job_id)
        if run is None or run.runner is None:
            return False
        run.runner.paused = paused
        return True

    def drop(self, job_id: str) -> None:
        """The job is deleted or replaced: stop its runner, forget its shards and plan."""
        run = self.runs.pop(job_id, None)
        if run is not None and run.runner is not None:
            run.runner.stop()
        with contextlib.suppress(Exception):
            self.queue.remove(job_id)
        self._rows.pop(job_id, None)
        for suffix in (".plan.json", ".dedupe"):
            (self.plans_dir / f"{job_id}{suffix}").unlink(missing_ok=True)

    def shutdown(self) -> list[threading.Thread]:
        """Stop every runner; returns their threads to wait for."""
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

    def answer(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The URL-list commands (failures, retry --failed); None for any other."""
        return commands(self, payload)


def urllist_workers() -> int:
    """Worker processes per running URL-list job: one per core."""
    return max(len(os.sched_getaffinity(0)), 1)


def make_pool(s: RunnerSettings) -> Any:
    """The worker processes of one job, with its job-wide dedupe index."""
    from acquired.daemon.runners.urllist_pool import JobPool

    return JobPool(s)

"""A job's own steps (checksum files, layouts, listings, pip), once every file is done."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from acquired.daemon.errors import describe
from acquired.daemon.lifecycle import FileState
from acquired.daemon.manifest import FrameworkLayout
from acquired.daemon.messages import JobStepProgress, JobStepsEnded
from acquired.daemon.runners import StepHandle
from acquired.unpack import ChecksumFileStep, FrameworkStep, ImagenetValStep, ListingStep

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")


class JobSteps:
    """Starts a job's own steps and records how they end."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        # Jobs whose own steps run now: job id -> (token, handle, thread, progress text).
        self.finishing: dict[str, tuple[int, StepHandle, threading.Thread, str]] = {}
        # Jobs whose end a pass over many files checks once, at its end (``deferred``).
        self._deferred: set[str] | None = None

    def check(self, job_id: str) -> None:
        """Every file of the job may be done: start its own steps (now, or at the end of
        ``deferred``)."""
        if self._deferred is not None:
            self._deferred.add(job_id)
        else:
            self.maybe_finish(job_id)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within: a move that may end a job records the job, and each job is checked once
        at the end (a flush of thousands of small files does not count a job's files
        once per file). A failing check is logged; the others go on."""
        if self._deferred is not None:
            yield
            return
        self._deferred = set()
        try:
            yield
        finally:
            jobs, self._deferred = self._deferred, None
            for job_id in sorted(jobs):
                try:
                    self.maybe_finish(job_id)
                except Exception:
                    LOG.exception("internal error while checking the end of %s", job_id)

    def maybe_finish(self, job_id: str) -> None:
        """Start the job's own steps if it has some and every file is done."""
        job = self.svc.store.get_job(job_id)
        if job is None or job.finish != "pending" or job_id in self.finishing:
            return
        if self.svc.desk.busy(job_id):
            return  # its files are still going into the store
        if job.kind == "urllist":
            self.svc.urllist.files_done(job)
            return
        counts = self.svc.store.job_totals(job_id).counts
        if set(counts) != {FileState.DONE}:
            return
        manifest = self.svc.manifests.get(job)
        if manifest is None:
            return  # loading; _on_manifest_loaded calls again
        job_root = self.svc.config.data_root / job.destination
        layouts: list[ImagenetValStep | FrameworkStep] = []
        for lay in manifest.layout:
            if isinstance(lay, FrameworkLayout):
                layouts.append(
                    FrameworkStep(
                        framework=lay.framework,
                        dataset=lay.dataset,
                        root=str(job_root / lay.root),
                        file=lay.file,
                        into=lay.into,
                        mode=lay.mode,
                        check=lay.check,
                        replace=lay.replace,
                    )
                )
            else:
                layouts.append(ImagenetValStep(**lay.model_dump(exclude={"kind"})))
        checksums = [ChecksumFileStep(**c.model_dump()) for c in manifest.checksums]
        listings = [ListingStep(**li.model_dump()) for li in manifest.listing]
        token = self.svc.next_token()
        handle, thread = self.svc.steps_runner.finish(
            job_id,
            token,
            job_root,
            pip=manifest.pip,
            checksums=checksums,
            layouts=layouts,
            listings=listings,
            workers=self.svc.config.unpack.workers or None,
        )
        self.finishing[job_id] = (token, handle, thread, "starting")
        self.svc.store.set_finish(job_id, "running")
        self.svc.event("info", "all files done; running the job's own steps", job_id=job_id)

    def on_job_step_progress(self, message: JobStepProgress) -> None:
        """Record what the job's steps are doing, for status."""
        current = self.finishing.get(message.job_id)
        if current is not None and current[0] == message.token:
            pct = f" {100 * message.done / message.total:.0f}%" if message.total else ""
            self.finishing[message.job_id] = (*current[:3], f"{message.label}{pct}")

    def on_job_steps_ended(self, message: JobStepsEnded) -> None:
        """The job's own steps ended: done, back to pending (stopped), or failed."""
        current = self.finishing.get(message.job_id)
        if current is None or current[0] != message.token:
            self.svc.scheduler.drained(message.token)
            return
        del self.finishing[message.job_id]
        if message.error is None:
            self.svc.store.set_finish(message.job_id, "done")
            self.svc.event("info", "done (job steps)", job_id=message.job_id)
            return
        info = describe(message.error)
        if self.svc.stopping or info.code == "unpack.cancelled":
            self.svc.store.set_finish(message.job_id, "pending")
            return
        self.svc.store.set_finish(message.job_id, "failed", info.as_dict())
        self.svc.event(
            "error",
            f"job steps failed: {info.message} — {info.hint}",
            job_id=message.job_id,
            code=info.code,
        )

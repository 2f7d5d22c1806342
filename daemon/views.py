"""The control side of the state thread: the status snapshot, ``show``, the commands
on jobs, ``doctor``; each answers from the store and the files in flight."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from acquired.daemon.errors import DaemonError, ErrorInfo, describe
from acquired.daemon.forget import forget_job
from acquired.daemon.lifecycle import COMMAND_EVENTS, FileState, after_command, job_state
from acquired.daemon.manifest import ManifestError
from acquired.daemon.messages import Active, Reply
from acquired.daemon.store import JobTotals
from acquired.daemon.urllist_view import DEFERRED

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")

VERSION = "0.1.0"


class UnknownJob(DaemonError):
    """A command named a job the daemon does not know."""

    code = "control.unknown_job"
    hint = "`acquirectl status` lists the jobs."


class NotInFleet(DaemonError):
    """``nodes`` asked of a daemon without ``[cluster]``."""

    code = "cluster.not_configured"
    hint = "Add a [cluster] section (redis_url, node) to acquired.toml on every node."


class UnknownCommand(DaemonError):
    """A control request with a command the daemon does not know."""

    code = "control.unknown_command"
    hint = "`acquirectl --help` lists the commands."


class Views:
    """Answers control requests on the state thread."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def snapshot(self) -> dict[str, Any]:
        """The status snapshot described in docs/architecture.md."""
        jobs = []
        # Two queries whatever the number of jobs and files: the totals of every job, and
        # the stored progress of the files in flight (their live progress replaces it).
        all_totals = self.svc.store.all_totals()
        stored = self.svc.store.bytes_done_of(self.svc.active)
        empty = JobTotals({}, 0, 0, 0)
        for job in self.svc.store.list_jobs():
            totals = all_totals.get(job.id, empty)
            mine = [a for a in self.svc.active.values() if a.job_id == job.id]
            fetching = [a for a in mine if a.kind in ("http", "torrent")]
            speed = sum(a.rate for a in fetching)
            done_bytes = totals.bytes_done + sum(
                a.bytes_done - stored.get(a.file_id, 0) for a in fetching
            )
            remaining = (
                (totals.bytes_total - done_bytes) if totals.bytes_total is not None else None
            )
            jobs.append(
                {
                    "id": job.id,
                    "state": job_state(totals.counts, job.finish),
                    "files_total": totals.files_total,
                    "files_done": totals.counts.get(FileState.DONE, 0),
                    "bytes_total": totals.bytes_total,
                    "bytes_done": done_bytes,
                    "speed": speed,
                    "eta": remaining / speed if remaining is not None and speed > 0 else None,
                    "source": ", ".join(sorted({a.source for a in mine})) or None,
                    "reason": self.job_reason(job.id, totals.counts),
                    "warnings": job.warnings,
                    **self.svc.urllist.view(job),
                }
            )
        counts = self.svc.store.state_counts()
        return {
            "daemon": {
                "version": VERSION,
                "pid": os.getpid(),
                "uptime": time.monotonic() - self.svc.started,
                "data_root": str(self.svc.config.data_root),
                "disk_free": self.svc.scheduler.disk.free,
                "disk_reserve": self.svc.scheduler.disk.reserve,
                "dht_nodes": self.svc.torrent.dht_nodes,
            },
            "counts": {
                "active": len(self.svc.active),
                "queued": counts.get(FileState.QUEUED, 0),
                "done": counts.get(FileState.DONE, 0),
                "failed": counts.get(FileState.FAILED, 0),
                "paused": counts.get(FileState.PAUSED, 0),
            },
            "jobs": jobs,
            "active": [self.active_view(a) for a in self.svc.active.values()]
            + [
                {
                    "job": job_id,
                    "file": "(job steps)",
                    "state": "finishing",
                    "bytes_total": None,
                    "bytes_done": 0,
                    "speed": 0.0,
                    "eta": None,
                    "source": "unpack",
                    "detail": detail,
                    "step": detail,
                }
                for job_id, (_, _, _, detail) in self.svc.jobsteps.finishing.items()
            ],
            "seeding": [{"key": k, **v} for k, v in self.svc.torrent.seeding.items()],
            "events": self.svc.store.recent_events(limit=10),
            "fleet": self.svc.urllist.fleet.status(),
        }

    def active_view(self, a: Active) -> dict[str, Any]:
        """What status shows of a file in flight."""
        state = {"unpack": "unpacking", "verify": "verifying"}.get(a.kind, "fetching")
        return {
            "job": a.job_id,
            "file": a.path,
            "state": state,
            "bytes_total": a.size,
            "bytes_done": a.bytes_done,
            "speed": a.rate,
            "eta": (a.size - a.bytes_done) / a.rate if a.size and a.rate > 0 else None,
            "source": a.source,
            "detail": a.detail,
            "step": a.step,
        }

    def job_reason(self, job_id: str, counts: dict[str, int]) -> str | None:
        """The most useful one-line reason for a job that is not moving."""
        if counts.get(FileState.FETCHING) or counts.get(FileState.UNPACKING):
            return None
        for state in (FileState.QUEUED, FileState.PAUSED, FileState.FAILED):
            if counts.get(state) and (reason := self.svc.store.first_reason(job_id, state)):
                return reason
        if counts.get(FileState.QUEUED):
            return self.queued_reason()
        return None

    def queued_reason(self) -> str | None:
        """Why a queued file with no reason of its own waits: the slots are taken."""
        running = len(self.svc.active)
        if not running:
            return None
        return f"queued: {running} file{'s' if running > 1 else ''} already running"

    def show(self, job_id: str) -> dict[str, Any]:
        """One job in detail: each file's state, attempts, source, error; recent events."""
        job = self.svc.store.get_job(job_id)
        if job is None:
            raise UnknownJob(f"no job named '{job_id}'", job=job_id)
        totals = self.svc.store.job_totals(job_id)
        files = []
        for row in self.svc.store.job_files(job_id):
            act = self.svc.active.get(row.id)
            files.append(
                {
                    "path": row.path,
                    "state": row.state,
                    "size": row.size,
                    "bytes_done": act.bytes_done if act else row.bytes_done,
                    "speed": act.rate if act else 0.0,
                    "attempts": row.attempts,
                    "source": act.source if act else row.source,
                    "detail": act.detail if act else None,
                    "plan": row.plan,
                    "reason": row.reason
                    or (self.queued_reason() if row.state == FileState.QUEUED else None),
                    "error": row.error,
                    "digests": row.digests,
                }
            )
        return {
            "id": job.id,
            "state": job_state(totals.counts, job.finish),
            "job_steps": {"state": job.finish, "error": job.finish_error},
            "destination": str(self.svc.config.data_root / job.destination),
            "manifest": job.manifest_path,
            "warnings": job.warnings,
            "files_total": totals.files_total,
            "files": files,
            "events": self.svc.store.recent_events(limit=30, job_id=job_id),
            **self.svc.urllist.view(job),
        }

    def doctor(self) -> dict[str, Any]:
        """Findings about the torrent engine, for `acquirectl doctor`."""
        if self.svc.torrents is None:
            finding = {
                "severity": "error",
                "title": "the torrent engine is not running",
                "detail": self.svc.torrents_down or "",
                "fix": "See the daemon's log for why it did not start; check [torrent] settings.",
            }
            return {"findings": [finding], "session": None}
        return {
            "findings": [dataclasses.asdict(f) for f in self.svc.torrents.doctor()],
            "session": self.svc.torrents.session_status(),
        }

    def command(self, cmd: str, job_id: str) -> dict[str, Any]:
        """Pause, resume, cancel or retry every file of a job that the command touches."""
        if self.svc.store.get_job(job_id) is None:
            raise UnknownJob(f"no job named '{job_id}'", job=job_id)
        changed = 0
        for state in FileState:
            new = after_command(cmd, state)
            if new is None:
                continue
            for row in self.svc.store.files_in_state(state, job_id=job_id):
                act = self.svc.active.get(row.id)
                if act is not None:
                    # The transfer reports when it has stopped; its state is set then.
                    if act.stop_reason is None:
                        self.svc.stop_active(act, "pause" if cmd == "pause" else "cancel")
                else:
                    reason = {"pause": "paused by user", "cancel": "cancelled by user"}.get(cmd)
                    self.svc.move(row.id, COMMAND_EVENTS[cmd], reason=reason)
                changed += 1
        if self.svc.urllist.command(cmd, job_id):
            changed += 1
        job = self.svc.store.get_job(job_id)
        if cmd == "retry" and job is not None and job.finish == "failed":
            self.svc.store.set_finish(job_id, "pending")
            self.svc.jobsteps.maybe_finish(job_id)
            changed += 1
        self.svc.event("info", f"{cmd}: {changed} file(s)", job_id=job_id)
        return {"job": job_id, "files": changed}

    def reply(self, payload: dict[str, Any], reply: Reply) -> None:
        """Answer a control request into ``reply``, now or (a clustered job's failures
        and retry --failed, which need Redis) from the fleet thread once it has run."""
        answer = self.answer(payload, reply)
        if answer is not DEFERRED:
            reply.set(answer)

    def nodes(self) -> dict[str, Any]:
        """The fleet's nodes from the last snapshot, for `acquirectl nodes`."""
        fleet = self.svc.urllist.fleet.status()
        if fleet is None:
            raise NotInFleet("this daemon is not part of a fleet: [cluster] is not set")
        return fleet

    def forget(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``forget``; a clustered URL-list job is removed from Redis too."""
        job = self.svc.store.get_job(str(payload.get("job", "")))
        result = forget_job(self.svc, payload)
        if job is not None and job.kind == "urllist":
            self.svc.urllist.fleet.forgotten_job(job.id, job.manifest_digest)
        return result

    def answer(self, payload: dict[str, Any], reply: Reply | None = None) -> dict[str, Any]:
        """Answer a control request (all but ``add``, which the intake answers)."""
        cmd = payload["cmd"]
        try:
            if cmd == "status":
                return {"ok": True, "result": self.snapshot()}
            if cmd == "show":
                return {"ok": True, "result": self.show(str(payload.get("job", "")))}
            if cmd in ("pause", "resume", "cancel", "retry"):
                return {"ok": True, "result": self.command(cmd, str(payload.get("job", "")))}
            if cmd == "forget":
                return {"ok": True, "result": self.forget(payload)}
            if cmd == "nodes":
                return {"ok": True, "result": self.nodes()}
            if cmd == "doctor":
                return {"ok": True, "result": self.doctor()}
            if cmd == "test-hang" and self.svc.test_faults:
                LOG.warning("test fault: the state thread stops responding")
                while True:
                    time.sleep(3600)
            if (answer := self.svc.urllist.answer(payload, reply)) is not None:
                return answer
            raise UnknownCommand(f"unknown command '{cmd}'")
        except (DaemonError, ManifestError) as exc:
            return error_reply(describe(exc))


def error_reply(info: ErrorInfo) -> dict[str, Any]:
    """A control reply for an error."""
    return {"ok": False, "error": info.as_dict()}

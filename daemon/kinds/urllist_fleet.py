"""The state thread's side of the fleet (``[cluster]``): what the fleet thread
(:mod:`acquired.daemon.fleetview`) reports, turned into jobs and views; and the work
that needs Redis handed to it. Nothing here calls Redis: status, show, top and
``nodes`` read the last :class:`FleetUpdate`, whatever its age.

- A job published by another node is joined as if its manifest had been added here
  (the intake validates it and refuses a different manifest under a known name).
- A locally finished job whose shards are queued again in Redis (``retry --failed`` on
  another node) runs again, so that every node with room claims them.
- ``failures`` and ``retry --failed`` of a clustered job run against Redis, on the fleet
  thread, and answer the waiting control request from there.
- A job forgotten here is removed from Redis and never joined again with that manifest
  (``state_dir/urllist/forgotten.json``).
- A finished job's ``index.parquet`` is written off the state thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from acquired.daemon import fleetdedupe
from acquired.daemon.errors import describe
from acquired.daemon.fleetview import FleetJobFound, FleetRequest, FleetUpdate, FleetView
from acquired.daemon.jobindex import index_rows, local_figures, write_index
from acquired.daemon.kinds.urllist_plan import InputMissing, locate_input
from acquired.daemon.messages import Reply
from acquired.daemon.store import JobRow
from acquired.daemon.urllist_messages import UrllistShardEnded

if TYPE_CHECKING:
    from acquired.daemon.kinds.urllist import UrllistKind

LOG = logging.getLogger("acquired.service")


class FleetInputMissing(InputMissing):
    """A clustered job's URL list is not readable on this node."""

    code = "cluster.input_missing"
    hint = (
        "Every node of a fleet reads a URL-list job's input at the same path under its own "
        "data root: mount the shared folder there on this node (or copy the file), then "
        "`acquirectl retry JOB`; or list the input as a [[files]] entry."
    )


def locate_fleet_input(job_root: Path, spec: Any, job: str, clustered: bool) -> Path:
    """``locate_input``; for a clustered job, its own error (the hint speaks of nodes)."""
    try:
        return locate_input(job_root, spec, job)
    except InputMissing as exc:
        if not clustered:
            raise
        raise FleetInputMissing(str(exc), **exc.details) from None


@dataclass(frozen=True)
class FleetNote:
    """A line for the job's events, from the fleet thread or the index writer."""

    level: str
    message: str
    job_id: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class FleetRetried:
    """``retry --failed`` queued ``shards`` new shards in Redis for ``job_id``."""

    job_id: str
    shards: int
    samples: int
    classes: tuple[str, ...]


class _Then(Reply):
    """A reply slot that calls back on the state thread instead of waking a waiter."""

    def __init__(self, then: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._then = then

    def set(self, value: dict[str, Any]) -> None:
        """Called by the intake's handler on the state thread."""
        super().set(value)
        self._then(value)


# The counts a job's figures are made of; the rates always come from the snapshot.
_COUNTED = (
    "samples_done",
    "samples_ok",
    "success_rate",
    "failures",
    "duplicates",
    "filtered",
    "bytes_written",
    "shards_done",
    "shards_in_progress",
    "shards_dead",
    "shards_total",
)


def freshest(local: dict[str, Any], fleet: dict[str, Any]) -> dict[str, Any]:
    """The fleet's figures, with the counts of this node's own last read of Redis when
    that read is newer (further on: more shards or samples done). The snapshot is up to a
    second old, and a node that just saw the job finish must not show it short. Pure."""
    ahead = (local.get("shards_done", 0), local.get("samples_done", 0)) > (
        fleet.get("shards_done", 0),
        fleet.get("samples_done", 0),
    )
    if not ahead:
        return fleet
    out = dict(fleet)
    out.update({k: local[k] for k in _COUNTED if k in local})
    return out


class FleetSide:
    """The fleet as the state thread knows it (a no-op without ``[cluster]``)."""

    def __init__(self, kind: UrllistKind) -> None:
        self.kind = kind
        self.svc = kind.svc
        # The fleet's messages are handled by this kind (handlers()), outside the
        # service's Message union.
        self.post: Callable[[Any], None] = cast(Callable[[Any], None], self.svc.post)
        self.last: FleetUpdate | None = None
        self._warned: set[str] = set()
        self._path = kind.plans_dir / "forgotten.json"
        self.forgotten: dict[str, str] = self._load()
        cluster = self.svc.config.cluster
        self.view: FleetView | None = None
        if cluster is not None:
            self.view = FleetView(cluster, self.post, forgotten=self.forgotten)
            for job, digest in self.forgotten.items():
                self._remove_later(job, digest)
            self.view.start()

    @property
    def clustered(self) -> bool:
        """Whether this node is part of a fleet."""
        return self.view is not None

    def handlers(self) -> dict[type, Any]:
        """The fleet thread's messages."""
        return {
            FleetUpdate: self.on_update,
            FleetJobFound: self.on_found,
            FleetNote: lambda m: self.svc.event(m.level, m.message, job_id=m.job_id, code=m.code),
            FleetRetried: self.on_retried,
        }

    def shutdown(self) -> None:
        """Stop the fleet thread (its heartbeat key expires by itself)."""
        if self.view is not None:
            self.view.stop()

    # -- what the fleet thread reports --------------------------------------------------

    def on_update(self, m: FleetUpdate) -> None:
        """A new snapshot; a finished local job with shards queued again runs again."""
        self.last = m
        if m.down_since is not None:
            return
        for name, fj in m.jobs.items():
            if not fj.shards.get("queued") or name in self.kind.runs:
                continue
            job = self.svc.store.get_job(name)
            if job is None or job.kind != "urllist" or job.finish != "done":
                continue
            if job.manifest_digest != fj.digest:
                continue
            self.svc.event("info", "new shards queued in the fleet: running again", job_id=name)
            self.kind.rerun(name)

    def on_found(self, m: FleetJobFound) -> None:
        """A job published by another node: join it as if its manifest were added here."""
        if self.forgotten.get(m.job) == m.digest:
            return
        job = self.svc.store.get_job(m.job)
        if job is not None:
            if job.manifest_digest != m.digest and m.job not in self._warned:
                self._warned.add(m.job)
                self.svc.event(
                    "warning",
                    f"the fleet's job '{m.job}' has another manifest than this node's;"
                    " this node does not join it",
                    job_id=m.job,
                    code="queue.job_conflict",
                )
            return

        def then(value: dict[str, Any]) -> None:
            if not value.get("ok"):
                err = value.get("error") or {}
                self.svc.event(
                    "error",
                    f"cannot join the fleet's job '{m.job}': {err.get('message')}"
                    f" — {err.get('hint')}",
                    code=err.get("code"),
                )
            elif value["result"].get("created"):
                self.svc.event("info", "joined the fleet's job", job_id=m.job)

        text = json.dumps(m.manifest, separators=(",", ":")).encode()
        self.svc.intake.submit(text, f"{m.job}.json (published in the fleet)", reply=_Then(then))

    def on_retried(self, m: FleetRetried) -> None:
        """Shards re-fed in Redis by this node: run the job again here too."""
        self.svc.event(
            "info",
            f"retry: {m.samples} failed sample(s) of {', '.join(m.classes)} in {m.shards}"
            " shard(s), queued for the fleet",
            job_id=m.job_id,
        )
        if m.shards:
            self.kind.rerun(m.job_id)

    # -- the job's life -----------------------------------------------------------------

    def planning(self, job: JobRow) -> None:
        """The job is planned here: if it was forgotten before, it was added again."""
        if job.id in self.forgotten and self.forgotten[job.id] == job.manifest_digest:
            del self.forgotten[job.id]
            self._save()
            if self.view is not None:
                self.view.unforget(job.id)

    def shard_ended(self, m: UrllistShardEnded) -> None:
        """Keep a finished shard's figures in Redis for the job's index."""
        if self.view is None or m.error is not None:
            return
        ok = m.summary.get("ok", 0)
        figures = {
            "node": self.kind.node,
            "ok": ok,
            "failed": sum(m.summary.values()) - ok,
            "bytes": m.bytes,
        }
        job, shard = m.job_id, m.shard_id
        self.view.submit(
            FleetRequest(
                f"record shard {m.name}",
                lambda q: q.record_shard(job, shard, figures),
            )
        )

    def forgotten_job(self, job_id: str, digest: str) -> None:
        """``forget`` ran here: remove the job from Redis, never join it again."""
        if self.view is None:
            return
        self.forgotten[job_id] = digest
        self._save()
        self.view.forget(job_id, digest)
        self._remove_later(job_id, digest)

    def _remove_later(self, job_id: str, digest: str) -> None:
        assert self.view is not None
        self.view.submit(
            FleetRequest(
                f"remove forgotten job {job_id}",
                lambda q: q.remove_if(job_id, digest),
            )
        )

    def finished(self, job: JobRow) -> None:
        """Write the job's ``index.parquet`` off the state thread."""
        manifest = self.svc.manifests.get(job)
        output = manifest.urllist.output if manifest is not None and manifest.urllist else ""
        data_root, dest, node, post = (
            self.svc.config.data_root,
            job.destination,
            self.kind.node,
            self.post,
        )
        job_id = job.id

        def write(index: dict[int, str], figures: dict[int, dict[str, Any]]) -> None:
            missing = [s for s in index if s not in figures]
            figures = {**figures, **local_figures(data_root, dest, missing)}
            path = write_index(data_root, dest, index_rows(index, figures, output))
            nodes = len(set(index.values()))
            post(
                FleetNote(
                    "info", f"{path.name}: {len(index)} shard(s) from {nodes} node(s)", job_id
                )
            )

        def failed(info: dict[str, Any]) -> None:
            post(
                FleetNote(
                    "warning",
                    f"index.parquet not written: {info.get('message')}",
                    job_id,
                    info.get("code"),
                )
            )

        if self.view is not None:
            self.view.submit(
                FleetRequest(
                    f"index of {job_id}",
                    lambda q: write(q.shard_index(job_id), q.shard_figures(job_id)),
                    failed,
                )
            )
            fleetdedupe.schedule(self, job, manifest)  # duplicates.parquet, by one node
            return
        open_queue = self.kind.open_queue

        def local() -> None:
            try:
                q: Any = open_queue()
                try:
                    states = q.shard_states(job_id)
                finally:
                    q.close()
                write({s: node for s, st in states.items() if st == "done"}, {})
            except Exception as exc:
                failed(describe(exc).as_dict())

        threading.Thread(target=local, name=f"index-{job_id}", daemon=True).start()

    # -- commands and views -------------------------------------------------------------

    def defer(self, payload: dict[str, Any], reply: Reply, shard_size: int) -> None:
        """Run ``failures`` or ``retry-failed`` of a clustered job on the fleet thread;
        its answer goes straight to the waiting control request."""
        assert self.view is not None
        cmd, job_id = payload["cmd"], str(payload["job"])
        classes = payload.get("classes") or None
        post = self.post

        def failed(info: dict[str, Any]) -> None:
            reply.set({"ok": False, "error": info})

        if cmd == "failures":
            from acquired.daemon.urllist_view import failure_page

            offset = int(payload.get("offset", 0))
            limit = int(payload.get("limit", 0))

            def page(q: Any) -> None:
                rows = failure_page(q.failures(job_id, classes), offset, limit)
                reply.set(
                    {"ok": True, "result": {"job": job_id, "offset": offset, "failures": rows}}
                )

            self.view.submit(FleetRequest(f"failures of {job_id}", page, failed))
            return
        chosen = tuple(payload["chosen"])

        def retry(q: Any) -> None:
            shards = q.retry_failed(job_id, list(chosen), shard_size)
            samples = sum(s.size for s in shards)
            reply.set(
                {"ok": True, "result": {"job": job_id, "shards": len(shards), "samples": samples}}
            )
            post(FleetRetried(job_id, len(shards), samples, chosen))

        self.view.submit(FleetRequest(f"retry --failed of {job_id}", retry, failed))

    def status(self) -> dict[str, Any] | None:
        """The fleet part of ``status`` and the ``nodes`` answer (None: not clustered)."""
        if self.view is None:
            return None
        last = self.last
        now = time.time()
        out: dict[str, Any] = {
            "node": self.view.node,
            "redis": "unknown",
            "age": None,
            "down_since": None,
            "error": "",
            "nodes": [],
            "samples_per_s": 0.0,
        }
        if last is None:
            return out
        out["redis"] = "unreachable" if last.down_since is not None else "ok"
        out["age"] = now - last.at if last.at is not None else None
        out["down_since"] = last.down_since
        out["error"] = last.error
        out["nodes"] = [
            {
                **n,
                "age": n["age"] + (now - last.at) if n["age"] is not None and last.at else n["age"],
            }
            for n in last.nodes
        ]
        out["samples_per_s"] = sum(n["samples_per_s"] for n in last.nodes if n["alive"])
        return out

    def job_figures(self, job: JobRow, fig: dict[str, Any]) -> dict[str, Any] | None:
        """The whole job's figures from the last snapshot (None: not in it)."""
        last = self.last
        if self.view is None or last is None or job.id not in last.jobs:
            return None
        from acquired.daemon.urllist_view import figures

        fj = last.jobs[job.id]
        per_node = []
        for n in last.nodes:
            mine = (n.get("jobs") or {}).get(job.id)
            if mine is not None and n["alive"]:
                per_node.append(
                    {
                        "node": n["node"],
                        "samples_per_s": float(mine.get("samples_per_s") or 0.0),
                        "bytes_per_s": float(mine.get("bytes_per_s") or 0.0),
                        "shards_held": int(mine.get("shards_held") or 0),
                    }
                )
        rate = sum(p["samples_per_s"] for p in per_node)
        out = figures(
            fj.samples,
            fj.shards,
            fj.bytes,
            rows=fig.get("samples_total"),
            samples_per_s=rate,
            bytes_per_s=sum(p["bytes_per_s"] for p in per_node),
        )
        out["in_progress"] = fig.get("in_progress", [])
        out["dead"] = fj.dead
        out = freshest(fig, out)
        out["nodes"] = per_node
        out["fleet_age"] = time.time() - last.at if last.at is not None else None
        return out

    def node_report(self) -> dict[str, Any]:
        """This node's heartbeat report from its runners' last reports."""
        jobs = {}
        for job_id, run in self.kind.runs.items():
            r = run.report
            if r is None:
                continue
            jobs[job_id] = {
                "samples_per_s": r.samples_per_s,
                "bytes_per_s": r.bytes_per_s,
                "shards_held": len(r.in_progress),
                "hold": r.hold,
            }
        return {
            "samples_per_s": sum(j["samples_per_s"] for j in jobs.values()),
            "bytes_per_s": sum(j["bytes_per_s"] for j in jobs.values()),
            "shards_held": sum(j["shards_held"] for j in jobs.values()),
            "jobs": jobs,
            "pid": os.getpid(),
        }

    def report_changed(self) -> None:
        """A runner reported or ended: the next heartbeat carries the new figures."""
        if self.view is not None:
            self.view.set_report(self.node_report())

    # -- forgotten jobs, on disk --------------------------------------------------------

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        tmp.write_text(json.dumps(self.forgotten))
        os.replace(tmp, self._path)

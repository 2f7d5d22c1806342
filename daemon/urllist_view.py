"""What status, show and top say about a URL-list job, and the URL-list commands
(``failures``, ``retry --failed``) answered on the state thread. Figures come from the
queue's counters (one aggregate per job) and the runner's last report: never per sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from acquired.daemon.errors import DaemonError
from acquired.daemon.messages import Reply
from acquired.daemon.store import JobRow
from acquired.daemon.workqueue import FailedSample
from acquired.sources.urllist import outcome

if TYPE_CHECKING:
    from acquired.daemon.kinds.urllist import JobRun, UrllistKind

# Failures per page of `failures` (the CLI pages through them for an export).
FAILURES_PAGE = 5000


class NotUrllistJob(DaemonError):
    """A URL-list command named a job of another kind (or none)."""

    code = "urllist.not_urllist_job"
    hint = "`acquirectl status` lists the jobs; failures and retry --failed are for URL-list jobs."


class UnknownClass(DaemonError):
    """``--class`` named a failure class that does not exist."""

    code = "urllist.unknown_class"
    hint = "Use classes such as " + ", ".join(outcome.CLASSES) + "."


def figures(
    samples: dict[str, int],
    shards: dict[str, int],
    nbytes: int,
    *,
    rows: int | None,
    live_done: int = 0,
    live_ok: int = 0,
    samples_per_s: float = 0.0,
    bytes_per_s: float = 0.0,
) -> dict[str, Any]:
    """The URL-list figures of a job from its aggregate counters. Pure."""
    done = sum(samples.values()) + live_done
    ok = samples.get("ok", 0) + live_ok
    failures = {k: v for k, v in samples.items() if k != "ok" and v}
    filtered = sum(v for k, v in failures.items() if outcome.status_of(k) == outcome.FILTERED)
    dups = failures.get(outcome.DUPLICATE_CLASS, 0)
    left = rows - done if rows is not None else None
    return {
        "samples_total": rows,
        "samples_done": done,
        "samples_ok": ok,
        "samples_per_s": samples_per_s,
        "bytes_per_s": bytes_per_s,
        "bytes_written": nbytes,
        "success_rate": ok / done if done else None,
        "failures": failures,
        "duplicates": dups,
        "filtered": filtered,
        "shards_done": shards.get("done", 0),
        "shards_in_progress": shards.get("claimed", 0),
        "shards_dead": shards.get("dead", 0),
        "shards_total": sum(shards.values()),
        "eta": left / samples_per_s if left is not None and samples_per_s > 0 else None,
    }


def job_view(kind: UrllistKind, job: JobRow, run: JobRun | None) -> dict[str, Any]:
    """Fields replacing or adding to a job's entry in status and show."""
    rows = kind.total_rows(job.id)
    report = run.report if run is not None else None
    if run is None and kind.svc.config.cluster is not None:
        report = kind.final.get(job.id)
    if report is not None:
        fig = figures(
            report.samples,
            report.shards,
            report.bytes + report.live_bytes,
            rows=rows,
            live_done=report.live_done,
            live_ok=report.live_ok,
            samples_per_s=report.samples_per_s,
            bytes_per_s=report.bytes_per_s,
        )
        fig["in_progress"] = report.in_progress
        fig["dead"] = report.dead
    elif kind.fleet.clustered:
        # Never Redis on the state thread: the fleet's snapshot, once there is one.
        fig = figures({}, {}, 0, rows=rows)
    else:
        counts = kind.queue.counts(job.id)
        fig = figures(dict(counts.samples), dict(counts.shards), counts.bytes, rows=rows)
    fleet = kind.fleet.job_figures(job, fig)
    if fleet is not None:
        # The whole job, every node together, as Redis counted it at the last read.
        fig = fleet
    hold = report.hold if report is not None and run is not None else None
    out: dict[str, Any] = {"kind": "urllist", "urllist": fig}
    if run is not None:
        out["state"] = "paused" if hold else {"running": "fetching"}.get(run.phase, run.phase)
        out["reason"] = hold
        out["speed"] = fig["bytes_per_s"]
        out["eta"] = fig["eta"]
        out["bytes_done"] = fig["bytes_written"]
    elif job.finish == "done":
        out["state"] = "done"
    elif job.finish == "failed":
        out["state"] = "failed"
        out["reason"] = (job.finish_error or {}).get("message")
    return out


def failure_page(failures: Iterable[FailedSample], offset: int, limit: int) -> list[dict[str, Any]]:
    """One page of failures as the control reply lists them (``limit`` 0: a full page)."""
    limit = min(limit or FAILURES_PAGE, FAILURES_PAGE)
    page: list[dict[str, Any]] = []
    for i, f in enumerate(failures):
        if i < offset:
            continue
        if len(page) >= limit:
            break
        page.append(
            {
                "row": f.row,
                "url": f.url,
                "class": f.cls,
                "message": f.message,
                "http_status": f.http_status,
                "attempts": f.attempts,
                "shard": f.shard_id,
            }
        )
    return page


DEFERRED: dict[str, Any] = {}
"""Returned by :func:`commands` when the fleet thread answers the request itself."""


def commands(
    kind: UrllistKind, payload: dict[str, Any], reply: Reply | None = None
) -> dict[str, Any] | None:
    """Answer ``failures`` and ``retry-failed``; None for other commands. For a clustered
    job (and a ``reply`` to fill) the fleet thread answers: :data:`DEFERRED`."""
    cmd = payload.get("cmd")
    if cmd not in ("failures", "retry-failed"):
        return None
    job_id = str(payload.get("job", ""))
    job = kind.svc.store.get_job(job_id)
    if job is None or job.kind != kind.name:
        raise NotUrllistJob(f"'{job_id}' is not a URL-list job", job=job_id)
    classes = payload.get("classes") or None
    if classes is not None:
        bad = [c for c in classes if c not in outcome.CLASSES]
        if bad:
            raise UnknownClass(f"unknown failure class(es): {', '.join(bad)}", classes=bad)
    chosen = list(classes) if classes else sorted(outcome.TEMPORARY)
    manifest = kind.svc.manifests.get(job)
    size = manifest.urllist.shard_size if manifest is not None and manifest.urllist else 10_000
    if kind.fleet.clustered and reply is not None:
        # The failure queue of a clustered job is in Redis: asked on the fleet thread.
        kind.fleet.defer({**payload, "job": job_id, "chosen": chosen}, reply, size)
        return DEFERRED
    if cmd == "failures":
        offset = int(payload.get("offset", 0))
        page = failure_page(
            kind.queue.failures(job_id, classes), offset, int(payload.get("limit", 0))
        )
        return {"ok": True, "result": {"job": job_id, "offset": offset, "failures": page}}
    shards = kind.queue.retry_failed(job_id, chosen, size)
    samples = sum(s.size for s in shards)
    kind.svc.event(
        "info",
        f"retry: {samples} failed sample(s) of {', '.join(chosen)} in {len(shards)} shard(s)",
        job_id=job_id,
    )
    if shards:
        kind.rerun(job_id)
    return {"ok": True, "result": {"job": job_id, "shards": len(shards), "samples": samples}}

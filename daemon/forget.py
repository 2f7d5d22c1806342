"""``forget``: remove a finished, failed or cancelled job from the daemon's list, and
with ``delete_data`` its destination folder too.

Runs on the state thread (it is called from the service's request handler), so it only
decides and renames: the destination is moved aside in one ``rename`` and deleted by a
background thread, never walked on the state thread.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acquired.daemon.errors import DaemonError
from acquired.daemon.states import job_is_active, job_state

if TYPE_CHECKING:
    from acquired.daemon.service import Service

TRASH_PREFIX = ".acquired-forgotten-"


class JobStillActive(DaemonError):
    """``forget`` on a job that can still move."""

    code = "control.job_active"
    hint = "Cancel it first (`acquirectl cancel JOB`), then forget it."


class DataNotDeleted(DaemonError):
    """``--delete-data`` where the destination is shared or not a plain folder."""

    code = "control.data_not_deleted"
    hint = "Delete the files yourself, or forget the job without --delete-data."


def forget_job(service: Service, payload: dict[str, Any]) -> dict[str, Any]:
    """Forget the job named in ``payload`` (``delete_data``: and its destination)."""
    from acquired.daemon.service import UnknownJob

    job_id = str(payload.get("job", ""))
    delete = bool(payload.get("delete_data"))
    job = service.store.get_job(job_id)
    if job is None:
        raise UnknownJob(f"no job named '{job_id}'", job=job_id)
    totals = service.store.job_totals(job_id)
    state = job_state(totals.counts, job.finish)
    busy = any(a.job_id == job_id for a in service.active.values())
    if job_is_active(totals.counts, job.finish) or busy:
        raise JobStillActive(
            f"job '{job_id}' is {state}; only a done, failed or cancelled job can be "
            f"forgotten — `acquirectl cancel {job_id}` first",
            job=job_id,
            state=state,
        )
    root = service.config.data_root
    dest = root / job.destination
    if delete:
        _check_deletable(root, dest, job_id, [j.destination for j in service.store.list_jobs()])
    service.store.delete_job(job_id)
    with contextlib.suppress(OSError):
        manifest = Path(job.manifest_path)
        if manifest.parent == service.manifests_dir:
            manifest.unlink()
    deleted = _delete_aside(root, dest, job_id) if delete and dest.exists() else None
    what = " and its data" if deleted else ""
    service._event("info", f"job {job_id} ({state}) forgotten{what}")
    return {"job": job_id, "state": state, "deleted": str(dest) if deleted else None}


def _check_deletable(root: Path, dest: Path, job_id: str, destinations: list[str]) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise DataNotDeleted(f"{dest} is not a plain folder; nothing was deleted", job=job_id)
    mine = Path(dest).relative_to(root)
    shared = []
    for other in destinations:
        other_path = Path(other)
        if other_path == mine:
            continue
        if other_path.is_relative_to(mine) or mine.is_relative_to(other_path):
            shared.append(other)
    # the job's own row is among ``destinations`` once; a second equal one is another job
    if destinations.count(str(mine)) > 1 or shared:
        raise DataNotDeleted(
            f"{dest} is shared with other jobs' destinations ({', '.join(shared) or mine}); "
            "nothing was deleted",
            job=job_id,
        )


def _delete_aside(root: Path, dest: Path, job_id: str) -> Path:
    trash = root / f"{TRASH_PREFIX}{job_id}-{time.time_ns()}"
    dest.rename(trash)
    threading.Thread(
        target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True}, daemon=True
    ).start()
    return trash

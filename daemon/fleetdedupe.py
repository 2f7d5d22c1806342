"""The cluster-wide dedupe of a finished fleet job: ``duplicates.parquet`` beside
``index.parquet``, written by one node.

When a clustered job finishes on a node (no shard queued or claimed in the fleet, so the
shard index is complete), the fleet thread compares the shards in the index with those
this node can read under the job's destination:

- all of them (a shared filesystem): the node takes the job's lock in Redis
  (``SET NX`` with a TTL, named by the count of done shards so that a job finished again
  after ``retry --failed`` is passed over again); the one that gets it runs the pass over
  every shard, the others do nothing;
- only some (node-local output): each node passes over its own shards and writes its own
  ``duplicates.parquet``; duplicates between nodes' local shards are then not found.

The pass itself (:mod:`acquired.sources.urllist.finishing`) runs on a thread of its own,
never on the state or fleet thread; its outcome comes back as a job event.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acquired.common.safepath import open_dir_beneath, write_beneath
from acquired.daemon.errors import describe
from acquired.sources.urllist import finishing
from acquired.sources.urllist.settings import DedupeSettings

LOCK_TTL_S = 24 * 3600.0

__all__ = ["pass_scope", "run_pass", "schedule"]


def pass_scope(index: dict[int, str], readable: list[int]) -> str:
    """``all`` (every shard of the index is readable here: one node passes over all),
    ``local`` (only some: this node passes over its own), or ``none``. Pure."""
    if not readable:
        return "none"
    return "all" if set(index) <= set(readable) else "local"


def run_pass(data_root: Path, destination: str, dedupe: DedupeSettings) -> dict[str, int]:
    """Read every finished shard under the destination, write ``duplicates.parquet``
    atomically beside ``index.parquet``; returns the counts by kind and of shards read."""
    dir_fd = open_dir_beneath(data_root, destination)
    try:
        samples = finishing.read_shards(dir_fd)
    finally:
        os.close(dir_fd)
    table = finishing.find_duplicates(
        samples,
        exact=dedupe.exact,
        perceptual=dedupe.perceptual,
        max_distance=dedupe.max_distance,
    )
    rel = f"{destination}/{finishing.DUPLICATES_NAME}"
    write_beneath(data_root, rel, finishing.table_bytes(table), sync_dir=True)
    return {**finishing.counts(table), "shards": samples.shards, "samples": len(samples.key)}


def readable_shards(data_root: Path, destination: str) -> list[int]:
    """The finished shards this node can read under the destination (none if absent)."""
    try:
        dir_fd = open_dir_beneath(data_root, destination)
    except OSError:
        return []
    try:
        return finishing.finished_shards(dir_fd)
    finally:
        os.close(dir_fd)


def schedule(side: Any, job: Any, manifest: Any) -> None:
    """After ``index.parquet`` of a clustered job (``side`` is its ``FleetSide``):
    decide on the fleet thread whether this node passes over the shards, and do it on a
    thread of its own, with the dedupe settings of the job's ``[urllist]``."""
    view = side.view
    spec = getattr(manifest, "urllist", None)
    if view is None or spec is None:
        return
    from acquired.daemon.kinds.urllist_plan import job_settings

    dedupe = job_settings(spec, Path(spec.input))[1].dedupe
    if not (dedupe.exact or dedupe.perceptual):
        return
    from acquired.daemon.fleetview import FleetRequest
    from acquired.daemon.kinds.urllist_fleet import FleetNote

    data_root, dest, post, job_id = side.svc.config.data_root, job.destination, side.post, job.id

    def note(level: str, message: str, code: str | None = None) -> None:
        post(FleetNote(level, message, job_id, code))

    def work() -> None:
        try:
            c = run_pass(data_root, dest, dedupe)
        except Exception as exc:
            info = describe(exc)
            note("warning", f"{finishing.DUPLICATES_NAME} not written: {info.message}", info.code)
            return
        note(
            "info",
            f"{finishing.DUPLICATES_NAME}: duplicates exact {c['exact']}, perceptual "
            f"{c['perceptual']} among {c['samples']} samples of {c['shards']} shard(s)",
        )

    def decide(q: Any) -> None:
        index = q.shard_index(job_id)
        scope = pass_scope(index, readable_shards(data_root, dest))
        if scope == "none":
            return
        if scope == "all" and not q.try_lock(f"job:{job_id}:dedupe:{len(index)}", LOCK_TTL_S):
            return  # another node passes over the shared destination
        _start(work, f"dedupe-{job_id}")

    view.submit(
        FleetRequest(
            f"dedupe pass of {job_id}",
            decide,
            lambda info: note("warning", f"dedupe pass not started: {info.get('message')}"),
        )
    )


def _start(work: Callable[[], None], name: str) -> None:
    threading.Thread(target=work, name=name, daemon=True).start()

"""Messages the URL-list planner and runner post to the state thread: a few per shard
and one report a second per job, never one per sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UrllistPlanned:
    """The planner's end: the job's plan (``acquired.daemon.kinds.urllist_plan.Plan``),
    or the error that stops the job."""

    job_id: str
    token: int
    plan: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class UrllistReport:
    """A job's figures, about once a second: the queue's counts plus the shards in
    flight (done, ok and bytes so far), rates measured by the runner, and why it does not
    claim (disk, quota) if it does not."""

    job_id: str
    token: int
    shards: dict[str, int]
    samples: dict[str, int]
    bytes: int
    live_done: int = 0
    live_ok: int = 0
    live_bytes: int = 0
    in_progress: list[dict[str, Any]] = field(default_factory=list)
    samples_per_s: float = 0.0
    bytes_per_s: float = 0.0
    hold: str | None = None
    dead: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class UrllistShardEnded:
    """One shard durable and acked (``summary``), or given back with ``error``."""

    job_id: str
    token: int
    shard_id: int
    name: str
    summary: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    state: str = "done"


@dataclass(frozen=True)
class UrllistEnded:
    """The runner stopped: every shard done or dead (``finished``), or it was stopped or
    failed (``error``)."""

    job_id: str
    token: int
    finished: bool
    error: BaseException | None = None


UrllistMessage = UrllistPlanned | UrllistReport | UrllistShardEnded | UrllistEnded

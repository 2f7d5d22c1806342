"""The work queue of URL-list jobs: shards are the unit of work, claimed with a lease.

One interface, two implementations: :mod:`acquired.daemon.shardstore` (SQLite, one node)
and :mod:`acquired.daemon.redisqueue` (Redis Streams, a fleet of nodes). The daemon only
ever talks to :class:`WorkQueue`, in this order for each shard::

    queue.publish(QueueJob(name, digest), shards)   # once per job (or in slices)
    leases = queue.claim(node, n, lease_s)           # only while workers and disk are free
    queue.renew(lease)                               # well before lease.deadline
    queue.record_failures(job, shard_id, failures)   # the shard's failed samples
    queue.ack(lease, summary)                        # only once the shard is durable
    queue.nack(lease, error)                         # or: give it back (dead after N)

Contracts both implementations keep (and the shared tests check):

* **Counters are additive and counted once per shard.** ``ack`` adds the shard's
  :class:`ShardSummary` to the job's counters only the first time a shard is acked; a
  second ack (a slow node coming back after its lease was taken over) is harmless.
  An ack with an expired or taken-over lease is still accepted: shard output is
  idempotent, so whoever finishes first wins.
* **Summary keys are ``"ok"`` or a failure class** (``timeout``, ``http_5xx``,
  ``filtered_small``, ``duplicate``, ...), and the failures recorded for a shard carry the
  same classes, so that :meth:`WorkQueue.retry_failed` can move the retried samples out of
  their class counters. The sum of a job's sample counters is the number of input rows
  accounted for.
* **A failure belongs to the shard that last tried it.** ``record_failures`` replaces the
  failures of that shard (redoing a shard is idempotent); ``retry_failed`` moves the chosen
  failures to the new retry shards, whose own ``record_failures`` then replaces them with
  what still fails.
* **Dead letters.** A shard delivered ``max_deliveries`` times (nacked, or its lease
  expired) is not handed out again: it is *dead*, with its last error, in
  :meth:`WorkQueue.dead`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from .errors import DaemonError

__all__ = [
    "DEFAULT_MAX_DELIVERIES",
    "FAILURE_CLASSES",
    "ClusterAuthFailed",
    "ClusterConfigError",
    "ClusterUnreachable",
    "ClusterVersionTooOld",
    "DeadShard",
    "FailedSample",
    "JobConflict",
    "Lease",
    "LeaseLost",
    "QueueCounts",
    "QueueError",
    "QueueJob",
    "ShardSpec",
    "ShardSummary",
    "WorkQueue",
    "plan_retry_shards",
    "plan_shards",
]

DEFAULT_MAX_DELIVERIES = 5

# The classes of a failed sample (issue "URL-list jobs"); the fetch engine may add more,
# the queue only stores and filters them.
FAILURE_CLASSES: tuple[str, ...] = (
    "timeout",
    "dns",
    "connect",
    "http_4xx",
    "http_5xx",
    "http_429",
    "too_large",
    "not_image",
    "decode",
    "filtered_small",
    "filtered_aspect",
    "duplicate",
    "invalid_row",
)

ShardState = Literal["queued", "claimed", "done", "dead"]
SHARD_STATES: tuple[ShardState, ...] = ("queued", "claimed", "done", "dead")


# -- errors ---------------------------------------------------------------------------


class QueueError(DaemonError):
    """Base of the work queue's failures."""

    code: ClassVar[str] = "queue.error"
    hint: ClassVar[str] = "See the daemon's log for details."


class JobConflict(QueueError):
    """A different manifest was published under the name of a job the queue holds."""

    code: ClassVar[str] = "queue.job_conflict"
    hint: ClassVar[str] = (
        "Give the new manifest another name, or wait until the running job is finished and removed."
    )


class LeaseLost(QueueError):
    """The lease of a shard cannot be renewed: it expired and another consumer holds it,
    or the shard is finished or dead. The shard's work may still be acked."""

    code: ClassVar[str] = "queue.lease_lost"
    hint: ClassVar[str] = (
        "The shard took longer than the lease; renew more often or raise [cluster] lease."
    )
    retryable: ClassVar[bool] = True


class ClusterConfigError(QueueError):
    """The ``[cluster]`` settings cannot be used as written (URL, password file)."""

    code: ClassVar[str] = "cluster.config"
    hint: ClassVar[str] = (
        'Write redis_url as "redis://host:6379/0" or "rediss://host:6380/0" and make '
        "password_file readable by the daemon's user."
    )


class ClusterUnreachable(QueueError):
    """The Redis server of the cluster does not answer."""

    code: ClassVar[str] = "cluster.unreachable"
    hint: ClassVar[str] = (
        "Check that redis-server runs on the host and port of [cluster] redis_url and that "
        "this node may connect to it (bind address, firewall, TLS for rediss://)."
    )
    retryable: ClassVar[bool] = True


class ClusterAuthFailed(QueueError):
    """Redis refused the password (or wants one and none was given)."""

    code: ClassVar[str] = "cluster.auth_failed"
    hint: ClassVar[str] = (
        "Put the server's requirepass (or the ACL user's password) into the file named by "
        "[cluster] password_file, on one line, readable by the daemon's user."
    )


class ClusterVersionTooOld(QueueError):
    """The Redis server is older than 6.2, which lacks XAUTOCLAIM."""

    code: ClassVar[str] = "cluster.redis_too_old"
    hint: ClassVar[str] = (
        "Use Redis 6.2 or newer (Debian 12's redis-server is 7.0): taking over the shards "
        "of a dead node needs XAUTOCLAIM."
    )


# -- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueJob:
    """A job as the queue knows it: its name, its manifest digest, and (for a fleet,
    where other nodes must read it) the manifest itself as JSON-able data."""

    name: str
    digest: str
    manifest: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: rows ``[start_row, stop_row)`` of the job's input.

    ``byte_offset`` lets a text reader seek to the shard's first row instead of reading
    from the start. A *retry* shard re-feeds failed samples: ``rows`` lists their row
    indexes (``start_row``/``stop_row`` bound them).
    """

    job: str
    shard_id: int
    start_row: int
    stop_row: int
    byte_offset: int | None = None
    kind: Literal["normal", "retry"] = "normal"
    rows: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Number of input rows the shard covers."""
        return len(self.rows) if self.kind == "retry" else self.stop_row - self.start_row

    def to_json(self) -> str:
        """Compact JSON of the shard's slice (the job is stored beside it, not in it)."""
        # Formatted by hand: every value is an int, and json.dumps was half the cost of
        # publishing 10^5 shards.
        text = f'{{"s":{int(self.start_row)},"e":{int(self.stop_row)}'
        if self.byte_offset is not None:
            text += f',"o":{int(self.byte_offset)}'
        if self.kind == "retry":
            text += ',"r":[' + ",".join(str(int(r)) for r in self.rows) + "]"
        return text + "}"

    @classmethod
    def from_json(cls, job: str, shard_id: int, text: str | bytes) -> ShardSpec:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        rows = tuple(data.get("r", ()))
        return cls(
            job=job,
            shard_id=shard_id,
            start_row=data["s"],
            stop_row=data["e"],
            byte_offset=data.get("o"),
            kind="retry" if "r" in data else "normal",
            rows=rows,
        )


@dataclass(frozen=True)
class Lease:
    """A claimed shard. ``token`` identifies this delivery to the implementation;
    ``deadline`` is the local wall-clock time the lease runs out unless renewed."""

    shard: ShardSpec
    consumer: str
    token: str
    deadline: float
    deliveries: int


@dataclass(frozen=True)
class ShardSummary:
    """What a finished shard adds to its job: samples by status and bytes written."""

    samples: Mapping[str, int] = field(default_factory=dict)
    bytes: int = 0

    def __add__(self, other: ShardSummary) -> ShardSummary:
        merged = dict(self.samples)
        for key, n in other.samples.items():
            merged[key] = merged.get(key, 0) + n
        return ShardSummary(merged, self.bytes + other.bytes)

    @property
    def total(self) -> int:
        """Samples accounted for."""
        return sum(self.samples.values())


@dataclass(frozen=True)
class FailedSample:
    """One failed sample, kept until it is retried successfully."""

    row: int
    url: str
    cls: str
    message: str = ""
    http_status: int | None = None
    attempts: int = 1
    shard_id: int = -1  # the shard that last tried it; filled in by the queue

    def to_json(self) -> str:
        """Compact JSON (the shard id is implied by where it is stored)."""
        return json.dumps(
            [self.row, self.url, self.cls, self.message, self.http_status, self.attempts],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, shard_id: int, data: list[Any]) -> FailedSample:
        """The inverse of :meth:`to_json` (``data`` already decoded)."""
        row, url, klass, message, status, attempts = data
        return cls(row, url, klass, message, status, attempts, shard_id)


@dataclass(frozen=True)
class DeadShard:
    """A shard that is not handed out again, with why."""

    shard_id: int
    deliveries: int
    last_error: str


@dataclass(frozen=True)
class QueueCounts:
    """A job's progress: shards by state, samples by status, bytes written."""

    shards: Mapping[str, int]
    samples: Mapping[str, int]
    bytes: int

    @property
    def shards_total(self) -> int:
        """Shards published, retry shards included."""
        return sum(self.shards.values())

    @property
    def finished(self) -> bool:
        """No shard is queued or claimed any more."""
        return self.shards.get("queued", 0) == 0 and self.shards.get("claimed", 0) == 0


# -- the interface --------------------------------------------------------------------


@runtime_checkable
class WorkQueue(Protocol):
    """What the daemon calls; see the module's docstring for the contracts."""

    max_deliveries: int

    def publish(self, job: QueueJob, shards: Iterable[ShardSpec], final: bool = True) -> bool:
        """Publish a job and its shards, numbered 0, 1, 2, ... in that order.

        ``final=False`` leaves the job open: a later call with the same job adds the next
        shards (those already there are skipped), so a large plan can be published in
        slices that each take milliseconds; the call with ``final=True`` closes it. A
        publisher that died half-way is continued the same way.

        Returns True when this call created the job or added shards, False when the same
        manifest (same digest) was already published and closed — nothing is added
        again. Raises :class:`JobConflict` for a different digest under the same name.
        """
        ...

    def claim(
        self, consumer: str, n: int, lease_s: float, jobs: Iterable[str] | None = None
    ) -> list[Lease]:
        """Up to ``n`` shards for ``consumer``: first those whose lease expired (another
        consumer died), then new ones, oldest job first; only of ``jobs`` when given.

        A lease expires when its shard was neither claimed nor renewed for ``lease_s`` of
        the *claimer* (Redis measures idle time, not deadlines): every node of a job must
        use the same lease, and renew well within it.
        """
        ...

    def renew(self, lease: Lease, lease_s: float) -> Lease:
        """Extend a lease; raises :class:`LeaseLost` when it is no longer this one's."""
        ...

    def ack(self, lease: Lease, summary: ShardSummary) -> None:
        """The shard is durable: mark it done and count ``summary``, once per shard."""
        ...

    def nack(self, lease: Lease, error: str, requeue: bool = True) -> ShardState:
        """Give the shard back: queued again (``requeue`` and under ``max_deliveries``),
        else dead with ``error``. Returns the shard's new state."""
        ...

    def recover(self, consumer: str) -> int:
        """At start-up: shards ``consumer`` held in a previous life go back to the queue
        at once instead of waiting for their lease. Returns how many."""
        ...

    def counts(self, job: str) -> QueueCounts:
        """Shards by state, samples by status, bytes, for ``job``."""
        ...

    def dead(self, job: str) -> list[DeadShard]:
        """The job's dead shards with their last error."""
        ...

    def record_failures(self, job: str, shard_id: int, failures: Iterable[FailedSample]) -> None:
        """Replace the failed samples of one shard (call before :meth:`ack`)."""
        ...

    def failures(self, job: str, classes: Iterable[str] | None = None) -> Iterator[FailedSample]:
        """Stream the job's failed samples, optionally only those of ``classes``."""
        ...

    def retry_failed(
        self, job: str, classes: Iterable[str] | None = None, shard_size: int = 10_000
    ) -> list[ShardSpec]:
        """Re-feed failed samples (of ``classes``, or all) as new retry shards, queued at
        once; their classes' counters drop by the samples re-fed. Returns the new shards."""
        ...

    def remove(self, job: str) -> None:
        """Forget a job: its shards, counters and failures."""
        ...


def plan_retry_shards(
    job: str, first_shard_id: int, rows: Iterable[int], shard_size: int
) -> list[ShardSpec]:
    """Group failed rows (any order) into retry shards of at most ``shard_size`` rows,
    numbered from ``first_shard_id``. Pure; shared by both implementations."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    ordered = sorted(set(rows))
    out: list[ShardSpec] = []
    for i in range(0, len(ordered), shard_size):
        chunk = tuple(ordered[i : i + shard_size])
        out.append(
            ShardSpec(
                job=job,
                shard_id=first_shard_id + len(out),
                start_row=chunk[0],
                stop_row=chunk[-1] + 1,
                kind="retry",
                rows=chunk,
            )
        )
    return out


def plan_shards(job: str, rows: int, shard_size: int) -> Iterator[ShardSpec]:
    """Normal shards covering ``rows`` input rows, ``shard_size`` each (the last may be
    smaller). Pure; readers that know byte offsets build their own specs instead."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    for shard_id, start in enumerate(range(0, rows, shard_size)):
        yield ShardSpec(job, shard_id, start, min(start + shard_size, rows))

"""The :class:`WorkQueue` of a fleet: Redis Streams consumer groups (the only module that
imports redis).

The keys and the Lua scripts are in :mod:`acquired.daemon.redisscripts`; the failure
queue in :mod:`acquired.daemon.redisfailures`.

Claiming is ``XAUTOCLAIM`` (shards idle past the lease: a dead or partitioned node) then
``XREADGROUP``; ``ack`` is one Lua script (``XACK`` + count once + index); ``nack``
acknowledges the entry and adds a new one carrying the delivery count, or dead-letters
it. Acks, nacks and failures given while Redis is unreachable wait in an ordered buffer
and are delivered after the reconnection (with backoff); claiming pauses meanwhile.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from . import redisscripts as scripts
from .cluster_config import ClusterSettings
from .redisfailures import RedisFailures
from .redisfleet import RedisFleet
from .redisscripts import GROUP, Keys
from .workqueue import (
    DEFAULT_MAX_DELIVERIES,
    ClusterAuthFailed,
    ClusterConfigError,
    ClusterUnreachable,
    ClusterVersionTooOld,
    DeadShard,
    JobConflict,
    Lease,
    LeaseLost,
    QueueCounts,
    QueueError,
    QueueJob,
    ShardSpec,
    ShardState,
    ShardSummary,
)

__all__ = [
    "MIN_REDIS_VERSION",
    "RedisWorkQueue",
    "check_server_version",
    "connect",
    "connect_cluster",
    "read_password",
    "start_cluster_check",
]

LOG = logging.getLogger("acquired.cluster")

MIN_REDIS_VERSION = (6, 2, 0)
_PUBLISH_CHUNK = 1000
_T = TypeVar("_T")


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^@/]*@")


def redact(url: str) -> str:
    """``url`` with its user name and password replaced, whatever else is wrong with it
    (a URL that does not parse must still be shown safely in the error about it)."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", url)


def read_password(path: Path) -> str:
    """The password in ``path`` (one line; the trailing newline is not part of it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterConfigError(
            f"[cluster] password_file {path}: cannot read it: {exc.strerror or exc}",
            path=str(path),
        ) from None
    password = text.rstrip("\r\n")
    if not password or "\n" in password:
        raise ClusterConfigError(
            f"[cluster] password_file {path}: must hold the password on exactly one line",
            path=str(path),
        )
    return password


def check_server_version(version: str) -> tuple[int, ...]:
    """Parse INFO's ``redis_version``; :class:`ClusterVersionTooOld` below 6.2."""
    try:
        parts = tuple(int(p) for p in version.split(".")[:3])
    except ValueError:
        raise ClusterVersionTooOld(f"unrecognised Redis version {version!r}") from None
    if parts < MIN_REDIS_VERSION:
        raise ClusterVersionTooOld(
            f"Redis {version} is too old: acquired needs 6.2 or newer (XAUTOCLAIM)",
            version=version,
        )
    return parts


def connect(
    url: str,
    *,
    node: str | None = None,
    password: str | None = None,
    password_file: Path | None = None,
    prefix: str = "acq",
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    timeout: float = 5.0,
    backoff: AbstractBackoff | None = None,
) -> RedisWorkQueue:
    """Open the cluster's queue and check the server at start-up: reachable, the password
    accepted, Redis >= 6.2. Each failure is its own error class with a hint; the URL is
    shown with its password redacted."""
    shown = redact(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ClusterConfigError(
            f"[cluster] redis_url {shown!r}: must start with redis://, rediss:// or unix://",
            url=shown,
        )
    if password_file is not None:
        password = read_password(password_file)
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No retries inside a call: the queue backs off between calls instead, so a caller
        # is never held for a series of reconnection attempts.
        "retry": Retry(NoBackoff(), 0),
    }
    if password is not None:
        options["password"] = password
    try:
        client = redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ClusterConfigError(f"[cluster] redis_url {shown!r}: {exc}", url=shown) from None
    try:
        client.ping()
        version = str(client.info("server").get("redis_version", "0"))
    except redis.AuthenticationError as exc:
        client.close()
        raise ClusterAuthFailed(
            f"Redis at {shown} refused the password: {exc}", url=shown
        ) from None
    except redis.ResponseError as exc:
        client.close()
        if "NOPERM" in str(exc) or "NOAUTH" in str(exc):
            raise ClusterAuthFailed(f"Redis at {shown}: {exc}", url=shown) from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        client.close()
        raise ClusterUnreachable(f"Redis at {shown} does not answer: {exc}", url=shown) from None
    try:
        check_server_version(version)
    except ClusterVersionTooOld:
        client.close()
        raise
    return RedisWorkQueue(
        client,
        node=node or socket.gethostname(),
        prefix=prefix,
        max_deliveries=max_deliveries,
        backoff=backoff,
    )


def _fields(entry: tuple[str, Mapping[str, str]] | list[Any]) -> tuple[str, int, str, int]:
    entry_id, fields = entry[0], entry[1]
    return entry_id, int(fields["s"]), fields["p"], int(fields.get("d", 0))


def connect_cluster(settings: ClusterSettings, **kwargs: Any) -> RedisWorkQueue:
    """:func:`connect` with the ``[cluster]`` section of the configuration."""
    return connect(
        settings.redis_url,
        node=settings.node_name,
        password_file=settings.password_file,
        prefix=settings.prefix,
        max_deliveries=settings.max_deliveries,
        **kwargs,
    )


def check_cluster(settings: ClusterSettings) -> QueueError | None:
    """Connect once as the daemon starts, so that a wrong URL, a refused password or an
    old server is in the log (journald) with its code and hint before any job needs the
    fleet; returns the error, None when the server is usable. Never raises."""
    shown = redact(settings.redis_url)
    try:
        queue = connect_cluster(settings)
    except QueueError as exc:
        LOG.error(
            "[cluster] %s — %s (jobs on this node alone go on)",
            exc,
            exc.hint,
            extra={"code": exc.code},
        )
        return exc
    try:
        version = queue.client.info("server").get("redis_version", "?")
    except (redis.RedisError, OSError):
        version = "?"
    finally:
        queue.close()
    LOG.info("[cluster] node %s on Redis %s at %s", settings.node_name, version, shown)
    return None


def start_cluster_check(settings: ClusterSettings | None) -> threading.Thread | None:
    """:func:`check_cluster` on a thread of its own (a server that does not answer may
    take the connection timeout, which start-up does not wait for)."""
    if settings is None:
        return None
    thread = threading.Thread(
        target=check_cluster, args=(settings,), name="cluster-check", daemon=True
    )
    thread.start()
    return thread


class RedisWorkQueue(RedisFailures, RedisFleet):
    """:class:`~acquired.daemon.workqueue.WorkQueue` on Redis Streams, plus what a fleet
    needs beyond it: node heartbeats, the shard index, the buffered reports.

    Used by one thread (the daemon's queue thread): the report buffer is not locked.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        node: str,
        prefix: str = "acq",
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        backoff: AbstractBackoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Typed as Any: with decode_responses=True every reply is str, which redis-py's
        # stubs (bytes | str unions per call) cannot express.
        self.client: Any = client
        self.node = node
        self.prefix = prefix
        self.max_deliveries = max_deliveries
        self._clock = clock
        self._backoff = backoff or ExponentialWithJitterBackoff(base=0.5, cap=10.0)
        self.round_trips = 0  # calls to the server (a pipeline or a script is one)
        self._failures = 0
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._last_error = ""
        # Reports (failures, acks, nacks) in the order given; delivered by flush().
        self._buffer: deque[Callable[[], object]] = deque()
        self._create = client.register_script(scripts.CREATE)
        self._publish = client.register_script(scripts.PUBLISH)
        self._ack = client.register_script(scripts.ACK)
        self._nack = client.register_script(scripts.NACK)
        self._renew = client.register_script(scripts.RENEW)
        self._record = client.register_script(scripts.FAILURES)

    def close(self) -> None:
        """Close the connections."""
        self.client.close()

    def _keys(self, job: str) -> Keys:
        return Keys(self.prefix, job)

    # -- connection state ---------------------------------------------------------------

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` unless backing off; a lost connection starts the backoff."""
        now = time.monotonic()
        if self._down_since is not None and now < self._retry_at:
            raise ClusterUnreachable(
                f"Redis unreachable ({self._last_error}); next attempt in "
                f"{self._retry_at - now:.1f} s",
                buffered=len(self._buffer),
            )
        self.round_trips += 1
        try:
            result = fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._failures += 1
            self._last_error = str(exc)
            if self._down_since is None:
                self._down_since = self._clock()
            self._retry_at = time.monotonic() + self._backoff.compute(self._failures)
            raise ClusterUnreachable(
                f"Redis unreachable: {exc}", buffered=len(self._buffer)
            ) from None
        self._failures = 0
        self._down_since = None
        return result

    def status(self) -> dict[str, Any]:
        """For status and journald: connected or since when not, reports waiting."""
        return {
            "node": self.node,
            "connected": self._down_since is None,
            "down_since": self._down_since,
            "retry_in": max(0.0, self._retry_at - time.monotonic()) if self._down_since else 0,
            "last_error": self._last_error if self._down_since else "",
            "buffered": len(self._buffer),
        }

    def flush(self) -> int:
        """Deliver buffered reports in order; returns how many are still waiting. Stops
        at the first that cannot be delivered (it stays first)."""
        while self._buffer:
            try:
                self._call(self._buffer[0])
            except ClusterUnreachable:
                break
            except Exception:
                # Refused by the server (not a lost connection): trying it again would
                # block every report behind it.
                self._buffer.popleft()
                raise
            self._buffer.popleft()
        return len(self._buffer)

    def _report(self, op: Callable[[], object]) -> None:
        self._buffer.append(op)
        self.flush()

    # -- publishing ---------------------------------------------------------------------

    def publish(self, job: QueueJob, shards: Iterable[ShardSpec], final: bool = True) -> bool:
        """See :meth:`WorkQueue.publish`. Shards must be numbered 0, 1, ... in order: a
        publisher that died half-way (or another node publishing the same job at the same
        time) is continued where the job's ``next`` says, never duplicated."""
        k = self._keys(job.name)
        manifest = json.dumps(dict(job.manifest or {}), separators=(",", ":"))
        result = self._call(
            lambda: self._create(
                keys=[k.meta, f"{self.prefix}:jobs", k.stream],
                args=[job.digest, manifest, self._clock(), job.name],
            )
        )
        if result.startswith("conflict:"):
            raise JobConflict(
                f"job {job.name!r} is already published with another manifest",
                job=job.name,
                digest=job.digest,
                queued_digest=result.split(":", 1)[1],
            )
        if result == "same" and self._call(lambda: self.client.hget(k.meta, "complete")) == "1":
            return False
        added = False
        chunk: list[ShardSpec] = []
        for spec in shards:
            chunk.append(spec)
            if len(chunk) >= _PUBLISH_CHUNK:
                added |= self._publish_chunk(k, job.digest, chunk)
                chunk = []
        if chunk:
            added |= self._publish_chunk(k, job.digest, chunk)
        if final:
            self._call(lambda: self.client.hset(k.meta, "complete", 1))
        return result == "new" or added

    def _publish_chunk(self, k: Keys, digest: str, chunk: list[ShardSpec]) -> bool:
        while chunk:
            lines = "\n".join(f"{s.shard_id} {s.to_json()}" for s in chunk)
            args: list[Any] = [digest, chunk[0].shard_id, lines]
            nxt = int(self._call(partial(self._publish, keys=[k.meta, k.stream], args=args)))
            if nxt == -1:
                return True
            if nxt == -2:
                raise JobConflict(f"job {chunk[0].job!r} was replaced while publishing")
            if nxt < chunk[0].shard_id:
                raise ValueError(f"shards must be published in order from {nxt}")
            chunk = [s for s in chunk if s.shard_id >= nxt]
        return False

    # -- leases -------------------------------------------------------------------------

    def _jobs(self, only: Iterable[str] | None) -> list[str]:
        names: list[str] = self._call(lambda: self.client.zrange(f"{self.prefix}:jobs", 0, -1))
        if only is not None:
            wanted = set(only)
            names = [n for n in names if n in wanted]
        return names

    def claim(
        self, consumer: str, n: int, lease_s: float, jobs: Iterable[str] | None = None
    ) -> list[Lease]:
        """See :meth:`WorkQueue.claim`; returns nothing while Redis is unreachable."""
        leases: list[Lease] = []
        if n <= 0:
            return leases
        try:
            self.flush()
            for job in self._jobs(jobs):
                leases += self._claim_job(job, consumer, n - len(leases), lease_s)
                if len(leases) >= n:
                    break
        except ClusterUnreachable:
            pass  # claiming pauses; the leases already taken are worked on
        return leases

    def _claim_job(self, job: str, consumer: str, n: int, lease_s: float) -> list[Lease]:
        k = self._keys(job)
        idle_ms = max(1, int(lease_s * 1000))
        taken: list[tuple[str, int, str, int]] = []  # entry id, shard, spec, deliveries
        reply = self._call(
            lambda: self.client.xautoclaim(k.stream, GROUP, consumer, idle_ms, "0-0", count=n)
        )
        stolen = [_fields(e) for e in reply[1] if e and e[1]]
        if stolen:
            pipe = self.client.pipeline(transaction=False)
            for entry_id, *_ in stolen:
                pipe.xpending_range(k.stream, GROUP, entry_id, entry_id, 1)
            pending = self._call(pipe.execute)
            for (entry_id, shard, spec, carried), p in zip(stolen, pending, strict=True):
                deliveries = carried + (p[0]["times_delivered"] if p else 1)
                if deliveries > self.max_deliveries:
                    error = f"lease expired on delivery {deliveries - 1} of {self.max_deliveries}"
                    self._call(partial(self._nack_call, k, entry_id, "", error, False))
                else:
                    taken.append((entry_id, shard, spec, deliveries))
        if len(taken) < n:
            fresh = self._call(
                lambda: self.client.xreadgroup(
                    GROUP, consumer, {k.stream: ">"}, count=n - len(taken)
                )
            )
            for _, entries in fresh or []:
                for e in entries:
                    entry_id, shard, spec, carried = _fields(e)
                    taken.append((entry_id, shard, spec, carried + 1))
        if not taken:
            return []
        # A shard acked by a slow node after it was requeued has a second entry: drop it.
        done = self._call(lambda: self.client.smismember(k.acked, [t[1] for t in taken]))
        deadline = self._clock() + lease_s
        leases = []
        for (entry_id, shard, spec, deliveries), is_done in zip(taken, done, strict=True):
            if is_done:
                self._call(partial(self.client.xack, k.stream, GROUP, entry_id))
                continue
            leases.append(
                Lease(
                    ShardSpec.from_json(job, shard, spec), consumer, entry_id, deadline, deliveries
                )
            )
        return leases

    def renew(self, lease: Lease, lease_s: float) -> Lease:
        """See :meth:`WorkQueue.renew`; raises :class:`ClusterUnreachable` while Redis is
        down (keep working: the shard is acked once it is back)."""
        k = self._keys(lease.shard.job)
        ok = self._call(lambda: self._renew(keys=[k.stream], args=[lease.token, lease.consumer]))
        if not ok:
            raise LeaseLost(
                f"shard {lease.shard.shard_id} of {lease.shard.job!r} is no longer leased to "
                f"{lease.consumer}",
                job=lease.shard.job,
                shard=lease.shard.shard_id,
            )
        return Lease(
            lease.shard, lease.consumer, lease.token, self._clock() + lease_s, lease.deliveries
        )

    def ack(self, lease: Lease, summary: ShardSummary) -> None:
        """See :meth:`WorkQueue.ack`; buffered while Redis is unreachable."""
        k = self._keys(lease.shard.job)
        args: list[Any] = [lease.token, lease.shard.shard_id, self.node, "bytes", summary.bytes]
        for key, n in summary.samples.items():
            args += [f"s:{key}", n]
        keys = [k.stream, k.acked, k.counters, k.index, k.deadset]
        self._report(lambda: self._ack(keys=keys, args=args))

    def _nack_call(self, k: Keys, entry_id: str, consumer: str, error: str, requeue: bool) -> str:
        return str(
            self._nack(
                keys=[k.stream, k.errors, k.dead, k.deadset, k.acked],
                args=[entry_id, consumer, error, int(requeue), self.max_deliveries],
            )
        )

    def nack(self, lease: Lease, error: str, requeue: bool = True) -> ShardState:
        """See :meth:`WorkQueue.nack`. While Redis is unreachable the nack is buffered and
        ``"claimed"`` returned (the shard stays with this node until it is delivered)."""
        k = self._keys(lease.shard.job)
        try:
            self.flush()
            state = self._call(
                lambda: self._nack_call(k, lease.token, lease.consumer, error, requeue)
            )
        except ClusterUnreachable:
            self._buffer.append(
                lambda: self._nack_call(k, lease.token, lease.consumer, error, requeue)
            )
            return "claimed"
        if state in ("queued", "dead", "done"):
            return state  # type: ignore[return-value]
        return "claimed"

    def recover(self, consumer: str) -> int:
        """See :meth:`WorkQueue.recover`."""
        return sum(self.recover_job(job, consumer) for job in self._jobs(None))

    def recover_job(self, job: str, consumer: str) -> int:
        """Give back at once the shards of ``job`` still pending under ``consumer`` (a
        runner starting on this node holds none: they are from its previous life, killed
        or stopped while Redis was away), instead of leaving them to the lease."""
        k = self._keys(job)
        pending = self._call(
            partial(
                self.client.xpending_range,
                k.stream,
                GROUP,
                "-",
                "+",
                100_000,
                consumername=consumer,
            )
        )
        count = 0
        for p in pending:
            state = self._call(
                partial(
                    self._nack_call,
                    k,
                    p["message_id"],
                    consumer,
                    "interrupted: the node restarted",
                    True,
                )
            )
            count += state in ("queued", "dead")
        return count

    # -- views --------------------------------------------------------------------------

    def counts(self, job: str) -> QueueCounts:
        """See :meth:`WorkQueue.counts`."""
        k = self._keys(job)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(k.meta, "next")
        pipe.scard(k.acked)
        pipe.hlen(k.deadset)
        pipe.exists(k.stream)
        pipe.hgetall(k.counters)
        total, done, dead, has_stream, counters = self._call(pipe.execute)
        claimed = 0
        if has_stream:
            claimed = int(self._call(lambda: self.client.xpending(k.stream, GROUP))["pending"])
        total = int(total or 0)
        shards = {
            "queued": max(0, total - done - dead - claimed),
            "claimed": claimed,
            "done": done,
            "dead": dead,
        }
        samples = {
            key[2:]: int(v) for key, v in counters.items() if key.startswith("s:") and int(v)
        }
        return QueueCounts(shards, samples, int(counters.get("bytes", 0)))

    def dead(self, job: str) -> list[DeadShard]:
        """See :meth:`WorkQueue.dead`."""
        raw = self._call(lambda: self.client.hgetall(self._keys(job).deadset))
        out = []
        for shard, value in raw.items():
            deliveries, error = json.loads(value)
            out.append(DeadShard(int(shard), int(deliveries), error))
        return sorted(out, key=lambda d: d.shard_id)

    def shard_index(self, job: str) -> dict[int, str]:
        """Which node wrote each done shard."""
        raw = self._call(lambda: self.client.hgetall(self._keys(job).index))
        return {int(s): node for s, node in raw.items()}

    def manifest(self, job: str) -> tuple[str, dict[str, Any]] | None:
        """The published job's (digest, manifest), for a node that did not submit it."""
        digest, manifest = self._call(
            lambda: self.client.hmget(self._keys(job).meta, ["digest", "manifest"])
        )
        if digest is None:
            return None
        return digest, json.loads(manifest or "{}")

    def heartbeat(self, report: Mapping[str, Any], ttl_s: float) -> None:
        """Say this node is alive, with its last report, for ``ttl_s`` seconds."""
        body = json.dumps({**report, "node": self.node, "ts": self._clock()})
        self._call(
            lambda: self.client.set(f"{self.prefix}:node:{self.node}", body, px=int(ttl_s * 1000))
        )

    def nodes(self) -> list[dict[str, Any]]:
        """The nodes whose heartbeat has not expired, with their last report."""
        keys = sorted(self._call(lambda: list(self.client.scan_iter(f"{self.prefix}:node:*"))))
        if not keys:
            return []
        values = self._call(lambda: self.client.mget(keys))
        return [json.loads(v) for v in values if v is not None]

    def try_lock(self, name: str, ttl_s: float) -> bool:
        """Take the lock ``name`` (under the prefix) for ``ttl_s`` unless a node holds it."""
        return bool(
            self._call(
                lambda: self.client.set(
                    f"{self.prefix}:{name}", self.node, nx=True, px=int(ttl_s * 1000)
                )
            )
        )

    def remove(self, job: str) -> None:
        """See :meth:`WorkQueue.remove`."""
        k = self._keys(job)
        self._call(lambda: self.client.delete(*k.all()))
        self._call(lambda: self.client.zrem(f"{self.prefix}:jobs", job))

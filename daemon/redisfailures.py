"""The failure queue of a clustered job, kept in Redis (part of the Redis work queue).

Failed samples are stored per shard (one hash field per shard, a JSON list), not one key
per sample: replacing a shard's failures on a redo is one HSET, and a job of 10^5 shards
is 10^5 fields however many samples fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, TypeVar

from .redisscripts import Keys
from .workqueue import FailedSample, ShardSpec, plan_retry_shards

__all__ = ["RedisFailures"]

_T = TypeVar("_T")


class RedisFailures:
    """Failure-queue methods of :class:`~acquired.daemon.redisqueue.RedisWorkQueue`."""

    client: Any
    node: str
    _record: Callable[..., Any]

    def _keys(self, job: str) -> Keys:
        raise NotImplementedError

    def _call(self, fn: Callable[[], _T]) -> _T:
        raise NotImplementedError

    def _report(self, op: Callable[[], object]) -> None:
        raise NotImplementedError

    # -- failures -----------------------------------------------------------------------

    def record_failures(self, job: str, shard_id: int, failures: Iterable[FailedSample]) -> None:
        """See :meth:`WorkQueue.record_failures`; buffered while Redis is unreachable."""
        k = self._keys(job)
        items = [f.to_json() for f in failures]
        body = "[" + ",".join(items) + "]" if items else ""
        self._report(lambda: self._record(keys=[k.acked, k.failures], args=[shard_id, body]))

    def failures(self, job: str, classes: Iterable[str] | None = None) -> Iterator[FailedSample]:
        """See :meth:`WorkQueue.failures` (in no particular order)."""
        only = set(classes) if classes is not None else None
        seen: set[str] = set()
        cursor = 0
        k = self._keys(job)
        while True:
            cursor, page = self._call(partial(self.client.hscan, k.failures, cursor, count=100))
            for shard, body in page.items():
                if shard in seen:
                    continue
                seen.add(shard)
                for item in json.loads(body):
                    sample = FailedSample.from_json(int(shard), item)
                    if only is None or sample.cls in only:
                        yield sample
            if cursor == 0:
                return

    def retry_failed(
        self, job: str, classes: Iterable[str] | None = None, shard_size: int = 10_000
    ) -> list[ShardSpec]:
        """See :meth:`WorkQueue.retry_failed`; one node at a time (a lock key), and only
        once the job is fully published."""
        k = self._keys(job)
        only = set(classes) if classes is not None else None
        if self._call(lambda: self.client.hget(k.meta, "complete")) != "1":
            return []
        if not self._call(lambda: self.client.set(k.retry_lock, self.node, nx=True, ex=300)):
            return []
        try:
            return self._retry_locked(k, job, only, shard_size)
        finally:
            self._call(lambda: self.client.delete(k.retry_lock))

    def _retry_locked(
        self, k: Keys, job: str, only: set[str] | None, shard_size: int
    ) -> list[ShardSpec]:
        keep: dict[int, list[FailedSample]] = {}
        moved: dict[int, FailedSample] = {}
        for f in self.failures(job):
            keep.setdefault(f.shard_id, [])
            if only is None or f.cls in only:
                moved[f.row] = f
            else:
                keep[f.shard_id].append(f)
        shards = sorted(keep)
        finished = self._call(lambda: self.client.smismember(k.acked, shards)) if shards else []
        dead = set(self._call(lambda: self.client.hkeys(k.deadset)))
        settled = {s for s, ok in zip(shards, finished, strict=True) if ok or str(s) in dead}
        moved = {r: f for r, f in moved.items() if f.shard_id in settled}
        if not moved:
            return []
        count = len(plan_retry_shards(job, 0, moved, shard_size))
        first = int(self._call(lambda: self.client.hincrby(k.meta, "next", count))) - count
        new = plan_retry_shards(job, first, moved, shard_size)
        pipe = self.client.pipeline(transaction=True)
        for shard in sorted({f.shard_id for f in moved.values()}):
            left = keep[shard]
            if left:
                pipe.hset(k.failures, str(shard), "[" + ",".join(f.to_json() for f in left) + "]")
            else:
                pipe.hdel(k.failures, str(shard))
        by_class: dict[str, int] = {}
        for spec in new:
            body = ",".join(moved[r].to_json() for r in spec.rows)
            pipe.hset(k.failures, str(spec.shard_id), "[" + body + "]")
            pipe.xadd(k.stream, {"s": spec.shard_id, "p": spec.to_json(), "d": 0})
            for r in spec.rows:
                by_class[moved[r].cls] = by_class.get(moved[r].cls, 0) + 1
        for cls, n in by_class.items():
            pipe.hincrby(k.counters, f"s:{cls}", -n)
        self._call(pipe.execute)
        return new

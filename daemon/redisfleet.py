"""What the fleet thread reads and keeps in Redis beyond the work itself (part of the
Redis work queue): the published jobs' digests, a forgotten job's removal, and each
shard's figures for the job's index. Every call goes through the queue's ``_call``, so a
lost connection is a ``ClusterUnreachable`` like any other queue call."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .redisscripts import Keys

__all__ = ["RedisFleet"]

_T = TypeVar("_T")


class RedisFleet:
    """Fleet-view methods of :class:`~acquired.daemon.redisqueue.RedisWorkQueue`."""

    client: Any
    prefix: str

    def _keys(self, job: str) -> Keys:
        raise NotImplementedError

    def _call(self, fn: Callable[[], _T]) -> _T:
        raise NotImplementedError

    def remove(self, job: str) -> None:
        """Every key of ``job`` (the queue's own)."""
        raise NotImplementedError

    def published(self) -> dict[str, str]:
        """Every published job with its manifest's digest (two round trips)."""
        names = list(self._call(lambda: self.client.zrange(f"{self.prefix}:jobs", 0, -1)))
        if not names:
            return {}

        def digests() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hget(self._keys(name).meta, "digest")
            return list(pipe.execute())

        return {n: d for n, d in zip(names, self._call(digests), strict=True) if d}

    def remove_if(self, job: str, digest: str) -> bool:
        """Remove a forgotten job if it is still the one forgotten (a job published
        again under that name with another manifest stays)."""
        current = self._call(lambda: self.client.hget(self._keys(job).meta, "digest"))
        if current is not None and current != digest:
            return False
        self.remove(job)
        return True

    def record_shard(self, job: str, shard_id: int, figures: Mapping[str, Any]) -> None:
        """Keep one shard's figures (node, ok, failed, bytes, name) for the job's index,
        written by the node that finished it: with output on each node's own disk, the
        index cannot be read from the files."""
        body = json.dumps(dict(figures), separators=(",", ":"))
        key = self._keys(job).shardfigs
        self._call(lambda: self.client.hset(key, str(shard_id), body))

    def shard_figures(self, job: str) -> dict[int, dict[str, Any]]:
        """Every shard's figures kept with :meth:`record_shard`."""
        rows = self._call(lambda: self.client.hgetall(self._keys(job).shardfigs))
        return {int(k): json.loads(v) for k, v in rows.items()}

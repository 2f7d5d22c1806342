"""Mirror ranking and connection allocation: pure functions over measured samples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from acquired.sources.http.protocol import Validator


@dataclass(frozen=True)
class Sample:
    """What one probe (or the live transfer) measured for a mirror."""

    url: str
    latency: float | None = None  # seconds to the first body byte
    throughput: float | None = None  # bytes/s of the body
    error: str | None = None  # why it could not be measured (unreachable, 404, ...)
    size: int | None = None
    validator: str | None = None  # the ETag, else Last-Modified (for display)
    ranges: bool | None = None  # whether it answered a range request with 206
    etag: str | None = None
    last_modified: str | None = None

    @property
    def version(self) -> Validator:
        """What identifies the version it serves (from ``validator`` alone when the
        sample does not say which header it came from)."""
        if self.etag or self.last_modified:
            return Validator(etag=self.etag, last_modified=self.last_modified)
        if self.validator and (self.validator.startswith(('"', "W/"))):
            return Validator(etag=self.validator)
        return Validator(last_modified=self.validator)

    @property
    def reachable(self) -> bool:
        """Whether the mirror answered the probe."""
        return self.error is None


@dataclass(frozen=True)
class Ranked:
    """One row of a ranking: the sample, its place and the estimate it was ranked by."""

    rank: int  # 1-based; unreachable mirrors come last
    sample: Sample
    seconds: float | None  # estimated seconds to fetch ``size`` bytes; None if unreachable
    note: str | None = None  # e.g. "size differs from the others"


def estimated_seconds(sample: Sample, size: int) -> float | None:
    """Time to fetch ``size`` bytes: one round trip plus the body at the measured speed."""
    if not sample.reachable:
        return None
    latency = sample.latency if sample.latency is not None else 1.0
    if not sample.throughput or sample.throughput <= 0:
        return latency + (math.inf if size > 0 else 0.0)
    return latency + size / sample.throughput


def rank(samples: Iterable[Sample], size: int = 8 << 20) -> list[Ranked]:
    """Reachable mirrors fastest first by ``estimated_seconds`` (latency breaks ties),
    then the unreachable ones in the given order. A mirror whose size or version
    disagrees with the majority of the reachable ones is ranked after them with a note.

    Versions are compared as the engine compares them: ETags when both sides have one,
    else Last-Modified dates when both have one; a server that sends only an ETag never
    disagrees with one that sends only a Last-Modified."""
    samples = list(samples)
    reachable = [s for s in samples if s.reachable]
    majority_size = _majority(s.size for s in reachable if s.size is not None)
    reference = _reference_version(reachable)

    def odd(s: Sample) -> str | None:
        if majority_size is not None and s.size is not None and s.size != majority_size:
            return f"size {s.size} differs from the others ({majority_size})"
        if reference is not None and reference.conflicts(s.version):
            return (
                f"version {s.version.describe()} differs from the others ({reference.describe()})"
            )
        return None

    def key(s: Sample) -> tuple[bool, float, float]:
        est = estimated_seconds(s, size)
        return (
            odd(s) is not None,
            est if est is not None else math.inf,
            s.latency if s.latency is not None else math.inf,
        )

    ordered = sorted(reachable, key=key)
    out = [
        Ranked(rank=i + 1, sample=s, seconds=estimated_seconds(s, size), note=odd(s))
        for i, s in enumerate(ordered)
    ]
    for s in samples:
        if not s.reachable:
            out.append(Ranked(rank=len(out) + 1, sample=s, seconds=None, note=s.error))
    return out


def _reference_version(samples: list[Sample]) -> Validator | None:
    """The version most mirrors agree with: the one that conflicts with the fewest
    others (the earliest on a tie); None when no mirror names one."""
    named = [s.version for s in samples if s.version]
    if not named:
        return None
    return min(named, key=lambda v: sum(1 for o in named if v.conflicts(o)))


def known_size(samples: Iterable[Sample]) -> int | None:
    """The size most reachable mirrors state, if any states one."""
    found = _majority(s.size for s in samples if s.reachable and s.size is not None)
    return found if isinstance(found, int) else None


def _majority(values: Iterable[object]) -> object | None:
    counts: dict[object, int] = {}
    order: list[object] = []
    for v in values:
        if v not in counts:
            order.append(v)
        counts[v] = counts.get(v, 0) + 1
    if not counts:
        return None
    # Ties go to the first seen (manifest order).
    return max(order, key=lambda v: counts[v])


def host_of(url: str) -> str:
    """The host a per-host connection cap applies to (name, without the port)."""
    return (urlsplit(url).hostname or url).lower()


def allocate(
    speeds: Mapping[str, float | None],
    total: int,
    *,
    per_host: int = 16,
    hosts: Mapping[str, str] | None = None,
    floor_share: float = 0.05,
) -> dict[str, int]:
    """Spread ``total`` connections over mirrors in proportion to their measured speed
    per connection (``None``: not measured yet, counted as the average of the measured
    ones, so a new mirror gets a fair trial).

    Every mirror keeps at least one connection while its share of the speed is at least
    ``floor_share`` (so it goes on being measured and can win back connections); slower
    ones get only what the faster ones cannot take because of the ``per_host`` cap. No
    host gets more than ``per_host`` connections. Largest deficits decide the last
    connections; ties go to the earlier mirror."""
    urls = list(speeds)
    if not urls or total <= 0:
        return dict.fromkeys(urls, 0)
    hosts = hosts or {u: host_of(u) for u in urls}
    known = [v for v in speeds.values() if v is not None and v > 0]
    default = sum(known) / len(known) if known else 1.0
    weight = {u: (speeds[u] if speeds[u] is not None else default) or 0.0 for u in urls}
    weight = {u: max(0.0, w) for u, w in weight.items()}
    wsum = sum(weight.values())
    if wsum <= 0:
        weight = dict.fromkeys(urls, 1.0)
        wsum = float(len(urls))
    eligible = [u for u in urls if weight[u] / wsum >= floor_share] or urls[:1]
    esum = sum(weight[u] for u in eligible) or 1.0
    alloc = dict.fromkeys(urls, 0)
    host_used: dict[str, int] = {}
    # Each eligible mirror first gets one connection (its host permitting).
    for u in eligible:
        if sum(alloc.values()) >= total:
            break
        if host_used.get(hosts[u], 0) < per_host:
            alloc[u] = 1
            host_used[hosts[u]] = host_used.get(hosts[u], 0) + 1
    # Then the rest by largest deficit against the proportional target.
    while sum(alloc.values()) < total:
        best: str | None = None
        best_deficit = -math.inf
        for u in eligible:
            if host_used.get(hosts[u], 0) >= per_host:
                continue
            target = total * weight[u] / esum
            deficit = target - alloc[u]
            if deficit > best_deficit + 1e-12:
                best, best_deficit = u, deficit
        if best is None:
            break  # every eligible host is at its cap
        alloc[best] += 1
        host_used[hosts[best]] = host_used.get(hosts[best], 0) + 1
    # Connections the caps left over go to the slower mirrors rather than stay idle, the
    # fastest first; even one measured at 0 B/s is worth a try then (stall detection drops
    # a connection that gets nothing).
    for u in sorted((u for u in urls if u not in eligible), key=lambda u: -weight[u]):
        room = min(total - sum(alloc.values()), per_host - host_used.get(hosts[u], 0))
        if room > 0:
            alloc[u] += room
            host_used[hosts[u]] = host_used.get(hosts[u], 0) + room
    return alloc

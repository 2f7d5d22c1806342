"""Job-wide deduplication: exact (sha256 of the bytes) and perceptual (64-bit phash within
``max_distance`` bits), first sample seen kept.

The perceptual index is a multi-index hash: the 64 bits are split into ``r + 1`` chunks
(``r = max_distance``); two hashes within ``r`` bits agree exactly on at least one chunk
(pigeonhole), so a query looks up its ``r + 1`` chunks in one table each and confirms the
few candidates by popcount. Large buckets are compared with numpy in one go. Cost per
query grows with the bucket sizes (about n / 2^(64/(r+1)) per table), not with a tree's
depth or a scan of all hashes.

Keys are the shards' numeric sample keys, stored as integers to keep millions of entries
compact. ``DedupeIndex.decide`` is the one call a worker makes per batch; it is what a
Redis-backed implementation (for a fleet) provides too (``DedupeService``).
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Sequence
from typing import Protocol

import numpy as np

_KEY_WIDTH = 12


class DedupeService(Protocol):
    """What a worker asks about a batch of its samples (see ``DedupeIndex.decide``)."""

    def decide(self, items: Sequence[tuple[str, str | None, int | None]]) -> list[str | None]:
        """``duplicate_of`` per item, in order; the non-duplicates are remembered."""
        ...


def _key_int(key: str) -> int:
    if not key.isdigit():
        raise ValueError(f"sample keys are numeric, got {key!r}")
    return int(key)


def _key_str(value: int) -> str:
    return f"{value:0{_KEY_WIDTH}d}"


def _chunks(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, mask)`` of the ``max_distance + 1`` chunks covering 64 bits."""
    count = max_distance + 1
    if not 1 <= count <= 64:
        raise ValueError("max_distance must be between 0 and 63")
    widths = [64 // count + (1 if i < 64 % count else 0) for i in range(count)]
    out = []
    shift = 0
    for width in widths:
        out.append((shift, (1 << width) - 1))
        shift += width
    return out


class PhashIndex:
    """Multi-index hashing over 64-bit hashes: ``add`` and ``nearest`` within ``max_distance``."""

    def __init__(self, max_distance: int = 4) -> None:
        self.max_distance = max_distance
        self.chunks = _chunks(max_distance)
        self._tables: list[dict[int, array[int]]] = [{} for _ in self.chunks]
        self._keys: dict[int, int] = {}  # hash -> key of the first sample with it

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, value: int, key: str) -> None:
        """Remember ``value`` for ``key`` (a hash seen before keeps its first key)."""
        if value in self._keys:
            return
        self._keys[value] = _key_int(key)
        for table, (shift, mask) in zip(self._tables, self.chunks, strict=True):
            part = (value >> shift) & mask
            bucket = table.get(part)
            if bucket is None:
                table[part] = array("Q", (value,))
            else:
                bucket.append(value)

    def add_many(self, values: np.ndarray, keys: np.ndarray) -> None:
        """Bulk ``add`` (a rebuild from the shards): grouped by chunk with numpy, so the Python
        work is per bucket, not per hash. The first of equal hashes keeps its key."""
        values = np.asarray(values, dtype=np.uint64)
        keys = np.asarray(keys, dtype=np.int64)
        _, first = np.unique(values, return_index=True)
        first.sort()
        fresh = [
            i
            for i, v in zip(first.tolist(), values[first].tolist(), strict=True)
            if v not in self._keys
        ]
        if not fresh:
            return
        values = values[fresh]
        self._keys.update(zip(values.tolist(), keys[fresh].tolist(), strict=True))
        for table, (shift, mask) in zip(self._tables, self.chunks, strict=True):
            parts = (values >> np.uint64(shift)) & np.uint64(mask)
            order = np.argsort(parts, kind="stable")
            ordered_parts = parts[order]
            ordered = values[order]
            cuts = np.flatnonzero(np.diff(ordered_parts)) + 1
            starts = [0, *cuts.tolist()]
            ends = [*cuts.tolist(), len(ordered)]
            for lo, hi in zip(starts, ends, strict=True):
                part = int(ordered_parts[lo])
                bucket = table.get(part)
                if bucket is None:
                    bucket = table[part] = array("Q")
                bucket.frombytes(ordered[lo:hi].tobytes())

    def nearest(self, value: int, exclude: str | None = None) -> tuple[str, int] | None:
        """The key and distance of the closest stored hash within ``max_distance`` (ties:
        the smaller key), skipping the sample ``exclude`` itself."""
        return self.nearest_many([value], [exclude])[0]

    def nearest_many(
        self, values: Sequence[int], exclude: Sequence[str | None]
    ) -> list[tuple[str, int] | None]:
        """``nearest`` for many hashes at once: every candidate bucket of the batch is
        compared in one numpy pass, so the Python work is per bucket, not per hash."""
        found: list[tuple[str, int] | None] = [None] * len(values)
        gathered: array[int] = array("Q")
        counts: list[int] = []
        probes = list(zip(self._tables, self.chunks, strict=True))
        for value in values:
            size = len(gathered)
            for table, (shift, mask) in probes:
                bucket = table.get((value >> shift) & mask)
                if bucket is not None:
                    gathered.extend(bucket)
            counts.append(len(gathered) - size)
        if not gathered:
            return found
        candidates = np.frombuffer(gathered, dtype=np.uint64)
        owner = np.repeat(np.arange(len(values)), counts)
        queries = np.array(values, dtype=np.uint64)
        distances = np.bitwise_count(candidates ^ queries[owner])
        hits = np.flatnonzero(distances <= self.max_distance)
        skips = [_key_int(k) if k is not None else None for k in exclude]
        best: dict[int, tuple[int, int]] = {}  # owner -> (distance, key)
        for h in hits.tolist():
            i = int(owner[h])
            key = self._keys[int(candidates[h])]
            if key == skips[i]:
                continue
            entry = (int(distances[h]), key)
            if i not in best or entry < best[i]:
                best[i] = entry
        for i, (distance, key) in best.items():
            found[i] = (_key_str(key), distance)
        return found

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All ``(hashes, keys)`` as arrays (for saving)."""
        hashes = np.fromiter(self._keys.keys(), dtype=np.uint64, count=len(self._keys))
        keys = np.fromiter(self._keys.values(), dtype=np.int64, count=len(self._keys))
        return hashes, keys


_LOW64 = (1 << 64) - 1
_RECENT_MAX = 65_536


class ShaTable:
    """First 128 bits of a sha256 -> the key of the first sample with them.

    Entries added in bulk (a rebuild from the shards) live in three sorted
    numpy arrays, 24 bytes per digest (a dict of Python ints costs about 170); entries
    decided one by one since then are in a dict in front of them."""

    def __init__(self) -> None:
        self._recent: dict[int, int] = {}
        self._hi = np.empty(0, dtype=np.uint64)
        self._lo = np.empty(0, dtype=np.uint64)
        self._keys = np.empty(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        self._settle()
        return len(self._recent) + len(self._hi)

    def get(self, value: int) -> int | None:
        """The key stored for ``value``, or None."""
        found = self._recent.get(value)
        if found is not None:
            return found
        self._settle()
        hi, lo = value >> 64, value & _LOW64
        i = int(np.searchsorted(self._hi, np.uint64(hi)))
        while i < len(self._hi) and int(self._hi[i]) == hi:
            if int(self._lo[i]) == lo:
                return int(self._keys[i])
            i += 1
        return None

    def add(self, value: int, key: int) -> None:
        """Remember ``value`` for ``key`` (call after ``get`` found nothing)."""
        self._recent[value] = key

    def discard(self, value: int, key: int) -> None:
        """Forget ``value`` if ``add`` gave it to ``key``."""
        if self._recent.get(value) == key:
            del self._recent[value]

    def compact(self) -> None:
        """Move the one-by-one entries into the arrays once they are many (more than
        65,536 and an eighth of the arrays, so the re-sorts cost O(n log n) in all)."""
        if len(self._recent) > max(_RECENT_MAX, len(self._hi) // 8):
            recent = self._recent
            self._recent = {}
            self._pending.append(
                (
                    np.array([v >> 64 for v in recent], dtype=np.uint64),
                    np.array([v & _LOW64 for v in recent], dtype=np.uint64),
                    np.array(list(recent.values()), dtype=np.int64),
                )
            )
            self._settle()

    def add_many(self, hi: np.ndarray, lo: np.ndarray, keys: np.ndarray) -> None:
        """Bulk ``add``; the first of equal digests (earlier calls first) keeps its key."""
        self._pending.append(
            (
                np.asarray(hi, dtype=np.uint64),
                np.asarray(lo, dtype=np.uint64),
                np.asarray(keys, dtype=np.int64),
            )
        )

    def _settle(self) -> None:
        if not self._pending:
            return
        hi = np.concatenate([self._hi, *(p[0] for p in self._pending)])
        lo = np.concatenate([self._lo, *(p[1] for p in self._pending)])
        keys = np.concatenate([self._keys, *(p[2] for p in self._pending)])
        self._pending = []
        order = np.lexsort((lo, hi))  # stable: among equal digests the earliest comes first
        hi, lo, keys = hi[order], lo[order], keys[order]
        first = np.ones(len(hi), dtype=bool)
        first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        self._hi, self._lo, self._keys = hi[first], lo[first], keys[first]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every entry as ``(hi, lo, keys)`` (for saving)."""
        self._settle()
        recent = list(self._recent.items())
        hi = np.array([v >> 64 for v, _ in recent], dtype=np.uint64)
        lo = np.array([v & _LOW64 for v, _ in recent], dtype=np.uint64)
        keys = np.array([k for _, k in recent], dtype=np.int64)
        return (
            np.concatenate([self._hi, hi]),
            np.concatenate([self._lo, lo]),
            np.concatenate([self._keys, keys]),
        )


class DedupeIndex:
    """Exact and perceptual indexes of one job, thread-safe; rebuilt from the finished
    shards after a restart."""

    def __init__(self, *, exact: bool = True, perceptual: bool = False, max_distance: int = 4):
        self.exact = exact
        self.perceptual = perceptual
        self.max_distance = max_distance
        self._sha = ShaTable()
        self._phash = PhashIndex(max_distance)
        self._lock = threading.Lock()
        self.rebuilt: tuple[int, int, int] = (0, 0, 0)
        """Shards, rows and stored samples read when the index was rebuilt from shards."""

    def rebuilt_counts(self) -> tuple[int, int, int]:
        """``rebuilt`` (a method, so a manager's proxy can ask for it)."""
        return self.rebuilt

    def __len__(self) -> int:
        return max(len(self._sha), len(self._phash))

    def decide(self, items: Sequence[tuple[str, str | None, int | None]]) -> list[str | None]:
        """For each ``(key, sha256 hex, phash)`` in order: the key of the earlier sample it
        duplicates, or ``None`` (then it is remembered). A sample never duplicates itself,
        so a shard done twice decides the same way. Within the batch, an earlier item
        counts as seen before a later one."""
        out: list[str | None] = [None] * len(items)
        with self._lock:
            self._sha.compact()  # between batches: a batch may still discard its own adds
            shas: list[int | None] = []
            for n, (key, sha, _) in enumerate(items):
                sha_int = int(sha[:32], 16) if (self.exact and sha) else None
                shas.append(sha_int)
                if sha_int is not None:
                    first = self._sha.get(sha_int)
                    if first is None:
                        self._sha.add(sha_int, _key_int(key))
                    elif _key_str(first) != key:
                        out[n] = _key_str(first)
            if self.perceptual:
                self._decide_perceptual(items, shas, out)
        return out

    def add_stored(
        self,
        keys: np.ndarray,
        shas: Sequence[str | None],
        phashes: Sequence[str | None],
    ) -> None:
        """Remember samples a finished shard stored (``keys`` as integers, sha256 and phash
        as the parquet's hex): rebuilding the index after a restart. A digest already
        known keeps its first key."""
        with self._lock:
            if self.exact:
                present = np.array([bool(sha) for sha in shas], dtype=bool)
                given = [sha for sha in shas if sha]
                hi = np.array([int(sha[:16], 16) for sha in given], dtype=np.uint64)
                lo = np.array([int(sha[16:32], 16) for sha in given], dtype=np.uint64)
                self._sha.add_many(hi, lo, keys[present])
            if self.perceptual:
                present = np.array([p is not None for p in phashes], dtype=bool)
                values = np.array([int(p, 16) for p in phashes if p is not None], dtype=np.uint64)
                if len(values):
                    self._phash.add_many(values, keys[present])

    def _decide_perceptual(
        self,
        items: Sequence[tuple[str, str | None, int | None]],
        shas: list[int | None],
        out: list[str | None],
    ) -> None:
        todo = [n for n, item in enumerate(items) if out[n] is None and item[2] is not None]
        near = self._phash.nearest_many(
            [items[n][2] for n in todo],  # type: ignore[misc]
            [items[n][0] for n in todo],
        )
        # This batch's kept hashes, by chunk: an earlier item of the batch counts too.
        chunks = self._phash.chunks
        local: list[dict[int, list[tuple[int, str]]]] = [{} for _ in chunks]
        for n, match in zip(todo, near, strict=True):
            key, _, value = items[n]
            assert value is not None
            dup = match[0] if match is not None else None
            if dup is None:
                dup = self._near_in_batch(local, value, key)
            if dup is None:
                for table, (shift, mask) in zip(local, chunks, strict=True):
                    table.setdefault((value >> shift) & mask, []).append((value, key))
                self._phash.add(value, key)
            else:
                out[n] = dup
                sha_int = shas[n]
                # The exact entry made above for a sample that turned out a near-duplicate
                # goes: only kept samples stand for their bytes.
                if sha_int is not None:
                    self._sha.discard(sha_int, _key_int(key))

    def _near_in_batch(
        self, local: list[dict[int, list[tuple[int, str]]]], value: int, key: str
    ) -> str | None:
        for table, (shift, mask) in zip(local, self._phash.chunks, strict=True):
            for other, other_key in table.get((value >> shift) & mask, ()):
                if other_key != key and (other ^ value).bit_count() <= self.max_distance:
                    return other_key
        return None

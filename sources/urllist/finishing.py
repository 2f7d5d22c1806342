"""The finishing dedupe pass of a job shared by a fleet: every finished shard's parquet is
read once, and each stored sample that duplicates an earlier one is listed.

Per-node dedupe (:mod:`acquired.sources.urllist.dedupe`) only sees the shards one node
stored; two nodes can each keep a copy of the same image. When the job is finished, one
node reads the ``sha256`` and ``phash`` columns of every shard it can reach and finds:

- exact duplicates: equal sha256 (first 128 bits, as the per-node index keeps);
- perceptual duplicates: a 64-bit phash within ``max_distance`` bits of a sample kept
  earlier, by multi-index hashing: the hashes are split into ``max_distance + 1`` chunks,
  two hashes that close agree exactly on one chunk (pigeonhole), so only hashes sharing a
  chunk are compared, with numpy, bucket by bucket.

"Earlier" is by shard id, then row order within the shard; the first sample is kept and
a later one names it (``of_shard``, ``of_key``) with the distance (0 for exact). A
duplicate never keeps another one alive: a perceptual duplicate points at the nearest
*kept* sample. Shards are not rewritten (tars are immutable output); a reader skips the
rows listed. Memory holds a few arrays of the stored samples (about 40 B each) and one
record batch, never the job's rows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DUPLICATES_NAME = "duplicates.parquet"
BATCH_ROWS = 65_536
_COLUMNS = ["key", "status", "sha256", "phash"]
_STATS = re.compile(r"^(\d{5,})_stats\.json$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DENSE_BITS = 24
_QUERY_BLOCK = 1 << 18  # hashes looked up per numpy step (bounds the memory)

SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("key", pa.string()),
        ("kind", pa.string()),
        ("of_shard", pa.int64()),
        ("of_key", pa.string()),
        ("distance", pa.int32()),
    ]
)


@dataclass
class Samples:
    """The stored samples of the job, in global order (shard id, then row order)."""

    shard: list[np.ndarray] = field(default_factory=list)
    key: list[np.ndarray] = field(default_factory=list)
    sha_hi: list[np.ndarray] = field(default_factory=list)
    sha_lo: list[np.ndarray] = field(default_factory=list)
    phash: list[np.ndarray] = field(default_factory=list)
    has_phash: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    shards: int = 0

    def add_batch(self, shard_id: int, batch: pa.RecordBatch) -> None:
        """Keep the stored rows (status ok, with a sha256) of one record batch."""
        self.rows += batch.num_rows
        sha = batch.column("sha256")
        kept = pc.and_(pc.equal(batch.column("status"), "ok"), pc.is_valid(sha))
        table = pa.Table.from_batches([batch]).filter(kept)
        n = table.num_rows
        if n == 0:
            return
        self.shard.append(np.full(n, shard_id, dtype=np.int64))
        self.key.append(pc.cast(table.column("key"), pa.int64()).to_numpy())
        digests = [s[:32] for s in table.column("sha256").to_pylist()]
        self.sha_hi.append(np.array([int(d[:16], 16) for d in digests], dtype=np.uint64))
        self.sha_lo.append(np.array([int(d[16:32] or "0", 16) for d in digests], dtype=np.uint64))
        phashes = table.column("phash").to_pylist()
        self.has_phash.append(np.array([p is not None for p in phashes], dtype=bool))
        self.phash.append(
            np.array([int(p, 16) if p is not None else 0 for p in phashes], dtype=np.uint64)
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """Every column as one array."""
        dtypes = {
            "shard": np.int64,
            "key": np.int64,
            "sha_hi": np.uint64,
            "sha_lo": np.uint64,
            "phash": np.uint64,
            "has_phash": bool,
        }
        return {
            name: np.concatenate(getattr(self, name))
            if getattr(self, name)
            else np.empty(0, dtype=dtype)
            for name, dtype in dtypes.items()
        }


def finished_shards(out_dir: Path | int) -> list[int]:
    """Ids of the shards in ``out_dir`` (a path or an open folder) written to the end
    (stats file present), in order."""
    ids = []
    for name in os.listdir(out_dir):
        match = _STATS.match(name)
        if match is not None:
            ids.append(int(match.group(1)))
    return sorted(ids)


def read_shards(
    out_dir: Path | int, shard_ids: Iterable[int] | None = None, batch_rows: int = BATCH_ROWS
) -> Samples:
    """Stream the parquet of the finished shards in ``out_dir`` (a path, or a folder
    opened by the caller and left open), or of ``shard_ids`` among them, in shard order,
    opening each without following a link."""
    samples = Samples()
    dir_fd = out_dir if isinstance(out_dir, int) else os.open(out_dir, _DIR_FLAGS)
    try:
        ids = finished_shards(dir_fd)
        if shard_ids is not None:
            wanted = set(shard_ids)
            ids = [i for i in ids if i in wanted]
        for shard_id in ids:
            try:
                fd = os.open(f"{shard_id:05d}.parquet", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # a "files" shard whose parquet was removed: nothing stored to see
            with os.fdopen(fd, "rb") as f:
                parquet = pq.ParquetFile(f)
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=_COLUMNS):
                    samples.add_batch(shard_id, batch)
            samples.shards += 1
    finally:
        if not isinstance(out_dir, int):
            os.close(dir_fd)
    return samples


def exact_firsts(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """For each row (in global order), the row of the first with the same digest. Pure."""
    n = len(hi)
    order = np.lexsort((np.arange(n), lo, hi))
    h, low = hi[order], lo[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (h[1:] != h[:-1]) | (low[1:] != low[:-1])
    group_first = order[np.maximum.accumulate(np.where(new, np.arange(n), 0))]
    first = np.empty(n, dtype=np.int64)
    first[order] = group_first
    return first


def plan_chunks(n: int, max_distance: int) -> tuple[int, int]:
    """``(chunks, flips)`` for ``n`` hashes: two hashes within ``max_distance`` bits
    differ in at most ``flips = max_distance // chunks`` bits in one of the chunks
    (pigeonhole), so each chunk is looked up with every pattern of up to ``flips`` bits
    flipped. The count minimises the comparisons expected for uniform hashes. Pure."""
    best: tuple[float, int, int] | None = None
    for m in range(1, min(max_distance + 1, 16) + 1):
        width = 64 // m
        flips = max_distance // m
        probes = sum(comb(width, k) for k in range(flips + 1))
        if width > 32 or probes > 4096:
            continue
        cost = m * probes * (1 + n / 2.0**width)
        if best is None or cost < best[0]:
            best = (cost, m, flips)
    if best is None:
        return max_distance + 1, 0
    return best[1], best[2]


def _flip_masks(width: int, flips: int) -> list[int]:
    out = []
    for k in range(flips + 1):
        for bits in combinations(range(width), k):
            out.append(sum(1 << b for b in bits))
    return out


def near_pairs(values: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(i, j)``, ``i < j``, of distinct ``values`` within ``max_distance``
    bits, with the distance, by multi-index hashing with bit flips (``plan_chunks``). Pure."""
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_d: list[np.ndarray] = []
    n = len(values)
    m, flips = plan_chunks(n, max_distance)
    widths = [64 // m + (1 if c < 64 % m else 0) for c in range(m)]
    shift = 0
    for width in widths:
        parts = (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        shift += width
        order = np.argsort(parts, kind="stable")
        ordered = parts[order]
        # Narrow chunks: a table of every bucket's start and size, so a lookup is one
        # gather (a binary search per hash costs ten times more).
        dense = width <= _DENSE_BITS
        if dense:
            sizes = np.bincount(parts.astype(np.int64), minlength=1 << width)
            firsts = np.cumsum(sizes) - sizes
        for flip in _flip_masks(width, flips):
            for lo in range(0, n, _QUERY_BLOCK):
                rows = np.arange(lo, min(n, lo + _QUERY_BLOCK))
                q = parts[rows] ^ np.uint64(flip)
                if dense:
                    qi = q.astype(np.int64)
                    left, count = firsts[qi], sizes[qi]
                else:
                    left = np.searchsorted(ordered, q, "left")
                    count = np.searchsorted(ordered, q, "right") - left
                total = int(count.sum())
                if total == 0:
                    continue
                owner = np.repeat(np.arange(len(rows)), count)
                starts = np.cumsum(count) - count
                j = order[left[owner] + (np.arange(total) - starts[owner])]
                i = rows[owner]
                keep = i < j
                i, j = i[keep], j[keep]
                dist = np.bitwise_count(values[i] ^ values[j])
                hit = dist <= max_distance
                if hit.any():
                    found_i.append(i[hit])
                    found_j.append(j[hit])
                    found_d.append(dist[hit].astype(np.int64))
    if not found_i:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    d = np.concatenate(found_d)
    # A pair close in several chunks is found once per chunk.
    _, unique = np.unique(i * n + j, return_index=True)
    return i[unique], j[unique], d[unique]


def perceptual_of(
    phash: np.ndarray, candidates: np.ndarray, max_distance: int
) -> dict[int, tuple[int, int]]:
    """Among rows ``candidates`` (in global order, not exact duplicates): row -> (row of
    the nearest earlier kept sample, distance) for each perceptual duplicate. Pure."""
    out: dict[int, tuple[int, int]] = {}
    if len(candidates) == 0:
        return out
    values, first_idx, inverse = np.unique(
        phash[candidates], return_index=True, return_inverse=True
    )
    first_row = candidates[first_idx]  # rows are increasing, so the first is the earliest
    i, j, d = near_pairs(values, max_distance)
    neighbours: dict[int, list[tuple[int, int]]] = {}
    for a, b, dist in zip(i.tolist(), j.tolist(), d.tolist(), strict=True):
        neighbours.setdefault(a, []).append((b, dist))
        neighbours.setdefault(b, []).append((a, dist))
    kept: set[int] = set()  # values whose first row is kept
    for v in np.argsort(first_row, kind="stable").tolist():
        row = int(first_row[v])
        best = _nearest_kept(neighbours.get(v, ()), kept, first_row, row)
        if best is None:
            kept.add(v)
        else:
            out[row] = best
    # Later rows with a hash seen before: the first if it was kept, else the nearest kept
    # sample before them.
    for pos in range(len(candidates)):
        v = int(inverse[pos])
        row = int(candidates[pos])
        if row == int(first_row[v]):
            continue
        if v in kept:
            out[row] = (int(first_row[v]), 0)
        else:
            best = _nearest_kept(neighbours.get(v, ()), kept, first_row, row)
            if best is not None:
                out[row] = best
    return out


def _nearest_kept(
    near: Iterable[tuple[int, int]], kept: set[int], first_row: np.ndarray, before: int
) -> tuple[int, int] | None:
    best: tuple[int, int] | None = None  # (distance, row)
    for u, dist in near:
        row = int(first_row[u])
        if u in kept and row < before and (best is None or (dist, row) < best):
            best = (dist, row)
    return None if best is None else (best[1], best[0])


def find_duplicates(
    samples: Samples, *, exact: bool = True, perceptual: bool = False, max_distance: int = 4
) -> pa.Table:
    """The duplicates among ``samples``: one row per sample that duplicates an earlier
    one, in global order (see the module's docstring). Pure."""
    a = samples.arrays()
    n = len(a["key"])
    of = np.arange(n)
    dist = np.zeros(n, dtype=np.int64)
    kind = np.zeros(n, dtype=np.int8)  # 0 kept, 1 exact, 2 perceptual
    if exact and n:
        of = exact_firsts(a["sha_hi"], a["sha_lo"])
        kind[of != np.arange(n)] = 1
    if perceptual and n:
        candidates = np.flatnonzero((kind == 0) & a["has_phash"])
        near = perceptual_of(a["phash"], candidates, max_distance)
        for row, (first, d) in near.items():
            of[row], dist[row], kind[row] = first, d, 2
    rows = np.flatnonzero(kind != 0)
    return pa.table(
        {
            "shard": a["shard"][rows],
            "key": _keys(a["key"][rows]),
            "kind": pa.array(np.where(kind[rows] == 1, "exact", "perceptual").tolist()),
            "of_shard": a["shard"][of[rows]],
            "of_key": _keys(a["key"][of[rows]]),
            "distance": dist[rows].astype(np.int32),
        },
        schema=SCHEMA,
    )


def _keys(values: np.ndarray) -> list[str]:
    return [f"{v:012d}" for v in values.tolist()]


def counts(table: pa.Table) -> dict[str, int]:
    """Duplicates by kind (exact, perceptual)."""
    kinds = table.column("kind").to_pylist()
    return {"exact": kinds.count("exact"), "perceptual": kinds.count("perceptual")}


def table_bytes(table: pa.Table) -> bytes:
    """The table as parquet bytes (written by the caller, atomically)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())

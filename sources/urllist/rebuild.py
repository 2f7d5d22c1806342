"""The job-wide dedupe index rebuilt from the shards already written.

A shard under its final name is complete (its ``_stats.json`` is renamed last), and its
parquet names every stored sample with its sha256 and phash. Those files are therefore
the record of what the job kept: after a crash or restart, the index is rebuilt from
them before any worker decides again, so a duplicate of a sample stored before the crash
is recognised, whatever the index held in memory when the daemon died. Entries of shards
that never finished are not brought back, so nothing is called a duplicate of a sample
that was never stored.

The parquet files are streamed in record batches of a few columns, one file at a time:
memory holds the index and one batch, never the job's rows.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from acquired.sources.urllist.dedupe import DedupeIndex

LOG = logging.getLogger("acquired.urllist")

_STATS = re.compile(r"^(\d{5,})_stats\.json$")
_COLUMNS = ["key", "status", "sha256", "phash", "duplicate_of"]
BATCH_ROWS = 65_536
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def finished_shards(out_dir: Path) -> list[str]:
    """Stems of the shards in ``out_dir`` that were written to the end, in order."""
    stems = []
    for name in os.listdir(out_dir):
        match = _STATS.match(name)
        if match is not None:
            stems.append(match.group(1))
    return sorted(stems, key=int)


def rebuild_index(
    index: DedupeIndex, out_dir: Path, batch_rows: int = BATCH_ROWS
) -> tuple[int, int, int]:
    """Add every sample the finished shards in ``out_dir`` stored as first of its kind
    (status ok, no ``duplicate_of``) to ``index``, earlier shards first; returns how many
    shards, rows and such samples were read."""
    shards = rows = samples = 0
    dir_fd = os.open(out_dir, _DIR_FLAGS)
    try:
        for stem in finished_shards(out_dir):
            try:
                fd = os.open(f"{stem}.parquet", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # a "files" shard whose parquet was removed by hand: nothing to add
            read = added = 0
            try:
                with os.fdopen(fd, "rb") as f:
                    parquet = pq.ParquetFile(f)
                    for batch in parquet.iter_batches(batch_size=batch_rows, columns=_COLUMNS):
                        read += batch.num_rows
                        added += _add_batch(index, batch)
            except (OSError, pa.ArrowException, KeyError) as exc:
                # Damaged or planted by someone else: the job goes on without its entries
                # (its samples may be stored again), rather than failing at every start.
                LOG.warning("dedupe rebuild skips %s/%s.parquet: %s", out_dir, stem, exc)
                continue
            shards, rows, samples = shards + 1, rows + read, samples + added
    finally:
        os.close(dir_fd)
    return shards, rows, samples


def _add_batch(index: DedupeIndex, batch: pa.RecordBatch) -> int:
    kept = pc.and_(pc.equal(batch.column("status"), "ok"), pc.is_null(batch.column("duplicate_of")))
    table = pa.Table.from_batches([batch]).filter(kept)
    if table.num_rows == 0:
        return 0
    keys = pc.cast(table.column("key"), pa.int64()).to_numpy()
    shas = table.column("sha256").to_pylist()
    phashes = table.column("phash").to_pylist()
    index.add_stored(keys, shas, phashes)
    return table.num_rows

"""The job-wide dedupe index rebuilt from the shards a job already wrote."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from acquired.sources.urllist import dedupe
from acquired.sources.urllist.dedupe import DedupeIndex, ShaTable
from acquired.sources.urllist.rebuild import finished_shards, rebuild_index
from acquired.sources.urllist.shards import SampleRecord, ShardWriter, sample_key

SHARD = 100


def sha(n: int) -> str:
    return hashlib.sha256(f"body {n}".encode()).hexdigest()


def write_shard(
    out: Path, shard_id: int, rows: list[tuple[str, int | None, str | None]], commit: bool = True
) -> None:
    """A shard whose rows are (status, body number, duplicate_of); phash = body number."""
    writer = ShardWriter(out, shard_id)
    for offset, (status, body, dup) in enumerate(rows):
        row = shard_id * SHARD + offset
        record = SampleRecord(
            key=sample_key(row, SHARD),
            row_index=row,
            url=f"http://127.0.0.1/{row}",
            status=status,
            sha256=sha(body) if body is not None else None,
            phash=f"{body:016x}" if body is not None else None,
            duplicate_of=dup,
        )
        stored = status == "ok"
        writer.add(record, b"pixels" if stored else None)
    if commit:
        writer.commit({"rows": len(rows)})
    else:
        # Killed between the parquet and the stats file: the shard is not finished.
        writer._write_durably(f"{writer.name}.parquet", writer._parquet_bytes())
        writer.abort()


def test_rebuild_knows_stored_samples_only(tmp_path: Path) -> None:
    first = sample_key(0, SHARD)
    write_shard(
        tmp_path,
        0,
        [("ok", 1, None), ("failed", None, None), ("duplicate", 1, first), ("ok", 2, None)],
    )
    # A marked duplicate is stored but does not stand for its bytes; a filtered row is not
    # stored at all.
    write_shard(tmp_path, 1, [("ok", 2, sample_key(3, SHARD)), ("filtered", 3, None)])
    write_shard(tmp_path, 2, [("ok", 4, None)], commit=False)
    (tmp_path / "urls.parquet").write_bytes(b"the input, not a shard")
    assert finished_shards(tmp_path) == ["00000", "00001"]

    index = DedupeIndex(exact=True, perceptual=False)
    assert rebuild_index(index, tmp_path, batch_rows=2) == (2, 6, 2)
    later = [sample_key(500 + n, SHARD) for n in range(4)]
    decided = index.decide([(later[n], sha(n + 1), None) for n in range(4)])
    assert decided == [first, sample_key(3, SHARD), None, None]
    # A redone shard is not a duplicate of itself.
    assert index.decide([(first, sha(1), None)]) == [None]


def test_rebuild_skips_a_damaged_shard_parquet(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, [("ok", 1, None)])
    write_shard(tmp_path, 1, [("ok", 2, None)])
    write_shard(tmp_path, 2, [("ok", 3, None)])
    (tmp_path / "00001.parquet").write_bytes(b"PAR1 not a parquet file")
    (tmp_path / "00002.parquet").unlink()
    pq.write_table(pa.table({"other": [1]}), tmp_path / "00002.parquet")  # wrong columns
    index = DedupeIndex(exact=True, perceptual=False)
    assert rebuild_index(index, tmp_path) == (1, 1, 1)
    assert index.decide([(sample_key(900, SHARD), sha(1), None)]) == [sample_key(0, SHARD)]


def test_rebuild_perceptual(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, [("ok", 0b1011 << 20, None)])
    index = DedupeIndex(exact=True, perceptual=True, max_distance=4)
    rebuild_index(index, tmp_path)
    near = (0b1011 << 20) ^ 0b11  # two bits away, other bytes
    far = (0b1011 << 20) ^ 0xFF00FF
    assert index.decide([(sample_key(900, SHARD), sha(7), near)]) == [sample_key(0, SHARD)]
    assert index.decide([(sample_key(901, SHARD), sha(8), far)]) == [None]


def test_sha_table_matches_a_dict_through_bulk_loads_and_compactions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Compact after a few hundred one-by-one entries instead of 65,536.
    monkeypatch.setattr(dedupe, "_RECENT_MAX", 300)
    rng = random.Random(5)
    table, reference = ShaTable(), {}
    values = [rng.getrandbits(128) for _ in range(3000)]
    # Two digests sharing their first 64 bits: the lookup must compare all 128.
    values.append((values[0] >> 64 << 64) | 12345)
    for chunk in range(0, len(values), 500):
        part = values[chunk : chunk + 500]
        keys = list(range(chunk, chunk + len(part)))
        if chunk % 1000 == 0:
            hi = np.array([v >> 64 for v in part], dtype=np.uint64)
            lo = np.array([v & ((1 << 64) - 1) for v in part], dtype=np.uint64)
            table.add_many(hi, lo, np.array(keys, dtype=np.int64))
            for v, k in zip(part, keys, strict=True):
                reference.setdefault(v, k)
        else:
            for v, k in zip(part, keys, strict=True):
                if table.get(v) is None:
                    table.add(v, k)
                    reference[v] = k
        table.compact()
    assert len(table) == len(reference)
    for v in [*values, *(rng.getrandbits(128) for _ in range(200))]:
        assert table.get(v) == reference.get(v)

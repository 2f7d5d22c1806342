"""``index.parquet``: a finished URL-list job's index, one row per shard (shard id, the
node that wrote it, samples ok and failed, bytes, the name of its data).

For a fleet the node of each shard comes from the queue's shard index in Redis, the
figures from what each node recorded there when it finished a shard, else from the
shard's ``NNNNN_stats.json`` if this node can read it (a shared destination); a shard
whose figures no node can give has them empty. The file is written beneath the data root
under a temporary name and renamed over the old one (never through a link).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from acquired.common.safepath import UnsafePath, open_beneath, write_beneath
from acquired.sources.urllist.shards import shard_name

INDEX_NAME = "index.parquet"
MAX_STATS = 1 << 20  # bytes read of a shard's stats file

__all__ = ["INDEX_NAME", "index_rows", "index_table", "local_figures", "write_index"]


def data_name(shard_id: int, output: str) -> str:
    """The shard's data under the destination: ``NNNNN.tar``, or the folder ``NNNNN``."""
    name = shard_name(shard_id)
    return f"{name}.tar" if output == "webdataset" else name


def index_rows(
    index: Mapping[int, str], figures: Mapping[int, Mapping[str, Any]], output: str
) -> list[dict[str, Any]]:
    """One row per shard of ``index`` (shard id -> node), in shard order. Pure."""
    rows = []
    for shard in sorted(index):
        fig = figures.get(shard) or {}
        rows.append(
            {
                "shard": shard,
                "node": index[shard],
                "samples_ok": fig.get("ok"),
                "samples_failed": fig.get("failed"),
                "bytes": fig.get("bytes"),
                "data": data_name(shard, output),
            }
        )
    return rows


def figures_from_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A shard's figures from its stats file's content. Pure."""
    ok = int((stats.get("statuses") or {}).get("ok", 0))
    rows = int(stats.get("rows") or 0)
    return {"ok": ok, "failed": max(rows - ok, 0), "bytes": int(stats.get("bytes_stored") or 0)}


def local_figures(
    data_root: Path, destination: str, shards: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """The figures of those ``shards`` whose stats file is readable here (beneath the
    data root, no link followed; a missing or unreadable one is left out)."""
    out: dict[int, dict[str, Any]] = {}
    for shard in shards:
        rel = f"{destination}/{shard_name(shard)}_stats.json"
        try:
            fd = open_beneath(data_root, rel, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, UnsafePath):
            continue
        try:
            with os.fdopen(fd, "rb") as f:
                out[shard] = figures_from_stats(json.loads(f.read(MAX_STATS)))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return out


def index_table(rows: list[dict[str, Any]]) -> Any:
    """The rows as a pyarrow table with a fixed schema (also when there are none)."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("shard", pa.int64()),
            ("node", pa.string()),
            ("samples_ok", pa.int64()),
            ("samples_failed", pa.int64()),
            ("bytes", pa.int64()),
            ("data", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def write_index(data_root: Path, destination: str, rows: list[dict[str, Any]]) -> Path:
    """Write ``index.parquet`` in the job's destination atomically; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(index_table(rows), sink)
    rel = f"{destination}/{INDEX_NAME}"
    write_beneath(data_root, rel, sink.getvalue().to_pybytes(), sync_dir=True)
    return data_root / rel

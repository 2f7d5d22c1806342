"""Duplicates across a fleet's shards: the finishing pass over parquet files written here
(exact across shards, a near-duplicate within the distance and one just beyond, the first
occurrence kept), and two real daemons sharing one destination and one Redis, where the
same pictures land in shards of both nodes and ``duplicates.parquet`` lists them."""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from support import fleet
from support import urllist_jobs as uj
from support.daemon import DaemonProcess
from support.image_server import ImageServer
from support.redis_server import RedisServer

from acquired.daemon.fleetdedupe import pass_scope, run_pass
from acquired.sources.urllist.finishing import find_duplicates, near_pairs, read_shards
from acquired.sources.urllist.settings import DedupeSettings

BASE = 0x0F0F_F0F0_1234_5678


def _sha(n: int) -> str:
    return hashlib.sha256(n.to_bytes(8, "big")).hexdigest()


def _flip(value: int, bits: int) -> int:
    return value ^ ((1 << bits) - 1) << 20  # ``bits`` adjacent bits flipped


def _shard(folder: Path, shard: int, rows: list[tuple[str, str, int | None]]) -> None:
    """A finished shard: parquet rows (status, sha256, phash) and its stats file."""
    table = pa.table(
        {
            "key": [f"{shard:05d}{i:07d}" for i in range(len(rows))],
            "status": [r[0] for r in rows],
            "sha256": [r[1] for r in rows],
            "phash": [None if r[2] is None else f"{r[2]:016x}" for r in rows],
            "duplicate_of": pa.array([None] * len(rows), pa.string()),
        }
    )
    pq.write_table(table, folder / f"{shard:05d}.parquet")
    (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"rows": len(rows)}))


def test_pass_finds_exact_and_near_duplicates_keeping_the_first(tmp_path: Path) -> None:
    # Shard 2 is read after shard 0 although listed first on disk; shard 1 never finished.
    _shard(tmp_path, 2, [("ok", _sha(1), BASE), ("ok", _sha(7), _flip(BASE, 5))])
    _shard(
        tmp_path,
        0,
        [
            ("ok", _sha(1), BASE),  # the first of sha 1
            ("failed", _sha(1), BASE),  # not stored: never a duplicate
            ("ok", _sha(2), _flip(BASE, 4)),  # 4 bits from the first: perceptual
            ("ok", _sha(1), BASE),  # same shard, same bytes: exact
            ("ok", _sha(3), None),  # no phash: exact only
        ],
    )
    (tmp_path / "00001.parquet").write_bytes(b"half")
    _shard(tmp_path, 3, [("ok", _sha(3), None), ("ok", _sha(8), _flip(BASE, 3))])

    table = find_duplicates(read_shards(tmp_path), exact=True, perceptual=True, max_distance=4)
    got = {(r["shard"], r["key"]): r for r in table.to_pylist()}
    assert set(got) == {
        (0, "000000000002"),
        (0, "000000000003"),
        (2, "000020000000"),
        (3, "000030000000"),
        (3, "000030000001"),
    }
    assert got[(0, "000000000002")] == {
        "shard": 0,
        "key": "000000000002",
        "kind": "perceptual",
        "of_shard": 0,
        "of_key": "000000000000",
        "distance": 4,
    }
    assert got[(0, "000000000003")]["kind"] == "exact"
    assert got[(2, "000020000000")]["of_key"] == "000000000000"
    assert got[(2, "000020000000")]["kind"] == "exact"
    assert got[(3, "000030000000")]["of_key"] == "000000000004"
    # 3 bits from the first, 1 from the perceptual duplicate, 2 from shard 2's second
    # (kept): the nearest kept one.
    assert (got[(3, "000030000001")]["of_key"], got[(3, "000030000001")]["distance"]) == (
        "000020000001",
        2,
    )
    # Shard 2's second row is 5 bits away: just beyond the distance, kept.
    assert (2, "000020000001") not in got

    exact_only = find_duplicates(read_shards(tmp_path), exact=True, perceptual=False)
    assert set(exact_only.column("kind").to_pylist()) == {"exact"}
    assert len(exact_only) == 3


def test_near_pairs_match_brute_force() -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    values = np.unique(rng.integers(0, 2**63, 2000, dtype=np.uint64))
    near = values[:300] ^ np.uint64(0b1011 << 30)
    values = np.unique(np.concatenate([values, near]))
    i, j, _ = near_pairs(values, 4)
    dist = np.bitwise_count(values[:, None] ^ values[None, :])
    a, b = np.nonzero(np.triu(dist <= 4, 1))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(
        zip(a.tolist(), b.tolist(), strict=True)
    )
    assert len(i) >= 300


def test_scope_of_the_pass() -> None:
    assert pass_scope({0: "a", 1: "b"}, [0, 1]) == "all"
    assert pass_scope({0: "a", 1: "b"}, [0]) == "local"
    assert pass_scope({0: "a"}, []) == "none"


def _expected(folder: Path, shards: list[int]) -> dict[tuple[int, str], tuple[int, str]]:
    """Every stored sample repeating the bytes of an earlier one -> that first one."""
    first: dict[str, tuple[int, str]] = {}
    out = {}
    for shard in sorted(shards):
        for row in pq.read_table(folder / f"{shard:05d}.parquet").to_pylist():
            if row["status"] != "ok":
                continue
            here = (shard, row["key"])
            if row["sha256"] in first:
                out[here] = first[row["sha256"]]
            else:
                first[row["sha256"]] = here
    return out


def _duplicates(folder: Path) -> list[dict[str, Any]] | None:
    path = folder / "duplicates.parquet"
    return pq.read_table(path).to_pylist() if path.is_file() else None


def test_two_nodes_on_a_shared_destination(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    shared = tmp_path / "shared"
    try:
        with ImageServer() as server:
            # 6 pictures under 48 URLs; each node drops what repeats its own shards.
            c = fleet.corpus(server, 48, delay=0.3, distinct=6)
            nodes = [
                DaemonProcess(
                    tmp_path / n,
                    data_root=str(shared),
                    cluster={"redis_url": redis.url, "node": n, "lease": 60},
                )
                for n in ("a", "b")
            ]
            with ExitStack() as stack:
                for node in nodes:
                    node.data = shared
                    fleet.start(node)
                    stack.push(node.__exit__)
                uj.write_input(shared / fleet.JOB, "parquet", uj.Corpus(urls=c.urls))
                text = fleet.manifest(4) + "\n[urllist.dedupe]\nexact = true\n"
                for node in nodes:
                    node.drop(f"{fleet.JOB}.toml", text)
                folder = shared / fleet.JOB
                rows = nodes[0].wait_for(lambda: _duplicates(folder), 60, "duplicates.parquet")
                index = fleet.shard_index(redis.url)
        assert len(index) == 12 and set(index.values()) == {"a", "b"}
        expected = _expected(folder, list(index))
        got = {(r["shard"], r["key"]): (r["of_shard"], r["of_key"]) for r in rows}
        assert got == expected
        assert {r["kind"] for r in rows} == {"exact"}
        # Per-node dedupe already dropped repeats within a node: those left cross nodes.
        assert rows and all(index[r["shard"]] != index[r["of_shard"]] for r in rows)
        # Only one node passed over the shared shards.
        lines = [fleet.log_lines(n, "duplicates.parquet: duplicates") for n in nodes]
        assert sorted(len(x) for x in lines) == [0, 1]
        assert run_pass(shared, fleet.JOB, DedupeSettings())["exact"] == len(rows)
    finally:
        redis.stop()

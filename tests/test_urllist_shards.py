"""One shard written atomically: tar or folder, parquet of every row, stats last."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from acquired.sources.urllist import outcome
from acquired.sources.urllist.shards import (
    HOST,
    SampleRecord,
    ShardWriter,
    is_complete,
    left_behind,
    remove_temporaries,
    sample_key,
    sample_record_fields,
)


def fill(writer: ShardWriter, shard_size: int = 10_000) -> None:
    base = writer.shard_id * shard_size
    for i in range(5):
        row = base + i
        key = sample_key(row, shard_size)
        if i % 2 == 0:
            record = SampleRecord(
                key,
                row,
                f"http://a/{i}",
                caption=f"cap {i}",
                extra={"W": i},
                attempts=1,
                bytes=3,
                width=10,
                height=10,
                sha256="ab" * 32,
            )
            writer.add(record, b"img", "jpg")
        else:
            record = SampleRecord(
                key,
                row,
                f"http://a/{i}",
                extra={"W": None},
                status=outcome.FAILED,
                error_class=outcome.HTTP_4XX,
                error_message="HTTP 404",
                http_status=404,
                attempts=1,
            )
            writer.add(record)


def test_key_scheme() -> None:
    assert sample_key(120_457, 10_000) == "000120000457"
    assert sample_key(0, 10) == "000000000000"


def test_webdataset_shard(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, 12, keep_columns=["W"])
    fill(writer)
    assert not is_complete(tmp_path, 12)
    assert not (tmp_path / "00012.tar").exists()
    names = writer.commit({"rows": 5})
    assert names == {"data": "00012.tar", "parquet": "00012.parquet", "stats": "00012_stats.json"}
    assert is_complete(tmp_path, 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names.values())
    with tarfile.open(tmp_path / "00012.tar") as tar:
        members = tar.getnames()
        meta = json.load(tar.extractfile("000120000002.json"))  # type: ignore[arg-type]
    assert members[:3] == ["000120000000.jpg", "000120000000.txt", "000120000000.json"]
    assert len(members) == 9
    assert meta["url"] == "http://a/2" and meta["W"] == 2 and meta["caption"] == "cap 2"
    table = pq.read_table(tmp_path / "00012.parquet")
    assert table.column_names == [*sample_record_fields(), "W"]
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [sample_key(120000 + i, 10_000) for i in range(5)]
    assert rows[1]["error_class"] == "http_4xx" and rows[1]["http_status"] == 404
    ok_keys = {r["key"] for r in rows if r["status"] == "ok"}
    assert ok_keys == {m.rsplit(".", 1)[0] for m in members}


def test_redo_replaces_and_never_follows_links(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / "00003.tar")
    os.symlink(victim, tmp_path / "00003.parquet")
    for _ in range(2):
        writer = ShardWriter(tmp_path, 3)
        fill(writer)
        writer.commit({})
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "00003.tar").is_symlink()
    with tarfile.open(tmp_path / "00003.tar") as tar:
        assert len(tar.getnames()) == 9


def test_abort_and_leftovers(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, 1)
    fill(writer)
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    left = ShardWriter(tmp_path, 2, output="files")
    fill(left)  # a killed worker leaves its temporaries behind
    other = ShardWriter(tmp_path, 4)
    fill(other)
    # Another node's shard in a folder the fleet shares, and one of another daemon on
    # this host still writing: both are left alone.
    elsewhere = tmp_path / ".00009.tar.other-node.4242.tmp"
    elsewhere.write_bytes(b"x")
    with subprocess.Popen(["sleep", "30"]) as live:
        writing = tmp_path / f".00010.tar.{HOST}.{live.pid}.tmp"
        writing.write_bytes(b"x")
        assert remove_temporaries(tmp_path) == 2
        live.kill()
    assert sorted(tmp_path.iterdir()) == sorted([elsewhere, writing])


@pytest.mark.parametrize(
    ("entry", "alive", "left"),
    [
        (".00001.tar.h.123.tmp", False, True),  # this host, its writer gone
        (".00001.tar.h.123.tmp", True, False),  # this host, still being written
        (".00001.h.123.tmp", False, True),  # a files-output folder
        (".00001.parquet.h.123.tmp", False, True),
        (".00001.tar.other.123.tmp", False, False),  # another node's
        (".00001.tar.123.tmp", False, False),  # no host: not ours to judge
        (".00001.tar.h.x1.tmp", False, False),
        ("00001.tar", False, False),  # a final name
        (".hidden", False, False),
    ],
)
def test_which_temporaries_are_left_behind(entry: str, alive: bool, left: bool) -> None:
    assert left_behind(entry, "h", lambda pid: alive) is left


@pytest.mark.parametrize("redo", [False, True])
def test_files_output(tmp_path: Path, redo: bool) -> None:
    for _ in range(2 if redo else 1):
        writer = ShardWriter(tmp_path, 7, output="files")
        fill(writer)
        writer.commit({"rows": 5})
    folder = tmp_path / "00007"
    assert sorted(p.name for p in folder.iterdir())[:3] == [
        "000070000000.jpg",
        "000070000000.json",
        "000070000000.txt",
    ]
    assert len(list(folder.iterdir())) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00007",
        "00007.parquet",
        "00007_stats.json",
    ]

"""Streaming URL-list readers: every format, compression, shard plans, malformed rows."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from acquired.sources.urllist.errors import MissingColumn, UnknownInputFormat
from acquired.sources.urllist.readers import (
    ShardSlice,
    check_columns,
    detect_format,
    plan_shards,
    read_rows,
)


def all_rows(path: Path, shard_size: int, **columns: object) -> list:
    rows = []
    for shard in plan_shards(path, None, shard_size):
        got = list(read_rows(path, None, shard, **columns))  # type: ignore[arg-type]
        assert [r.row_index for r in got] == list(range(shard.start, shard.stop))
        rows.extend(got)
    return rows


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
@pytest.mark.parametrize("shard_size", [1, 3, 7, 1000])
def test_txt_every_row_once_with_malformed_rows(tmp_path: Path, compression, shard_size) -> None:
    lines = [f"http://example.org/{i}.jpg".encode() for i in range(20)]
    lines[2] = b""  # no URL
    lines[5] = b"file:///etc/passwd"
    lines[7] = b"http://example.org/\xff\xfe.jpg"  # bad UTF-8
    lines[9] = b"http://example.org/" + b"a" * (70 * 1024)  # over 64 KiB
    lines[11] = b"  https://example.org/spaces.jpg  "
    lines[12] = b"ftp://example.org/x"
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "urls.txt"
    if compression == "gz":
        path = path.with_suffix(".txt.gz")
        data = gzip.compress(data)
    elif compression == "zst":
        path = path.with_suffix(".txt.zst")
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    rows = all_rows(path, shard_size)
    assert len(rows) == 20
    errors = {r.row_index: r.error for r in rows if r.error}
    assert set(errors) == {2, 5, 7, 9, 12}
    assert errors[2] == "no URL"
    assert "http(s)" in errors[5] and "file" in errors[5]
    assert errors[7] == "bad UTF-8"
    assert errors[9] == "line over 64 KiB"
    assert rows[11].url == "https://example.org/spaces.jpg"
    assert rows[19].url == "http://example.org/19.jpg"


def test_txt_without_trailing_newline_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"http://a/1\nhttp://a/2")
    assert [r.url for r in all_rows(path, 1)] == ["http://a/1", "http://a/2"]
    path.write_bytes(b"")
    assert plan_shards(path, None, 10) == []


def test_csv_quoted_newlines_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(
        "URL,TEXT,WIDTH\n"
        'http://a/1.jpg,"a cat\non two lines",10\n'
        "http://a/2.jpg,plain,20\n"
        ",no url,30\n"
        'http://a/4.jpg,"quote "" inside",40\n'
    )
    rows = all_rows(path, 2, url_column="URL", caption_column="TEXT", keep_columns=["WIDTH"])
    assert [r.row_index for r in rows] == [0, 1, 2, 3]
    assert rows[0].caption == "a cat\non two lines"
    assert rows[0].extra == {"WIDTH": "10"}
    assert rows[2].error == "no URL"
    assert rows[3].caption == 'quote " inside'


def test_tsv_bad_utf8_is_one_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv.gz"
    body = b"url\tcaption\nhttp://a/1\tx\nhttp://a/\xff\ty\nhttp://a/3\tz\n"
    path.write_bytes(gzip.compress(body))
    rows = all_rows(path, 2, caption_column="caption")
    assert [r.error for r in rows] == [None, "bad UTF-8", None]
    assert rows[2].caption == "z"


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    objs = [{"url": f"http://a/{i}", "caption": f"c{i}", "k": i} for i in range(5)]
    lines = [json.dumps(o) for o in objs]
    lines[1] = "{not json"
    lines[3] = "[1, 2]"
    path.write_text("\n".join(lines) + "\n")
    rows = all_rows(path, 2, caption_column="caption", keep_columns=["k"])
    assert [r.error for r in rows] == [None, "not JSON", None, "not a JSON object", None]
    assert rows[4].extra == {"k": 4} and rows[4].caption == "c4"


def test_parquet_seeks_by_row_group(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    n = 1000
    table = pa.table(
        {
            "URL": [f"http://a/{i}.jpg" if i % 100 else None for i in range(n)],
            "TEXT": [f"t{i}" for i in range(n)],
            "WIDTH": list(range(n)),
            "UNUSED": ["x" * 10] * n,
        }
    )
    pq.write_table(table, path, row_group_size=128)
    shards = plan_shards(path, None, 300)
    assert [(s.start, s.stop) for s in shards] == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    rows = all_rows(path, 300, url_column="URL", caption_column="TEXT", keep_columns=["WIDTH"])
    assert len(rows) == n
    assert rows[450].url == "http://a/450.jpg" and rows[450].extra == {"WIDTH": 450}
    assert rows[500].error == "no URL"
    one = list(read_rows(path, None, ShardSlice(9, 257, 259), url_column="URL"))
    assert [r.row_index for r in one] == [257, 258]


def test_missing_column_names_what_exists(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"url": ["http://a"], "caption": ["c"]}), path)
    with pytest.raises(MissingColumn) as info:
        check_columns(path, None, ["URL"])
    assert "'URL'" in str(info.value) and "'url'" in str(info.value)
    assert info.value.details["columns"] == ["url", "caption"]
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("link,text\nhttp://a,b\n")
    with pytest.raises(MissingColumn, match="'link', 'text'"):
        list(read_rows(csv_path, None, plan_shards(csv_path, None, 5)[0], url_column="url"))


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(UnknownInputFormat):
        detect_format(tmp_path / "urls.bin")
    assert detect_format(tmp_path / "x.JSONL.zst") == ("jsonl", "zst")


def test_million_line_plan_is_fast_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    with path.open("wb") as f:
        for block in range(100):
            f.write(
                b"".join(
                    b"https://images.example.org/%07d/some/long/path/image.jpg\n"
                    % (block * 10000 + i)
                    for i in range(10000)
                )
            )
    # In a fresh interpreter: this process's peak RSS holds whatever other tests used.
    code = (
        "import json, sys, time\n"
        "from acquired.sources.urllist.readers import plan_shards\n"
        "t = time.perf_counter()\n"
        "shards = plan_shards(sys.argv[1], None, 10_000)\n"
        "took = time.perf_counter() - t\n"
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so it would report
        # the peak of the pytest process this child was forked from.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "rss = int(hwm.split()[1]) / 1024\n"
        "print(json.dumps([len(shards), took, rss]))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    count, took, rss_mb = json.loads(child.stdout)
    print(
        f"\nplanned 1,000,000 lines into {count} shards in {took:.2f} s;"
        f" peak RSS of the planning process {rss_mb:.0f} MB"
    )
    assert count == 100
    shards = plan_shards(path, None, 10_000)
    assert len(shards) == 100 and shards[-1].stop == 1_000_000
    last = list(read_rows(path, None, shards[73]))
    assert last[0].row_index == 730_000
    assert last[0].url == "https://images.example.org/0730000/some/long/path/image.jpg"
    assert rss_mb < 500

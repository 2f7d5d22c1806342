"""Shards end to end: a Pillow corpus on a real loopback server, every input format, worker
processes with one job-wide dedupe index, every row accounted for exactly once."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support.image_server import ImageServer
from support.urllist_corpus import MAX_BYTES, Corpus, build

from acquired.sources.urllist import outcome
from acquired.sources.urllist.pool import ShardPool
from acquired.sources.urllist.readers import plan_shards
from acquired.sources.urllist.settings import (
    DedupeSettings,
    FetchSettings,
    FilterSettings,
    InputSettings,
    OutputSettings,
    ResizeSettings,
    UrlListSettings,
)
from acquired.sources.urllist.shards import sample_key
from acquired.sources.urllist.worker import ShardResult, ShardTask, run_shard

FETCH = FetchSettings(
    timeout=3.0,
    retries=1,
    max_bytes=MAX_BYTES,
    concurrency=32,
    backoff_base=0.05,
    backoff_max=0.2,
)
FILTERS = FilterSettings(min_side=100, max_aspect=3.0)
DEDUPE = DedupeSettings(exact=True, perceptual=True, max_distance=4, action="drop")


def write_input(path: Path, fmt: str, corpus: Corpus, extra_bad: bool = True) -> None:
    urls = [r.url for r in corpus.rows]
    captions = [r.caption for r in corpus.rows]
    if fmt == "txt":
        lines = [*urls, *(["", "ftp://example.org/a.jpg"] if extra_bad else [])]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "csv":
        body = "URL,TEXT,N\n" + "".join(
            f'{u},"{c}, quoted",{i}\n' for i, (u, c) in enumerate(zip(urls, captions, strict=True))
        )
        if extra_bad:
            body += ",no url,-1\nmailto:x@y,bad scheme,-2\n"
        path.write_text(body)
    elif fmt == "jsonl":
        objs = [
            {"URL": u, "TEXT": c, "N": i}
            for i, (u, c) in enumerate(zip(urls, captions, strict=True))
        ]
        lines = [json.dumps(o) for o in objs] + (
            ["{broken", '{"TEXT": "no url"}'] if extra_bad else []
        )
        path.write_text("\n".join(lines) + "\n")
    else:
        n = len(urls) + (2 if extra_bad else 0)
        table = pa.table(
            {
                "URL": urls + ([None, "javascript:alert(1)"] if extra_bad else []),
                "TEXT": captions + (["x", "y"] if extra_bad else []),
                "N": list(range(n)),
                "OTHER": ["unused"] * n,
            }
        )
        pq.write_table(table, path, row_group_size=64)


def collect(out: Path) -> dict[int, dict]:
    """Every parquet row of every finished shard by row index; checks tars against them."""
    rows: dict[int, dict] = {}
    for parquet in sorted(out.glob("*.parquet")):
        stem = parquet.stem
        assert (out / f"{stem}_stats.json").is_file()
        table = pq.read_table(parquet).to_pylist()
        ok = {r["key"] for r in table if r["status"] == outcome.OK}
        tar_path = out / f"{stem}.tar"
        if tar_path.exists():
            with tarfile.open(tar_path) as tar:
                names = tar.getnames()
                members = {n.rsplit(".", 1)[0] for n in names}
                for name in names:
                    if name.endswith(".jpg"):
                        Image.open(io.BytesIO(tar.extractfile(name).read())).verify()  # type: ignore[union-attr]
        else:
            names = [p.name for p in (out / stem).iterdir()]
            members = {n.rsplit(".", 1)[0] for n in names}
        assert members == ok, f"shard {stem}: tar members differ from the parquet's ok rows"
        assert len(names) == 3 * len(ok)  # image, caption, json
        for r in table:
            assert r["row_index"] not in rows, "a row in two shards"
            rows[r["row_index"]] = r
    return rows


def check_corpus(corpus: Corpus, rows: dict[int, dict], shard_size: int) -> None:
    for i, expected in enumerate(corpus.rows):
        got = rows[i]
        assert got["key"] == sample_key(i, shard_size)
        assert got["url"] == expected.url
        if expected.expect == "dup":
            continue
        assert (got["error_class"], got["url"]) == (expected.expect, expected.url)
        if expected.attempts is not None:
            assert got["attempts"] == expected.attempts, expected.url
    for a, b in corpus.pairs:
        ra, rb = rows[a], rows[b]
        statuses = sorted([ra["status"], rb["status"]])
        assert statuses == [outcome.DUPLICATE, outcome.OK], (ra["url"], rb["url"])
        kept, dup = (ra, rb) if ra["status"] == outcome.OK else (rb, ra)
        assert dup["duplicate_of"] == kept["key"]
        assert dup["error_class"] == outcome.DUPLICATE_CLASS


@pytest.fixture(scope="module")
def server_and_corpora():
    with ImageServer() as server:
        yield server, build(server), build(server, good=60, seed=1, slow=False, prefix="/quick")


@pytest.fixture
def served(server_and_corpora):
    server, corpus, _ = server_and_corpora
    corpus.rearm(server)
    return server, corpus


@pytest.fixture
def served_quick(server_and_corpora):
    server, _, quick = server_and_corpora
    quick.rearm(server)
    return server, quick


def test_job_in_worker_processes_with_one_dedupe_index(served, tmp_path: Path) -> None:
    server, corpus = served
    source = tmp_path / "list.parquet"
    write_input(source, "parquet", corpus)
    out = tmp_path / "out"
    out.mkdir()
    spec = InputSettings(
        str(source), url_column="URL", caption_column="TEXT", keep_columns=("N",), shard_size=70
    )
    settings = UrlListSettings(
        fetch=FETCH,
        filters=FILTERS,
        resize=ResizeSettings(mode="center_crop", size=64, format="jpg", quality=90),
        dedupe=DEDUPE,
    )
    shards = plan_shards(source, None, spec.shard_size)
    assert len(shards) == 3
    with ShardPool(DEDUPE, workers=2) as pool:
        futures = [pool.submit(ShardTask(spec, s, settings, str(out))) for s in shards]
        results: list[ShardResult] = [f.result(timeout=120) for f in futures]
        progress = pool.progress()
    total_rows = len(corpus.rows) + 2
    statuses = sum((Counter(r.statuses) for r in results), Counter())
    assert sum(statuses.values()) == total_rows
    assert sum(r.rows for r in results) == total_rows
    rows = collect(out)
    assert sorted(rows) == list(range(total_rows))
    check_corpus(corpus, rows, spec.shard_size)
    assert {rows[total_rows - 2]["error_class"], rows[total_rows - 1]["error_class"]} == {"bad_row"}
    assert Counter(r["status"] for r in rows.values()) == statuses
    failed = {f.row_index: f.error_class for r in results for f in r.failed}
    assert failed == {i: r["error_class"] for i, r in rows.items() if r["status"] != outcome.OK}
    with tarfile.open(out / "00000.tar") as tar:
        jpg = next(n for n in tar.getnames() if n.endswith(".jpg"))
        assert Image.open(io.BytesIO(tar.extractfile(jpg).read())).size == (64, 64)  # type: ignore[union-attr]
        meta = json.load(tar.extractfile(jpg.replace(".jpg", ".json")))  # type: ignore[arg-type]
    assert meta["N"] == int(meta["key"][-7:]) and meta["caption"].startswith("caption")
    assert {p.shard_id for p in progress} == {0, 1, 2}
    # A pool rebuilt from these shards (a restart): every kept sample is a duplicate of
    # itself under another key.
    kept = [(k, s, p) for r in results for (k, s, p) in r.hashes]
    assert len(kept) == statuses[outcome.OK]
    with ShardPool(DEDUPE, workers=1, shards_dir=out) as again:
        assert again.index.decide([("999999999999", s, p) for _, s, p in kept[:5]]) == [
            k for k, _, _ in kept[:5]
        ]
    assert server.agents and all("acquired" in a for a in server.agents)


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_text_inputs_in_process(served_quick, tmp_path: Path, fmt: str) -> None:
    _server, corpus = served_quick
    source = tmp_path / f"list.{fmt}"
    write_input(source, fmt, corpus)
    out = tmp_path / "out"
    out.mkdir()
    caption = None if fmt == "txt" else "TEXT"
    spec = InputSettings(
        str(source),
        url_column="URL",
        caption_column=caption,
        keep_columns=() if fmt == "txt" else ("N",),
        shard_size=1000,
    )
    output = OutputSettings(format="files" if fmt == "csv" else "webdataset")
    settings = UrlListSettings(fetch=FETCH, filters=FILTERS, dedupe=DEDUPE, output=output)
    if fmt == "txt":
        # Without captions the folder/tar holds no KEY.txt: check members loosely.
        (shard,) = plan_shards(source, None, spec.shard_size)
        result = run_shard(ShardTask(spec, shard, settings, str(out)))
        table = pq.read_table(out / "00000.parquet").to_pylist()
        assert len(table) == result.rows == len(corpus.rows) + 2
        with tarfile.open(out / "00000.tar") as tar:
            members = {n.rsplit(".", 1)[0] for n in tar.getnames()}
        assert members == {r["key"] for r in table if r["status"] == outcome.OK}
        rows = {r["row_index"]: r for r in table}
    else:
        (shard,) = plan_shards(source, None, spec.shard_size)
        result = run_shard(ShardTask(spec, shard, settings, str(out)))
        rows = collect(out)
    assert sum(result.statuses.values()) == len(rows) == len(corpus.rows) + 2
    check_corpus(corpus, rows, spec.shard_size)
    assert result.classes["bad_row"] == 2


def test_mark_keeps_duplicates_and_retry_rows(served_quick, tmp_path: Path) -> None:
    server, corpus = served_quick
    source = tmp_path / "list.txt"
    write_input(source, "txt", corpus, extra_bad=False)
    out = tmp_path / "out"
    out.mkdir()
    spec = InputSettings(str(source), shard_size=1000)
    near = next(p for p in corpus.pairs if "/near/" in corpus.rows[p[0]].url)
    good = next(i for i, r in enumerate(corpus.rows) if "/img/" in r.url and r.expect is None)
    settings = UrlListSettings(
        fetch=FETCH, filters=FILTERS, dedupe=DedupeSettings(perceptual=True, action="mark")
    )
    (shard,) = plan_shards(source, None, spec.shard_size)
    before = {r.url: server.hits(r.url.split(str(server.port), 1)[1]) for r in corpus.rows}
    task = ShardTask(spec, shard, settings, str(out), rows=(*near, good), name="retry-00000-1")
    result = run_shard(task)
    assert result.rows == 3
    assert result.statuses == {"ok": 3} and result.marked_duplicates == 1
    table = pq.read_table(out / "retry-00000-1.parquet").to_pylist()
    assert sorted(r["row_index"] for r in table) == sorted([*near, good])
    assert sum(1 for r in table if r["duplicate_of"]) == 1
    with tarfile.open(out / "retry-00000-1.tar") as tar:
        assert len(tar.getnames()) == 3 * 2  # image + json each (no caption in txt)
    fetched = {
        i
        for i, r in enumerate(corpus.rows)
        if server.hits(r.url.split(str(server.port), 1)[1]) != before[r.url]
    }
    assert fetched == {*near, good}  # only the task's rows were fetched

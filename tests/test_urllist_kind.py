"""The URL-list kind's pure parts: when the runner holds, the operator's figures, the
reader's slice of a retry shard, the settings from a manifest, the tables shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from acquired.daemon.commands.urllist import render
from acquired.daemon.kinds.urllist_plan import job_settings, shard_slice
from acquired.daemon.manifest import parse_manifest
from acquired.daemon.runners.urllist import hold_reason
from acquired.daemon.urllist_tui import urllist_table
from acquired.daemon.urllist_view import figures
from acquired.daemon.workqueue import ShardSpec

MiB = 1 << 20


@pytest.mark.parametrize(
    ("free", "reserve", "quota", "written", "paused", "full_at", "expect"),
    [
        (100, 10, None, 0, False, None, None),
        (5, 10, None, 0, False, None, "waiting for disk"),
        (100, 10, 1000, 999, False, None, None),
        (100, 10, 1000, 1000, False, None, "quota reached"),
        (5, 10, 1000, 2000, False, None, "quota reached"),
        (100, 10, None, 0, True, None, "paused by user"),
        (10 * MiB, 0, None, 0, False, 5 * MiB, "ran out of space"),
        (70 * MiB, 0, None, 0, False, 5 * MiB, None),
    ],
)
def test_hold_reason(
    free: int,
    reserve: int,
    quota: int | None,
    written: int,
    paused: bool,
    full_at: int | None,
    expect: str | None,
) -> None:
    got = hold_reason(
        disk_free=free,
        disk_reserve=reserve,
        quota=quota,
        bytes_on_disk=written,
        paused=paused,
        full_at=full_at,
    )
    assert (got is None) if expect is None else (got is not None and expect in got)


def test_figures_are_sums_of_the_counters() -> None:
    fig = figures(
        {"ok": 70, "http_4xx": 10, "duplicate": 5, "filtered_small": 3, "filtered_aspect": 2},
        {"queued": 2, "claimed": 1, "done": 7, "dead": 0},
        12345,
        rows=200,
        live_done=10,
        live_ok=8,
        samples_per_s=5.0,
    )
    assert fig["samples_done"] == 100 and fig["samples_ok"] == 78
    assert fig["success_rate"] == pytest.approx(0.78)
    assert fig["duplicates"] == 5 and fig["filtered"] == 5
    assert fig["failures"] == {
        "http_4xx": 10,
        "duplicate": 5,
        "filtered_small": 3,
        "filtered_aspect": 2,
    }
    assert (fig["shards_done"], fig["shards_in_progress"], fig["shards_total"]) == (7, 1, 10)
    assert fig["eta"] == pytest.approx(20.0)
    assert figures({}, {}, 0, rows=None)["eta"] is None


def test_retry_shard_reads_from_the_shard_holding_its_first_row() -> None:
    offsets = [0, 1000, 2000, 3000]
    normal = ShardSpec("j", 2, 20, 30, 2000)
    assert shard_slice(normal, 10, offsets).offset == 2000
    retry = ShardSpec("j", 9, 23, 36, kind="retry", rows=(23, 35))
    s = shard_slice(retry, 10, offsets)
    assert (s.shard_id, s.start, s.stop, s.offset) == (9, 20, 36, 2000)
    parquet = shard_slice(ShardSpec("j", 9, 23, 36, kind="retry", rows=(23,)), 10, [None] * 4)
    assert parquet.offset is None and parquet.start == 20


def test_settings_from_a_manifest() -> None:
    text = """
manifest_version = 1
kind = "urllist"
name = "x"
destination = "x"
[urllist]
input = "a.parquet"
url_column = "URL"
max_bytes = "1M"
[urllist.filters]
min_side = 64
max_aspect = 2.5
[urllist.resize]
size = 128
[urllist.dedupe]
perceptual = { hash = "phash", max_distance = 6 }
action = "mark"
"""
    spec = parse_manifest(text.encode(), "x.toml").urllist
    assert spec is not None
    inp, settings = job_settings(spec, Path("/d/x/a.parquet"))
    assert inp.path == "/d/x/a.parquet" and inp.url_column == "URL" and inp.format == "parquet"
    assert settings.fetch.max_bytes == 1_000_000
    assert settings.filters.min_side == 64 and settings.filters.max_aspect == 2.5
    assert settings.resize is not None and settings.resize.size == 128
    assert settings.dedupe.perceptual and settings.dedupe.max_distance == 6
    assert settings.dedupe.action == "mark"


def test_tables() -> None:
    job = {
        "id": "laion",
        "urllist": figures({"ok": 9, "timeout": 1}, {"done": 1, "queued": 1}, 10, rows=20),
    }
    table = urllist_table([job, {"id": "files-job"}])
    assert table is not None and table.row_count == 1
    console = Console(width=120, record=True)
    console.print(table)
    out = console.export_text()
    assert "10/20" in out and "90.0%" in out and "timeout 1" in out and "1/0/2" in out
    assert urllist_table([{"id": "files-job"}]) is None
    text = render(
        [{"row": 3, "url": "https://u:secret@h/x.jpg", "class": "timeout", "message": "m"}]
    )
    assert "1 failed sample(s): timeout 1" in text and "secret" not in text


def test_prometheus_gauges_from_a_report() -> None:
    from acquired.daemon.metrics import Metrics
    from acquired.daemon.urllist_messages import UrllistReport
    from acquired.daemon.urllist_metrics import UrllistMetrics

    metrics = Metrics()
    gauges = UrllistMetrics(metrics.registry)
    gauges.update(
        UrllistReport(
            "laion", 1, {"done": 3, "queued": 2}, {"ok": 90, "timeout": 4}, 1000, samples_per_s=12.5
        )
    )
    text = metrics.render().decode()
    assert 'acquired_urllist_samples{job="laion",status="ok"} 90.0' in text
    assert 'acquired_urllist_shards{job="laion",state="queued"} 2.0' in text
    assert 'acquired_urllist_samples_per_second{job="laion"} 12.5' in text


def test_show_figures_text() -> None:
    from acquired.daemon.commands.urllist import render_figures

    fig = figures(
        {"ok": 9, "timeout": 1}, {"done": 1, "claimed": 1}, 10, rows=20, samples_per_s=2.0
    )
    fig["dead"] = [{"shard": 7, "deliveries": 5, "error": "disk.full: no space"}]
    text = render_figures(fig)
    assert "samples: 10/20" in text and "ok 9 (90.0%)" in text and "ETA 5 s" in text
    assert "1 done · 1 in progress" in text and "failures: timeout 1" in text
    assert "dead shard 7 after 5: disk.full" in text


def test_state_thread_queue_writes_join_the_turns_batch(tmp_path: Path) -> None:
    from acquired.daemon.store import Store
    from acquired.daemon.workqueue import QueueJob

    store = Store(tmp_path / "state.db")
    queue = store.work_queue()
    with store.batch():
        store.add_event("info", "a turn's own write")
        queue.publish(QueueJob("j", "d"), [ShardSpec("j", 0, 0, 10), ShardSpec("j", 1, 10, 20)])
        queue.remove("j")
        queue.publish(QueueJob("j", "d2"), [ShardSpec("j", 0, 0, 10)])
    assert queue.counts("j").shards["queued"] == 1
    queue.publish(QueueJob("k", "d"), [ShardSpec("k", 0, 0, 5)])  # outside a batch too
    assert queue.counts("k").shards["queued"] == 1
    store.close()

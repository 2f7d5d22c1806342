"""URL-list jobs end to end through the real daemon, against a loopback image server."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from support import urllist_jobs as uj
from support.daemon import DaemonProcess
from support.image_server import ImageServer


def accounted(d: DaemonProcess, job: str) -> dict[str, int]:
    """The job's sample counters as `show` reports them."""
    show = d.call({"cmd": "show", "job": job})
    fig = show["urllist"]
    return {"ok": fig["samples_ok"], **fig["failures"]}


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_every_row_accounted_once(tmp_path: Path, fmt: str) -> None:
    with ImageServer() as server:
        corpus = uj.build(server, good=40)
        with DaemonProcess(tmp_path) as d:
            out = d.data / "j"
            name = uj.write_input(out, fmt, corpus)
            d.drop("j.toml", uj.manifest("j", name, fmt=fmt))
            job = d.wait_job("j", "done", timeout=90)
            fig = job["urllist"]
            rows = uj.read_output(out)
    n = len(corpus.urls)
    assert sorted(rows) == list(range(n)), "every input row is in exactly one parquet row"
    assert fig["samples_total"] == n and fig["samples_done"] == n
    assert fig["shards_done"] == fig["shards_total"] == -(-n // 16)
    got = Counter(r["error_class"] or "ok" for r in rows.values())
    assert got == Counter(corpus.expect)
    assert {k: v for k, v in got.items() if k != "ok"} == fig["failures"]
    assert fig["duplicates"] == 2 and fig["filtered"] == 3
    copy = next(i for i, u in enumerate(corpus.urls) if u.endswith("/copy/1.jpg"))
    near = next(i for i, u in enumerate(corpus.urls) if u.endswith("/near/2.jpg"))
    assert rows[copy]["duplicate_of"] == rows[1]["key"]
    assert rows[near]["duplicate_of"] == rows[2]["key"]
    if fmt != "txt":
        assert rows[5]["caption"] == "caption 5"
    assert uj.no_partial_files(out) == []

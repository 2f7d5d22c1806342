"""Mirror probing and ``acquirectl mirrors`` against loopback servers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest
from rich.console import Console
from support.http_server import Blob, Fault, HttpTestServer, ServerPool, payload, server_pool

from acquired.daemon.commands.mirrors import mirrors_table, register
from acquired.sources.http.probe import probe, probe_all
from acquired.sources.http.ranking import Sample, rank

DATA = payload(3 << 20, seed=11)


@pytest.fixture
def pool() -> Iterator[ServerPool]:
    with server_pool() as p:
        yield p


def dead_url() -> str:
    server = HttpTestServer()
    url = server.url("/f")
    server.stop()
    return url


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="acquirectl")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_probe_measures_a_ranged_read(pool: ServerPool) -> None:
    (s,) = pool.mirrors(1, "/f", DATA)
    sample = probe(s.url("/f"), sample_bytes=512 * 1024)
    assert sample.reachable
    assert sample.size == len(DATA)
    assert sample.ranges is True
    assert sample.latency is not None and sample.latency > 0
    assert sample.throughput is not None and sample.throughput > 0
    assert sample.validator == s.blob("/f").etag
    (req,) = s.requests_for("/f")
    assert req.range == "bytes=0-524287"
    assert s.bytes_served("/f") <= 512 * 1024


def test_probe_reports_failures_without_raising(pool: ServerPool) -> None:
    s = pool.new()
    s.add("/f", DATA)
    s.fault("/f", Fault(status=404), times=None)
    assert probe(s.url("/f")).error == "HTTP 404 Not Found"
    assert probe(dead_url()).error == "connection refused"
    assert "unsupported" in (probe("ftp://example.org/f").error or "")


def test_mirrors_command_ranks_fast_before_slow_and_dead_last(
    pool: ServerPool, capsys: pytest.CaptureFixture[str]
) -> None:
    slow, fast = pool.mirrors(2, "/f", Blob.of(DATA, mtime=1_700_000_000))
    slow.fault("/f", Fault(rate=256 * 1024), times=None)
    odd = pool.new()
    odd.add("/f", payload(len(DATA), seed=12))  # another version: other ETag
    dead = dead_url()
    code = run_cli(
        [
            "mirrors",
            "--json",
            "--sample",
            str(256 * 1024),
            dead,
            slow.url("/f"),
            odd.url("/f"),
            fast.url("/f"),
        ]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["url"] for r in rows] == [fast.url("/f"), slow.url("/f"), odd.url("/f"), dead]
    assert rows[0]["rank"] == 1 and rows[0]["reachable"]
    assert "differs" in rows[2]["note"]
    assert rows[3]["reachable"] is False and rows[3]["error"] == "connection refused"


def test_mirrors_command_all_dead_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["mirrors", "--json", dead_url()]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["reachable"] is False


def test_mirrors_table_renders_unreachable(pool: ServerPool) -> None:
    (s,) = pool.mirrors(1, "/f", DATA)
    samples = probe_all([s.url("/f"), dead_url()], sample_bytes=64 * 1024)
    console = Console(record=True, width=200)
    console.print(mirrors_table(rank(samples), 1 << 30))
    text = console.export_text()
    assert s.url("/f") in text
    assert "unreachable" in text
    assert "connection refused" in text


def test_etag_only_and_last_modified_only_servers_do_not_differ(
    pool: ServerPool, capsys: pytest.CaptureFixture[str]
) -> None:
    etag_only, lm_only = pool.new(), pool.new()
    etag_only.add("/f", Blob.of(DATA, last_modified=False))
    lm_only.add("/f", Blob.of(DATA, etag=False, mtime=1_700_000_000))
    code = run_cli(
        ["mirrors", "--json", "--sample", str(64 * 1024), etag_only.url("/f"), lm_only.url("/f")]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["note"] for r in rows] == [None, None]
    assert {r["etag"] is None for r in rows} == {True, False}


def test_differing_last_modified_is_still_a_version_difference() -> None:
    same = "Tue, 14 Nov 2023 22:13:20 GMT"
    samples = [
        Sample("http://a/f", latency=0.1, throughput=1e6, last_modified=same),
        Sample("http://b/f", latency=0.1, throughput=1e6, etag='"x"', last_modified=same),
        Sample(
            "http://c/f", latency=0.1, throughput=9e6, last_modified="Mon, 01 Jan 2024 00:00:00 GMT"
        ),
    ]
    ranked = rank(samples)
    assert ranked[-1].sample.url == "http://c/f"
    assert ranked[-1].note and "differs" in ranked[-1].note
    assert ranked[0].note is None and ranked[1].note is None


def test_server_without_range_support_gets_a_warning(
    pool: ServerPool, capsys: pytest.CaptureFixture[str]
) -> None:
    s = pool.new()
    s.add("/f", Blob.of(DATA, accept_ranges=False))
    s.fault("/f", Fault(no_range=True), times=None)
    assert run_cli(["mirrors", "--sample", str(64 * 1024), s.url("/f")]) == 0
    out = capsys.readouterr().out
    assert "no Range support" in out
    assert run_cli(["mirrors", "--json", "--sample", str(64 * 1024), s.url("/f")]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["ranges"] is False and "no Range support" in row["warning"]


def test_estimate_is_for_the_size_the_mirrors_state(
    pool: ServerPool, capsys: pytest.CaptureFixture[str]
) -> None:
    (s,) = pool.mirrors(1, "/f", DATA)
    assert run_cli(["mirrors", "--sample", str(64 * 1024), s.url("/f")]) == 0
    out = capsys.readouterr().out
    assert "3.0 MiB" in out
    assert "1024 MiB" not in out and "1.0 GiB" not in out
    assert (
        run_cli(["mirrors", "--sample", str(64 * 1024), "--size", str(1 << 30), s.url("/f")]) == 0
    )
    assert "1.0 GiB" in capsys.readouterr().out

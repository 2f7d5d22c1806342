"""The Prometheus endpoint, scraped over loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from acquired.daemon.metrics import (
    Metrics,
    MetricsError,
    MetricsListenFailed,
    MetricsNotLoopback,
    loopback_address,
    source_kind,
)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: {(name, sorted labels): value}."""
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.stop()


def test_off_by_default(metrics: Metrics) -> None:
    assert metrics.start(None) is None
    assert metrics.url is None
    # recording still works without the endpoint
    metrics.observe_bytes("http", 10)
    assert b'acquired_bytes_total{source="http"} 10.0' in metrics.render()


def test_scrape_over_loopback(metrics: Metrics) -> None:
    host, port = metrics.start("127.0.0.1:0") or ("", 0)
    assert host == "127.0.0.1" and port > 0
    assert metrics.url == f"http://127.0.0.1:{port}/metrics"
    before = scrape(metrics.url)
    assert before[("acquired_bytes_total", (("source", "http"),))] == 0
    assert before[("acquired_active_transfers", (("source", "torrent"),))] == 0

    metrics.observe_bytes("http 2 mirrors", 1000)
    metrics.observe_bytes("http", 500)
    metrics.observe_bytes("torrent", 42)
    metrics.observe_bytes("http", 0)
    metrics.failure("verify.digest_mismatch")
    metrics.failure("verify.digest_mismatch")
    metrics.failure("http.not_found")
    metrics.observe_verify(0.3)
    metrics.observe_verify(20.0)
    metrics.observe_extract(2.0)
    metrics.update_from_snapshot(
        {
            "daemon": {"disk_free": 5_000_000, "disk_reserve": 1_000_000, "dht_nodes": 120},
            "counts": {"active": 3, "queued": 4, "done": 10, "failed": 2, "paused": 0},
            "active": [
                {"source": "http 2 mirrors"},
                {"source": "torrent 14 peers"},
                {"source": "http"},
            ],
        }
    )
    s = scrape(metrics.url)
    assert s[("acquired_bytes_total", (("source", "http"),))] == 1500
    assert s[("acquired_bytes_total", (("source", "torrent"),))] == 42
    assert s[("acquired_active_transfers", (("source", "http"),))] == 2
    assert s[("acquired_active_transfers", (("source", "torrent"),))] == 1
    assert s[("acquired_failures_total", (("code", "verify.digest_mismatch"),))] == 2
    assert s[("acquired_failures_total", (("code", "http.not_found"),))] == 1
    assert s[("acquired_verify_seconds_count", ())] == 2
    assert s[("acquired_verify_seconds_sum", ())] == pytest.approx(20.3)
    assert s[("acquired_verify_seconds_bucket", (("le", "0.5"),))] == 1
    assert s[("acquired_extract_seconds_count", ())] == 1
    assert s[("acquired_disk_free_bytes", ())] == 5_000_000
    assert s[("acquired_disk_reserve_bytes", ())] == 1_000_000
    assert s[("acquired_dht_nodes", ())] == 120
    assert s[("acquired_files", (("state", "queued"),))] == 4
    assert s[("acquired_files", (("state", "done"),))] == 10
    # a transfer that ended drops out of the gauge at the next snapshot
    metrics.update_from_snapshot({"active": [], "counts": {}, "daemon": {}})
    s = scrape(metrics.url)
    assert s[("acquired_active_transfers", (("source", "http"),))] == 0


def test_ipv6_loopback(metrics: Metrics) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        address = metrics.start("[::1]:0")
    except MetricsListenFailed as exc:
        pytest.skip(f"::1 not configured here: {exc}")
    assert address is not None and address[0] == "::1"
    assert metrics.url is not None and metrics.url.startswith("http://[::1]:")
    assert ("acquired_dht_nodes", ()) in scrape(metrics.url)


@pytest.mark.parametrize("listen", ["0.0.0.0:9469", "192.0.2.1:9469", "[::]:9469", "example.org:1"])
def test_only_loopback_is_accepted(listen: str) -> None:
    with pytest.raises(MetricsNotLoopback) as info:
        Metrics().start(listen)
    assert info.value.code == "metrics.not_loopback"
    assert "loopback" in info.value.hint


def test_malformed_listen_names_the_key() -> None:
    with pytest.raises(MetricsError, match=r"\[metrics\] listen"):
        loopback_address("9469")


def test_localhost_means_127_0_0_1() -> None:
    assert loopback_address("localhost:9469") == ("127.0.0.1", 9469)


def test_port_in_use_is_a_clear_error(metrics: Metrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsListenFailed) as info:
            metrics.start(f"127.0.0.1:{port}")
    assert info.value.code == "metrics.listen_failed"
    assert str(port) in str(info.value)


def test_restart_moves_the_endpoint(metrics: Metrics) -> None:
    first = metrics.start("127.0.0.1:0")
    assert first is not None
    old_url = metrics.url
    assert metrics.restart(f"127.0.0.1:{first[1]}") == first  # unchanged: kept
    metrics.restart(None)
    assert metrics.url is None
    assert old_url is not None
    with pytest.raises(requests.ConnectionError):
        requests.get(old_url, timeout=5)
    assert metrics.restart("127.0.0.1:0") is not None
    assert metrics.url is not None
    assert scrape(metrics.url)


def test_source_kind() -> None:
    assert source_kind("http 2 mirrors") == "http"
    assert source_kind("torrent 3 peers") == "torrent"
    assert source_kind(None) == "other"
    assert source_kind("carrier pigeon") == "other"

"""Mirror ranking, connection allocation, backoff and the rate limiter (pure)."""

from __future__ import annotations

import email.utils

from hypothesis import given, settings
from hypothesis import strategies as st

from acquired.sources.http.protocol import (
    Validator,
    backoff_delay,
    check_url,
    parse_content_range,
    parse_retry_after,
    status_error,
)
from acquired.sources.http.ranking import Sample, allocate, estimated_seconds, host_of, rank
from acquired.sources.http.ratelimit import RateLimiter
from acquired.sources.http.resume import decode, encode, merge_ranges


def test_rank_orders_by_estimated_time_and_puts_unreachable_last() -> None:
    samples = [
        Sample("http://slow/f", latency=0.01, throughput=1e6),
        Sample("http://dead/f", error="connection refused"),
        Sample("http://fast/f", latency=0.2, throughput=50e6),
        Sample("http://near/f", latency=0.001, throughput=10e6),
    ]
    ranked = rank(samples, size=100_000_000)
    assert [r.sample.url for r in ranked] == [
        "http://fast/f",
        "http://near/f",
        "http://slow/f",
        "http://dead/f",
    ]
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert ranked[-1].seconds is None and ranked[-1].note == "connection refused"
    # For a tiny transfer, latency dominates.
    assert rank(samples, size=1000)[0].sample.url == "http://near/f"


def test_rank_demotes_mirrors_that_disagree() -> None:
    samples = [
        Sample("http://a/f", latency=0.1, throughput=1e6, size=100, validator='"x"'),
        Sample("http://b/f", latency=0.1, throughput=2e6, size=100, validator='"x"'),
        Sample("http://odd/f", latency=0.01, throughput=99e6, size=100, validator='"y"'),
    ]
    ranked = rank(samples)
    assert ranked[-1].sample.url == "http://odd/f"
    assert ranked[-1].note is not None and "differs" in ranked[-1].note


def test_estimated_seconds() -> None:
    assert estimated_seconds(Sample("u", latency=0.5, throughput=100.0), 1000) == 10.5
    assert estimated_seconds(Sample("u", error="x"), 10) is None


def test_allocate_proportional_to_speed() -> None:
    alloc = allocate({"http://a/f": 30.0, "http://b/f": 10.0}, 16)
    assert alloc == {"http://a/f": 12, "http://b/f": 4}


def test_allocate_unmeasured_mirror_gets_a_fair_trial() -> None:
    alloc = allocate({"http://a/f": 10.0, "http://new/f": None}, 8)
    assert alloc["http://new/f"] == 4


def test_allocate_drops_very_slow_mirrors_but_keeps_one() -> None:
    alloc = allocate({"http://a/f": 1000.0, "http://crawl/f": 1.0}, 8)
    assert alloc == {"http://a/f": 8, "http://crawl/f": 0}
    assert allocate({"http://only/f": 0.0}, 4) == {"http://only/f": 4}


def test_allocate_respects_per_host_cap() -> None:
    speeds = {"http://h:1/f": 10.0, "http://h:2/f": 10.0, "http://other/f": 1.0}
    alloc = allocate(speeds, 32, per_host=16)
    assert alloc["http://h:1/f"] + alloc["http://h:2/f"] == 16
    assert alloc["http://other/f"] == 16
    assert host_of("http://H:1/f") == "h"


@settings(max_examples=200, deadline=None)
@given(
    speeds=st.dictionaries(
        st.sampled_from([f"http://h{i % 3}:{i}/f" for i in range(8)]),
        st.one_of(st.none(), st.floats(min_value=0, max_value=1e9)),
        min_size=1,
    ),
    total=st.integers(min_value=0, max_value=64),
    per_host=st.integers(min_value=1, max_value=16),
)
def test_allocate_invariants(speeds: dict[str, float | None], total: int, per_host: int) -> None:
    alloc = allocate(speeds, total, per_host=per_host)
    assert set(alloc) == set(speeds)
    assert all(n >= 0 for n in alloc.values())
    assert sum(alloc.values()) <= total
    per: dict[str, int] = {}
    for url, n in alloc.items():
        per[host_of(url)] = per.get(host_of(url), 0) + n
    assert all(n <= per_host for n in per.values())
    # Connections stay idle only when every host of a mirror with a speed is full.
    if sum(alloc.values()) < total:
        known = [v for v in speeds.values() if v]
        for url, speed in speeds.items():
            if speed is None and known:
                speed = 1.0
            if speed or not known:
                assert per.get(host_of(url), 0) >= per_host or alloc[url] > 0


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert backoff_delay(1, 1.0, 60.0, rand=lambda: 0.0) == 0.5
    assert backoff_delay(1, 1.0, 60.0, rand=lambda: 1.0) == 1.0
    assert backoff_delay(4, 1.0, 60.0, rand=lambda: 1.0) == 8.0
    assert backoff_delay(20, 1.0, 60.0, rand=lambda: 1.0) == 60.0
    assert 30.0 <= backoff_delay(20, 1.0, 60.0) <= 60.0


def test_retry_after_forms() -> None:
    assert parse_retry_after("120", now=0) == 120.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None, now=now) is None


def test_content_range_parsing() -> None:
    cr = parse_content_range("bytes 10-19/100")
    assert cr is not None and (cr.first, cr.last, cr.total) == (10, 19, 100)
    star = parse_content_range("bytes 0-9/*")
    assert star is not None and star.total is None
    assert parse_content_range("bytes 10-9/100") is None
    assert parse_content_range("bytes 0-100/100") is None
    assert parse_content_range("items 0-1/2") is None
    assert parse_content_range(None) is None


def test_validator_conflicts() -> None:
    a = Validator(etag='"1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    assert a.conflicts(Validator(etag='"1"')) is None
    assert a.conflicts(Validator(etag='W/"1"')) is None
    assert "ETag" in (a.conflicts(Validator(etag='"2"')) or "")
    assert a.conflicts(Validator()) is None
    b = Validator(last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    assert "Last-Modified" in (b.conflicts(Validator(last_modified="Tue, 02 Jan 2024")) or "")
    assert Validator(etag='W/"w"', last_modified="d").if_range() == "d"
    assert Validator(etag='"s"', last_modified="d").if_range() == '"s"'


def test_status_errors() -> None:
    assert status_error(404, "u").code == "http.not_found"
    assert not status_error(404, "u").retryable
    assert status_error(503, "u").code == "http.server_busy"
    assert status_error(502, "u").retryable
    assert status_error(418, "u").code == "http.status"


def test_check_url() -> None:
    assert check_url("https://example.org/a") == "https://example.org/a"


def test_resume_state_round_trip_and_rejections() -> None:
    v = Validator(etag='"e"')
    state = encode(size=100, validator=v, url="http://m/f", done=[(50, 60), (0, 10), (10, 20)])
    assert state["done"] == [[0, 20], [50, 60]]
    point = decode(state, part_size=100, expected_size=100)
    assert not isinstance(point, str)
    assert point.prefix == 20 and point.done_bytes == 30 and point.validator == v
    assert "unknown format" in str(decode({"format": 9}, part_size=1, expected_size=None))
    assert "request names" in str(decode(state, part_size=100, expected_size=99))
    assert "partial file has" in str(decode(state, part_size=30, expected_size=None))
    assert "missing" in str(decode(state, part_size=None, expected_size=None))
    bad = dict(state, done=[[5, 1]])
    assert "invalid range" in str(decode(bad, part_size=100, expected_size=None))
    assert decode(None, part_size=None, expected_size=None) == "no resume state"
    assert merge_ranges([(5, 5), (1, 3), (2, 4)]) == [(1, 4)]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=50, deadline=None)
@given(
    rate=st.floats(min_value=10_000, max_value=1e9),
    reads=st.lists(st.integers(min_value=1, max_value=4 << 20), min_size=20, max_size=200),
)
def test_rate_limiter_holds_within_ten_percent(rate: float, reads: list[int]) -> None:
    """Callers that sleep what ``reserve`` says move at the configured rate, whatever
    their read sizes: the long-run average stays within 10%."""
    clock = _Clock()
    limiter = RateLimiter(rate, clock=clock)
    total = 0
    for n in reads:
        clock.now += limiter.reserve(n)
        total += n
    elapsed = clock.now
    burst = max(4096.0, rate / 10)
    # The only slack is the initial burst, at most a tenth of a second's worth.
    assert total <= rate * elapsed + burst + 1e-6 * total
    if elapsed > 0:
        assert total / elapsed >= rate * 0.9
    # Long enough that the burst does not matter: total <= rate * elapsed + burst, and
    # elapsed > 19 * burst / rate here, so the burst adds at most 1/19 (about 5%).
    if total > 20 * burst:
        assert total / elapsed <= rate * 1.1


def test_rate_limiter_shared_by_threads_and_changed_live() -> None:
    clock = _Clock()
    limiter = RateLimiter(1000.0, burst=100.0, clock=clock)
    assert limiter.reserve(100) == 0.0
    assert limiter.reserve(500) == 0.5
    limiter.set_rate(None)
    assert limiter.reserve(10**9) == 0.0
    assert limiter.rate is None
    limiter.set_rate(2000.0)
    assert limiter.chunk_size(1 << 20) == 4096

"""Mirror probing: a short ranged read of each URL measures latency and throughput.

The measurements feed ``ranking.rank``; ``acquirectl mirrors`` prints the result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import requests

from acquired.sources.http.model import USER_AGENT
from acquired.sources.http.neterrors import network_cause
from acquired.sources.http.protocol import check_url, parse_content_range
from acquired.sources.http.ranking import Sample

DEFAULT_SAMPLE = 1 << 20


def probe(
    url: str,
    *,
    sample_bytes: int = DEFAULT_SAMPLE,
    timeout: float = 10.0,
    session: requests.Session | None = None,
    user_agent: str = USER_AGENT,
) -> Sample:
    """Fetch the first ``sample_bytes`` of ``url`` with a range request.

    ``latency`` is the time to the first body byte (connection, TLS, request, server);
    ``throughput`` the speed of the rest of the sample. Never raises for network or HTTP
    trouble: the sample carries an ``error`` instead."""
    try:
        check_url(url)
    except Exception as exc:
        return Sample(url, error=str(exc))
    own = session is None
    sess = session or requests.Session()
    headers = {
        "Range": f"bytes=0-{max(1, sample_bytes) - 1}",
        "Accept-Encoding": "identity",
        "User-Agent": user_agent,
    }
    started = time.monotonic()
    try:
        with sess.get(url, headers=headers, stream=True, timeout=(timeout, timeout)) as r:
            if r.status_code not in (200, 206):
                return Sample(url, error=f"HTTP {r.status_code} {r.reason or ''}".strip())
            size: int | None = None
            if r.status_code == 206:
                cr = parse_content_range(r.headers.get("Content-Range"))
                size = cr.total if cr else None
            elif (length := r.headers.get("Content-Length", "")).isdigit():
                size = int(length)
            etag = r.headers.get("ETag") or None
            last_modified = r.headers.get("Last-Modified") or None
            ranges = r.status_code == 206
            first_at: float | None = None
            first_len = 0
            got = 0
            deadline = started + timeout
            for chunk in r.raw.stream(64 * 1024, decode_content=False):
                if first_at is None:
                    first_at = time.monotonic()
                    first_len = len(chunk)
                got += len(chunk)
                if got >= sample_bytes or time.monotonic() > deadline:
                    break
            ended = time.monotonic()
    except requests.RequestException as exc:
        return Sample(url, error=_reason(exc))
    finally:
        if own:
            sess.close()
    if first_at is None:
        latency = ended - started
        return Sample(
            url,
            latency=latency,
            throughput=None,
            size=size,
            validator=etag or last_modified,
            ranges=ranges,
            etag=etag,
            last_modified=last_modified,
        )
    latency = first_at - started
    rest, span = got - first_len, ended - first_at
    # The first read carries the latency; the speed is that of the rest, when there is any.
    throughput = rest / span if rest > 0 and span > 0 else got / max(ended - started, 1e-6)
    return Sample(
        url,
        latency=latency,
        throughput=throughput,
        size=size,
        validator=etag or last_modified,
        ranges=ranges,
        etag=etag,
        last_modified=last_modified,
    )


def probe_all(urls: Sequence[str], *, workers: int = 8, **kwargs: object) -> list[Sample]:
    """``probe`` every URL at the same time; results in the order of ``urls``."""
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls)))) as pool:
        return list(pool.map(lambda u: probe(u, **kwargs), urls))  # type: ignore[arg-type]


def _reason(exc: BaseException) -> str:
    """A one-line reason for a failed request, without urllib3's object reprs."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "read timed out"
    kind, words = network_cause(exc)
    return words if kind != "other" else f"{type(exc).__name__}: {exc}"

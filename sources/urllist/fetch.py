"""Many concurrent small transfers per process, driven by one pycurl ``CurlMulti``.

One thread, one multi handle, a pool of reusable easy handles: connections are kept alive
and reused per host, DNS answers are cached (a share handle, so every easy handle sees
them), and no thread is spent per item. Per request: a total deadline
(``CURLOPT_TIMEOUT_MS``), a byte cap (announced sizes by ``MAXFILESIZE``, chunked bodies
in the write callback), at most ``max_redirects`` redirects and only to http(s), and a
User-Agent naming acquired. A per-host cap is enforced here rather than by libcurl,
whose queued transfers would spend their deadline waiting.

Temporary failures (timeouts, resets, 5xx, 429) are tried again after an exponential
backoff with jitter, or after ``Retry-After`` when the server says so; permanent ones are
returned at once. ``Fetcher.fetch`` is a generator: it pulls items lazily, so memory stays
bounded by the transfers in flight, and the caller processes each result (decode, hash,
write) between two turns of the multi loop.
"""

from __future__ import annotations

import email.utils
import heapq
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pycurl

from acquired.sources.curlmulti import perform_and_collect
from acquired.sources.urllist import outcome
from acquired.sources.urllist.settings import FetchSettings

# libcurl error numbers (stable ABI values) grouped by what they mean for a sample.
_E_UNSUPPORTED_PROTOCOL = 1
_E_COULDNT_RESOLVE_PROXY = 5
_E_COULDNT_RESOLVE_HOST = 6
_E_COULDNT_CONNECT = 7
_E_PARTIAL_FILE = 18
_E_WRITE_ERROR = 23
_E_OPERATION_TIMEDOUT = 28
_E_TOO_MANY_REDIRECTS = 47
_E_GOT_NOTHING = 52
_E_SEND_ERROR = 55
_E_RECV_ERROR = 56
_E_FILESIZE_EXCEEDED = 63
_E_HTTP2 = 16
_E_HTTP2_STREAM = 92
# A connection that broke mid-answer: worth another try.
_RESETS = frozenset(
    {_E_PARTIAL_FILE, _E_GOT_NOTHING, _E_SEND_ERROR, _E_RECV_ERROR, _E_HTTP2, _E_HTTP2_STREAM}
)


@dataclass(frozen=True)
class FetchItem:
    """One URL to fetch; ``tag`` comes back with its result (the input row index)."""

    tag: int
    url: str


@dataclass
class FetchResult:
    """What became of one item after its last try."""

    tag: int
    url: str
    body: bytes | None
    error_class: str | None = None
    message: str | None = None
    http_status: int | None = None
    attempts: int = 1
    content_type: str | None = None

    @property
    def ok(self) -> bool:
        """The body arrived whole with a 2xx answer."""
        return self.error_class is None


@dataclass(frozen=True)
class Verdict:
    """The classification of one finished try (a pure function of what curl reported)."""

    error_class: str | None
    message: str | None
    retryable: bool = False
    delay: float | None = None  # from Retry-After


def classify(
    errno: int,
    errmsg: str,
    status: int,
    *,
    too_large: bool = False,
    retry_after: float | None = None,
    max_bytes: int = 0,
) -> Verdict:
    """Turn one try's curl error number and HTTP status into a failure class (or none)."""
    if too_large or errno == _E_FILESIZE_EXCEEDED:
        return Verdict(outcome.TOO_LARGE, f"body larger than max_bytes ({max_bytes})")
    if errno == _E_OPERATION_TIMEDOUT:
        return Verdict(outcome.TIMEOUT, errmsg or "timed out", retryable=True)
    if errno in (_E_COULDNT_RESOLVE_HOST, _E_COULDNT_RESOLVE_PROXY):
        return Verdict(outcome.DNS, errmsg or "name not resolved")
    if errno in _RESETS:
        return Verdict(outcome.CONNECT, errmsg or "connection reset", retryable=True)
    if errno in (_E_UNSUPPORTED_PROTOCOL, _E_TOO_MANY_REDIRECTS):
        # A redirect to file://, ftp:// ... or a loop: the answer itself is unusable.
        return Verdict(outcome.HTTP_4XX, f"redirect refused: {errmsg}")
    if errno == _E_WRITE_ERROR:
        return Verdict(outcome.CONNECT, errmsg or "write aborted")
    if errno != 0:
        return Verdict(outcome.CONNECT, errmsg or f"curl error {errno}")
    if 200 <= status < 300:
        return Verdict(None, None)
    if status == 429:
        return Verdict(outcome.HTTP_429, "429 Too Many Requests", retryable=True, delay=retry_after)
    if status >= 500:
        return Verdict(outcome.HTTP_5XX, f"HTTP {status}", retryable=True, delay=retry_after)
    return Verdict(outcome.HTTP_4XX, f"HTTP {status}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before try ``attempt + 1``: exponential in ``attempt``, jitter 50-150 %."""
    return min(cap, base * (2 ** max(0, attempt - 1))) * rng.uniform(0.5, 1.5)


@dataclass
class _Transfer:
    item: FetchItem
    attempts: int
    host: str
    max_bytes: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    too_large: bool = False
    retry_after: str | None = None
    content_type: str | None = None

    def write(self, data: bytes) -> int | None:
        self.size += len(data)
        if self.size > self.max_bytes:
            self.too_large = True
            return 0  # abort the transfer (CURLE_WRITE_ERROR)
        self.chunks.append(data)
        return None

    def header(self, line: bytes) -> None:
        if line[:5] == b"HTTP/":
            # A new response (after a redirect): forget the previous one's headers.
            self.retry_after = None
            self.content_type = None
            return
        name, sep, value = line.partition(b":")
        if not sep:
            return
        name = name.strip().lower()
        if name == b"retry-after":
            self.retry_after = value.strip().decode("latin-1")
        elif name == b"content-type":
            self.content_type = value.strip().decode("latin-1")


def host_of(url: str) -> str:
    """The ``host[:port]`` part of an http(s) URL, lower-cased (the per-host cap's key)."""
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1].lower()


class Fetcher:
    """Drives many transfers at once in the calling thread; one per worker process."""

    def __init__(self, settings: FetchSettings, *, seed: int | None = None) -> None:
        self.settings = settings
        self._rng = random.Random(seed)
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAXCONNECTS, max(16, settings.concurrency * 2))
        self._share = pycurl.CurlShare()
        self._share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_DNS)
        self._share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_SSL_SESSION)
        self._idle: list[pycurl.Curl] = []
        self._handles: list[pycurl.Curl] = []
        self.requests = 0
        """Tries started (for figures: requests per CPU-second)."""

    def close(self) -> None:
        """Free every handle (the multi's connections close)."""
        for c in self._handles:
            c.close()
        self._handles.clear()
        self._idle.clear()
        self._multi.close()
        self._share.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _easy(self) -> pycurl.Curl:
        if self._idle:
            return self._idle.pop()
        s = self.settings
        c = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.NOPROGRESS, 1)
        c.setopt(pycurl.SHARE, self._share)
        c.setopt(pycurl.DNS_CACHE_TIMEOUT, s.dns_cache_seconds)
        c.setopt(pycurl.FOLLOWLOCATION, 1)
        c.setopt(pycurl.MAXREDIRS, s.max_redirects)
        if hasattr(pycurl, "PROTOCOLS_STR"):
            c.setopt(pycurl.PROTOCOLS_STR, "http,https")
            c.setopt(pycurl.REDIR_PROTOCOLS_STR, "http,https")
        else:  # pycurl 7.45 exposes only the (deprecated in libcurl) bitmask options
            c.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            c.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.USERAGENT, s.user_agent)
        c.setopt(pycurl.TIMEOUT_MS, max(1, int(s.timeout * 1000)))
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(min(s.timeout, 10.0) * 1000)))
        c.setopt(pycurl.MAXFILESIZE_LARGE, s.max_bytes)
        self._handles.append(c)
        return c

    def fetch(self, items: Iterable[FetchItem]) -> Iterator[FetchResult]:
        """Fetch every item; yield each result once its last try is over (any order)."""
        s = self.settings
        source = iter(items)
        exhausted = False
        ready: deque[tuple[FetchItem, int]] = deque()  # (item, tries so far)
        parked: dict[str, deque[tuple[FetchItem, int]]] = {}
        parked_count = 0
        host_active: dict[str, int] = {}
        delayed: list[tuple[float, int, FetchItem, int]] = []
        seq = 0
        active: dict[pycurl.Curl, _Transfer] = {}
        park_limit = max(64, s.concurrency * 4)

        def start(item: FetchItem, tries: int, host: str) -> None:
            c = self._easy()
            t = _Transfer(item, tries + 1, host, s.max_bytes)
            c.setopt(pycurl.URL, item.url)
            c.setopt(pycurl.WRITEFUNCTION, t.write)
            c.setopt(pycurl.HEADERFUNCTION, t.header)
            host_active[host] = host_active.get(host, 0) + 1
            active[c] = t
            self._multi.add_handle(c)
            self.requests += 1

        while True:
            now = time.monotonic()
            while delayed and delayed[0][0] <= now:
                _, _, item, tries = heapq.heappop(delayed)
                ready.append((item, tries))
            # Admit work: retries and freed hosts first, then new input.
            while len(active) < s.concurrency:
                if ready:
                    item, tries = ready.popleft()
                elif not exhausted and parked_count < park_limit:
                    nxt = next(source, None)
                    if nxt is None:
                        exhausted = True
                        continue
                    item, tries = nxt, 0
                else:
                    break
                host = host_of(item.url)
                if host_active.get(host, 0) >= s.per_host_connections:
                    parked.setdefault(host, deque()).append((item, tries))
                    parked_count += 1
                    continue
                start(item, tries, host)
            if not active:
                if delayed:
                    time.sleep(max(0.0, min(delayed[0][0] - time.monotonic(), 0.5)))
                    continue
                if exhausted and not ready and not parked_count:
                    return
            finished = perform_and_collect(self._multi)
            for c, errno, errmsg in finished:
                t = active.pop(c)
                status = int(c.getinfo(pycurl.RESPONSE_CODE) or 0)
                self._multi.remove_handle(c)
                self._idle.append(c)
                left = host_active[t.host] - 1
                if left:
                    host_active[t.host] = left
                else:
                    del host_active[t.host]
                waiting = parked.get(t.host)
                if waiting:
                    ready.append(waiting.popleft())
                    parked_count -= 1
                    if not waiting:
                        del parked[t.host]
                result = self._conclude(t, errno, errmsg, status)
                if result is None:
                    seq += 1
                    heapq.heappush(delayed, (self._due(t), seq, t.item, t.attempts))
                else:
                    yield result
            if not finished and active:
                timeout = 0.05
                if delayed:
                    timeout = max(0.0, min(timeout, delayed[0][0] - time.monotonic()))
                self._multi.select(timeout)

    def _due(self, t: _Transfer) -> float:
        s = self.settings
        wait = backoff(t.attempts, s.backoff_base, s.backoff_max, self._rng)
        after = parse_retry_after(t.retry_after)
        if after is not None:
            wait = max(wait, after)
        return time.monotonic() + wait

    def _conclude(self, t: _Transfer, errno: int, errmsg: str, status: int) -> FetchResult | None:
        """The final result of ``t``, or ``None`` when it is to be tried again."""
        s = self.settings
        after = parse_retry_after(t.retry_after)
        verdict = classify(
            errno, errmsg, status, too_large=t.too_large, retry_after=after, max_bytes=s.max_bytes
        )
        patient = verdict.delay is None or verdict.delay <= s.max_retry_after
        if verdict.retryable and t.attempts <= s.retries and patient:
            return None
        body = b"".join(t.chunks) if verdict.error_class is None else None
        return FetchResult(
            tag=t.item.tag,
            url=t.item.url,
            body=body,
            error_class=verdict.error_class,
            message=verdict.message,
            http_status=status or None,
            attempts=t.attempts,
            content_type=t.content_type,
        )

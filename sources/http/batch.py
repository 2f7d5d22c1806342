"""Many small files at once on one thread: ``SmallFiles`` drives a pycurl ``CurlMulti``.

For a file of a few kilobytes the round trip and the per-file bookkeeping, not the
bandwidth, are the cost: a thread, a requests session and a watchdog per file spend more
CPU than the bytes themselves. Here one thread keeps up to ``concurrency`` transfers open
over reused keep-alive connections (the per-host cap is the shared ``HostSlots``), keeps
each body in memory as it arrives (never more than the file's size: the caller sends
only small files), hashes it on the way, and checks size and digests. A failed try goes
to the file's next mirror, a temporary failure (reset, timeout, 5xx) is tried again
after a backoff; one file's failure is that file's alone.

A verified body is written to its ``.part`` and flushed (``fdatasync``) on a few worker
threads, so that the transfers go on and the filesystem commits many files together
(``placing.Folders``: every folder opened once beneath the root, no link followed).
Durability is per flush, not per file: every ``flush_every`` seconds the written files
are renamed into place and each folder is synced once, and only then is the flush
reported (``on_done``) — a file reported done survives a crash. The renames and folder
syncs of a flush run on a thread of their own, one flush after the other, so that the
transfers do not wait for the journal. Small files restart from zero: they carry no
checkpoint.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pycurl

from acquired.common.digests import Hasher
from acquired.sources.curlmulti import perform_and_collect
from acquired.sources.http.errors import (
    BadUrl,
    ConnectionFailed,
    DigestMismatch,
    DownloadCancelled,
    Forbidden,
    HttpError,
    HttpStatusError,
    NotFound,
    ServerBusy,
    ServerError,
    SizeMismatch,
    Stalled,
    Truncated,
    UnsupportedUrl,
)
from acquired.sources.http.hashing import mismatches
from acquired.sources.http.mirrors import all_failed
from acquired.sources.http.model import DownloadResult, HttpOptions
from acquired.sources.http.placing import Folder, Folders
from acquired.sources.http.protocol import check_url
from acquired.sources.http.ranking import host_of
from acquired.sources.http.ratelimit import RateLimiter

log = logging.getLogger("acquired.sources.http")

# libcurl error numbers (a stable ABI) and the words a user reads for them.
_CURL_CAUSES = {
    6: "name not found",
    7: "connection refused",
    18: "connection reset",
    28: "timed out",
    35: "TLS handshake failed",
    52: "connection closed without an answer",
    55: "connection reset",
    56: "connection reset",
    60: "TLS certificate not trusted",
}
_E_WRITE_ERROR = 23
_E_TIMEOUT = 28
_E_FILESIZE_EXCEEDED = 63
_E_REDIRECT_REFUSED = (1, 47)  # a redirect to another protocol, or a loop


@dataclass(frozen=True)
class BatchItem:
    """One small file: its mirrors, where it goes and what it must be."""

    key: int
    """The caller's name for it (comes back with its outcome)."""
    urls: tuple[str, ...]
    dest: Path
    root: Path | None
    size: int | None
    digests: dict[str, str]
    limiters: tuple[RateLimiter, ...] = ()

    @property
    def part(self) -> Path:
        """Where the data goes until it is verified."""
        return self.dest.with_name(self.dest.name + ".part")


@dataclass(frozen=True)
class BatchOutcome:
    """The end of one item: a verified file in place, or the error that ended it."""

    key: int
    result: DownloadResult | None
    error: BaseException | None


@dataclass
class _Item:
    item: BatchItem
    urls: list[str]
    errors: list[HttpError] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    mirror: int = 0
    tries: int = 0  # on the current mirror
    bad_digest: set[str] = field(default_factory=set)  # mirrors that gave wrong data


class _Transfer:
    """One try of one item: the body so far (at most the file's size) and its hash."""

    def __init__(self, it: _Item, url: str, host: str, cancel: threading.Event):
        self.it = it
        self.url = url
        self.host = host
        self.chunks: list[bytes] = []
        self.hasher = Hasher(it.item.digests)
        self.got = 0
        self.failure: BaseException | None = None
        self._cancel = cancel
        self._limit = it.item.size
        self._limiters = [lim for lim in it.item.limiters if lim.rate is not None]

    def write(self, data: bytes) -> int | None:
        """curl's write callback: keep, hash, and stop at the size the file must have."""
        n = len(data)
        if self._limit is not None and self.got + n > self._limit:
            self.failure = SizeMismatch(
                f"{self.url} sent more than the {self._limit} bytes of {self.it.item.dest.name}",
                url=self.url,
                expected=self._limit,
            )
            return 0
        self.chunks.append(data)
        self.hasher.update(data)
        self.got += n
        # A bandwidth limit holds the whole loop back, which is what a limit over all the
        # small files at once asks for.
        for limiter in self._limiters:
            limiter.acquire(n, self._cancel)
        return None


def status_error(status: int, url: str) -> HttpError:
    """The error a final HTTP status other than 200 means for a whole-file GET."""
    details = {"url": url, "status": status}
    if status in (404, 410):
        return NotFound(f"{url}: not found ({status})", **details)
    if status in (401, 403):
        return Forbidden(f"{url}: access refused ({status})", **details)
    if status in (429, 503):
        return ServerBusy(f"{url}: server busy ({status})", **details)
    if status >= 500:
        return ServerError(f"{url}: server error ({status})", **details)
    return HttpStatusError(f"{url}: unexpected answer {status}", **details)


def curl_error(errno: int, message: str, url: str, host: str) -> HttpError:
    """The error a failed curl transfer means (a network failure, by its cause)."""
    if errno in _E_REDIRECT_REFUSED:
        return UnsupportedUrl(f"{url}: redirect refused ({message})", url=url, library=message)
    if errno == _E_TIMEOUT:
        return Stalled(f"{host}: timed out", url=url, library=message)
    cause = _CURL_CAUSES.get(errno, "network error")
    return ConnectionFailed(f"{host}: {cause}", url=url, library=message)


class SmallFiles:
    """Fetches submitted small files on the thread that calls ``run()``.

    ``submit`` and ``cancel`` may be called from any thread; ``on_done`` is called with
    the outcomes of each flush (every file in it durable in place, or failed), one flush
    at a time, in order, on the running thread or the one placing flushes; ``close``
    makes ``run`` cancel what is left and return once every flush is reported.
    """

    def __init__(
        self,
        options: HttpOptions,
        on_done: Callable[[list[BatchOutcome]], None],
        *,
        concurrency: int = 64,
        flush_every: float = 0.1,
        sync_threads: int = 8,
        max_tries: int = 3,
    ) -> None:
        self.options = options
        self._on_done = on_done
        self._concurrency = concurrency
        self._flush_every = flush_every
        self._max_tries = max(1, min(max_tries, options.max_tries))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._inbox: list[BatchItem] = []
        self._cancels: set[int] = set()
        self._closing = False
        self._cancel_all = threading.Event()
        self._rng = random.Random()
        self._sync = ThreadPoolExecutor(max_workers=sync_threads, thread_name_prefix="fsync")
        # One thread, so that flushes are placed and reported in order.
        self._placer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="place")
        self._placing: Future[None] | None = None
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAXCONNECTS, max(16, concurrency * 2))
        self._share = pycurl.CurlShare()
        self._share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_DNS)
        self._share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_SSL_SESSION)
        self._idle: list[pycurl.Curl] = []
        self._handles: list[pycurl.Curl] = []
        # What the running thread owns.
        self._pending: deque[_Item] = deque()
        self._delayed: list[tuple[float, int, _Item]] = []
        self._seq = 0
        self._active: dict[pycurl.Curl, _Transfer] = {}
        self._host_local: dict[str, int] = {}
        self._done: list[tuple[_Transfer, Folder, str, Future[None]]] = []
        self._folders = Folders()
        self._failed: list[BatchOutcome] = []
        self._last_flush = time.monotonic()

    # -- any thread ----------------------------------------------------------------------
    def submit(self, items: Iterable[BatchItem]) -> None:
        """Queue files to fetch."""
        with self._lock:
            self._inbox.extend(items)
        self._wake.set()

    def cancel(self, key: int) -> None:
        """Stop one file: it ends with ``DownloadCancelled`` (its ``.part`` removed)."""
        with self._lock:
            self._cancels.add(key)
        self._wake.set()

    def close(self) -> None:
        """Cancel everything still queued or running; ``run`` returns once reported."""
        with self._lock:
            self._closing = True
        self._cancel_all.set()
        self._wake.set()

    # -- the running thread --------------------------------------------------------------
    def run(self) -> None:
        """The loop: admit, transfer, conclude, flush; until ``close()``."""
        try:
            while True:
                closing = self._take_inbox()
                if closing:
                    self._drop_everything()
                    self._flush(wait=True)
                    return
                self._admit()
                if self._active:
                    self._perform()
                if self._done or self._failed:
                    idle = not self._active and not self._pending
                    if idle or time.monotonic() - self._last_flush >= self._flush_every:
                        self._flush(wait=False)
                if not self._active:
                    self._idle_wait()
        except Exception as exc:
            # A bug here must not leave files in flight for ever: each ends with it (the
            # daemon decides about another try) and the runner is started afresh.
            log.exception("the small-file runner failed")
            self._abandon(exc)
        finally:
            for c in self._handles:
                c.close()
            self._multi.close()
            self._share.close()
            self._sync.shutdown(wait=True)
            self._placer.shutdown(wait=True)
            self._folders.close()

    def _take_inbox(self) -> bool:
        with self._lock:
            items, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, set()
            closing = self._closing
        for item in items:
            self._pending.append(self._prepare(item))
        if cancels:
            self._cancel_keys(cancels)
        return closing

    def _prepare(self, item: BatchItem) -> _Item:
        urls: list[str] = []
        errors: list[HttpError] = []
        for url in item.urls:
            try:
                urls.append(check_url(url))
            except (BadUrl, UnsupportedUrl) as exc:
                errors.append(exc)
        return _Item(item, urls, errors, [host_of(u) for u in urls])

    def _idle_wait(self) -> None:
        timeout = 0.5
        if self._delayed:
            timeout = min(timeout, max(self._delayed[0][0] - time.monotonic(), 0.0))
        if self._pending:
            timeout = min(timeout, 0.02)  # waiting for a host slot held elsewhere
        if self._failed:
            timeout = min(timeout, self._flush_every)
        if self._done:
            timeout = min(timeout, 0.005)  # files still being written: report them soon
        self._wake.wait(timeout)
        self._wake.clear()

    def _admit(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            self._pending.appendleft(heapq.heappop(self._delayed)[2])
        full: set[str] = set()
        misses = 0
        # Bodies waiting for the disk are held in memory: do not take more than a flush's
        # worth ahead of it.
        room = self._concurrency - len(self._active)
        if len(self._done) >= 4 * self._concurrency:
            room = 0
        # Look past a few files whose host is full (another host may have room).
        while self._pending and room > 0 and misses < 16:
            it = self._pending.popleft()
            if it.mirror >= len(it.urls):
                self._fail(it)
                continue
            url, host = it.urls[it.mirror], it.hosts[it.mirror]
            if host in full or not self._take_slot(host):
                full.add(host)
                self._pending.append(it)
                misses += 1
                continue
            self._start(it, url, host)
            room -= 1

    def _take_slot(self, host: str) -> bool:
        slots = self.options.host_slots
        if slots is not None:
            return slots.try_take(host)
        used = self._host_local.get(host, 0)
        if used >= self.options.per_host_connections:
            return False
        self._host_local[host] = used + 1
        return True

    def _release_slot(self, host: str) -> None:
        slots = self.options.host_slots
        if slots is not None:
            slots.release(host)
            return
        left = self._host_local.get(host, 0) - 1
        if left > 0:
            self._host_local[host] = left
        else:
            self._host_local.pop(host, None)

    def _start(self, it: _Item, url: str, host: str) -> None:
        try:
            t = _Transfer(it, url, host, self._cancel_all)
        except Exception as exc:  # an algorithm the hasher does not know: this file's alone
            self._release_slot(host)
            self._failed.append(BatchOutcome(it.item.key, None, exc))
            return
        c = self._easy()
        c.setopt(pycurl.URL, url)
        c.setopt(pycurl.WRITEFUNCTION, t.write)
        it.tries += 1
        self._active[c] = t
        self._multi.add_handle(c)

    def _easy(self) -> pycurl.Curl:
        if self._idle:
            return self._idle.pop()
        o = self.options
        c = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.NOPROGRESS, 1)
        c.setopt(pycurl.SHARE, self._share)
        c.setopt(pycurl.FOLLOWLOCATION, 1)
        c.setopt(pycurl.MAXREDIRS, 10)
        if hasattr(pycurl, "PROTOCOLS_STR"):
            c.setopt(pycurl.PROTOCOLS_STR, "http,https")
            c.setopt(pycurl.REDIR_PROTOCOLS_STR, "http,https")
        else:  # older pycurl exposes only the bitmask options
            c.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            c.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.USERAGENT, o.user_agent)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(o.connect_timeout * 1000)))
        # A connection slower than min_speed over the window is dropped (a stall); a
        # silent one after read_timeout.
        c.setopt(pycurl.LOW_SPEED_LIMIT, max(1, int(o.min_speed)))
        c.setopt(pycurl.LOW_SPEED_TIME, max(1, int(min(o.min_speed_window, o.read_timeout))))
        c.setopt(pycurl.BUFFERSIZE, 1 << 16)
        self._handles.append(c)
        return c

    def _perform(self) -> None:
        finished = perform_and_collect(self._multi)
        for c, errno, message in finished:
            t = self._active.pop(c)
            status = int(c.getinfo(pycurl.RESPONSE_CODE) or 0)
            self._multi.remove_handle(c)
            self._idle.append(c)
            self._release_slot(t.host)
            self._conclude(t, errno, message, status)
        if not finished and self._active:
            self._multi.select(0.05 if not self._pending else 0.01)

    def _conclude(self, t: _Transfer, errno: int, message: str, status: int) -> None:
        """The end of one try: done (to be flushed), tried again, next mirror, or failed."""
        it, item = t.it, t.it.item
        error: BaseException | None = t.failure
        if error is None and errno == _E_FILESIZE_EXCEEDED:
            error = SizeMismatch(f"{t.url} announced more than the file's size", url=t.url)
        if error is None and errno not in (0, _E_WRITE_ERROR):
            error = curl_error(errno, message, t.url, t.host)
        if error is None and status != 200:
            error = status_error(status, t.url)
        if error is None and item.size is not None and t.got != item.size:
            error = Truncated(
                f"body truncated: {t.url} sent {t.got} of {item.size} bytes",
                url=t.url,
                got=t.got,
                expected=item.size,
            )
        if error is None:
            actual, wrong = mismatches(t.hasher, item.digests)
            if wrong:
                name, expected = wrong[0]
                error = DigestMismatch(
                    f"{name} of {item.dest.name} is {actual[name]}, expected {expected}; "
                    "the data was discarded",
                    algorithm=name,
                    expected=expected,
                    actual=actual[name],
                    url=t.url,
                    urls=[t.url],
                )
        if error is None:
            try:
                folder, name = self._folders.folder(item.root, item.dest)
            except BaseException as exc:  # a link on the way, a file where a folder goes
                self._failed.append(BatchOutcome(item.key, None, exc))
                return
            # Creating, writing and flushing files blocks in the kernel: on a few threads,
            # so that the transfers go on and the filesystem commits files together.
            write = self._sync.submit(Folders.write, folder, name, t.chunks)
            self._done.append((t, folder, name, write))
            return
        t.chunks = []
        if not isinstance(error, HttpError):
            self._failed.append(BatchOutcome(item.key, None, error))
            return
        if isinstance(error, DigestMismatch):
            it.bad_digest.add(t.url)  # wrong data never reaches the disk
        # Wrong data goes to the next mirror at once (the daemon's retry decides about
        # fetching it again); a temporary failure is tried again on the same mirror.
        mismatch = isinstance(error, DigestMismatch)
        if error.retryable and not mismatch and it.tries < self._max_tries:
            o = self.options
            delay = min(o.backoff_max, o.backoff_base * 2 ** (it.tries - 1))
            self._seq += 1
            heapq.heappush(
                self._delayed,
                (time.monotonic() + delay * self._rng.uniform(0.5, 1.5), self._seq, it),
            )
            return
        it.errors.append(error)
        it.mirror += 1
        it.tries = 0
        if it.mirror < len(it.urls):
            self._pending.append(it)
        else:
            self._fail(it)

    def _fail(self, it: _Item) -> None:
        errors = it.errors
        error: HttpError
        if not errors:
            error = BadUrl(f"no URL given for {it.item.dest}", dest=str(it.item.dest))
        elif len(errors) == 1:
            error = errors[0]
        else:
            error = all_failed(errors, it.item.dest.name)
        digest = [e for e in errors if isinstance(e, DigestMismatch)]
        if digest and len(digest) == len(errors):
            error = digest[-1]  # wrong data from every mirror: the daemon's own verdict
            error.details["urls"] = sorted(it.bad_digest)
        self._failed.append(BatchOutcome(it.item.key, None, error))

    def _cancel_keys(self, keys: set[int]) -> None:
        gone = DownloadCancelled("cancelled")
        for c, t in list(self._active.items()):
            if t.it.item.key in keys:
                del self._active[c]
                self._multi.remove_handle(c)
                self._idle.append(c)
                self._release_slot(t.host)
                self._failed.append(BatchOutcome(t.it.item.key, None, gone))
        kept = deque(it for it in self._pending if it.item.key not in keys)
        for it in self._pending:
            if it.item.key in keys:
                self._failed.append(BatchOutcome(it.item.key, None, gone))
        self._pending = kept
        delayed = [d for d in self._delayed if d[2].item.key not in keys]
        for d in self._delayed:
            if d[2].item.key in keys:
                self._failed.append(BatchOutcome(d[2].item.key, None, gone))
        heapq.heapify(delayed)
        self._delayed = delayed
        # A file already fetched and being flushed is past cancelling: it is reported done.

    def _abandon(self, exc: Exception) -> None:
        keys = {t.it.item.key for t in self._active.values()}
        keys |= {it.item.key for it in self._pending}
        keys |= {d[2].item.key for d in self._delayed}
        keys |= {d[0].it.item.key for d in self._done}
        with self._lock:
            keys |= {item.key for item in self._inbox}
            self._inbox.clear()
        ended = {o.key for o in self._failed}
        outcomes = self._failed + [BatchOutcome(k, None, exc) for k in keys - ended]
        self._failed, self._done = [], []
        with contextlib.suppress(Exception):
            self._on_done(outcomes)

    def _drop_everything(self) -> None:
        keys = {t.it.item.key for t in self._active.values()}
        keys |= {it.item.key for it in self._pending}
        keys |= {d[2].item.key for d in self._delayed}
        self._cancel_keys(keys)

    def _flush(self, *, wait: bool) -> None:
        """Make the written files durable in place, then report them and the failures.
        Files still being written wait for the next flush (all of them when ``wait``):
        the transfers do not stop for the disk. While transfers go on, the flush is
        placed on the placing thread; once nothing is on its way it is placed here and
        the folders are closed."""
        done: list[tuple[_Transfer, Folder, str, Future[None]]] = []
        if wait:
            done, self._done = self._done, []
        else:
            waiting: list[tuple[_Transfer, Folder, str, Future[None]]] = []
            for d in self._done:
                (done if d[3].done() else waiting).append(d)
            self._done = waiting
        outcomes, self._failed = self._failed, []
        self._last_flush = time.monotonic()
        for t, _, _, _ in done:
            t.chunks = []
        idle = not self._done and not self._active and not self._pending
        if not (wait or idle):
            self._placing = self._placer.submit(
                _settle, self._folders, done, outcomes, self._on_done
            )
            return
        # The flushes before this one are reported first, and no folder is closed under
        # one still being placed.
        if self._placing is not None:
            self._placing.result()
            self._placing = None
        _settle(self._folders, done, outcomes, self._on_done)
        if idle:
            self._folders.close()  # nothing on its way: no folder is held open


_Written = list[tuple[_Transfer, Folder, str, Future[None]]]


def _settle(
    folders: Folders,
    done: _Written,
    outcomes: list[BatchOutcome],
    on_done: Callable[[list[BatchOutcome]], None],
) -> None:
    """Place one flush's written files and report it with its failures; a bug here ends
    the flush's files with it rather than leaving them unreported."""
    try:
        _place(folders, done, outcomes)
    except Exception as exc:
        log.exception("placing small files failed")
        ended = {o.key for o in outcomes}
        outcomes = outcomes + [
            BatchOutcome(t.it.item.key, None, exc)
            for t, _, _, _ in done
            if t.it.item.key not in ended
        ]
    if outcomes:
        on_done(outcomes)


def _place(folders: Folders, done: _Written, outcomes: list[BatchOutcome]) -> None:
    """Rename the written files of a flush into place (each folder synced once) and add
    their outcomes."""
    written: list[tuple[_Transfer, Folder, str]] = []
    for t, folder, name, write in done:
        try:
            write.result()
        except BaseException as exc:  # DiskFull, a link planted at the .part
            outcomes.append(BatchOutcome(t.it.item.key, None, exc))
            continue
        written.append((t, folder, name))
    failed = folders.place([(folder, name) for _, folder, name in written])
    for t, folder, name in written:
        item = t.it.item
        why = failed.get((folder.fd, name))
        if why is not None:
            outcomes.append(BatchOutcome(item.key, None, why))
            continue
        result = DownloadResult(item.dest, t.got, t.hasher.hexdigests(), None)
        outcomes.append(BatchOutcome(item.key, result, None))

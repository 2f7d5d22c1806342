"""``HttpDownload``: one file from one or more HTTP(S) mirrors into ``dest``.

Two modes share the mirror bookkeeping, retries, checkpoints and verification:

- **segmented** (``connections > 1``, the server answers ranges and states the size):
  a probe request learns the size and validator, then worker threads fetch chunks in
  file order (``plan.Plan``) over connections spread across the mirrors in proportion to
  their measured speed (``ranking.allocate``), stealing work at the tail; a hashing
  thread follows the contiguous written prefix.
- **single stream** (``connections == 1``, no range support, unknown size): one request
  at a time from the current offset, hashing while writing.

Threads: ``run()`` blocks in the caller's transfer thread (which also serves as the first
worker). A watchdog thread emits Progress, takes checkpoints (fdatasync, then the
Checkpoint event), measures mirror speeds and drops connections below the minimum
speed. ``cancel()`` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import mmap
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from acquired.sources.errors import DiskFull, SourceError
from acquired.sources.http import resume
from acquired.sources.http.conn import BodyReader, Transfer, make_session, tracking
from acquired.sources.http.errors import (
    AllMirrorsFailed,
    BadUrl,
    ConnectionFailed,
    ContentRangeMismatch,
    DigestMismatch,
    DownloadCancelled,
    HttpError,
    RangesUnsupported,
    SizeMismatch,
    Stalled,
    Truncated,
    UnsupportedUrl,
    VersionMismatch,
)
from acquired.sources.http.events import (
    Checkpoint,
    MirrorDropped,
    MirrorStat,
    Progress,
    Restarted,
    Retrying,
)
from acquired.sources.http.model import DownloadResult, FileRequest, HttpOptions
from acquired.sources.http.partfile import Hasher, PartFile, normalise_algorithm
from acquired.sources.http.plan import Plan, Segment, chunk_for, contiguous_prefix, gaps
from acquired.sources.http.protocol import (
    Validator,
    backoff_delay,
    check_url,
    parse_content_range,
    parse_retry_after,
    status_error,
)
from acquired.sources.http.ranking import allocate, host_of
from acquired.sources.http.resume import Range

log = logging.getLogger("acquired.sources.http")

EventSink = Callable[[object], None]

# How often the watchdog wakes: bounds the latency of byte-triggered checkpoints.
_TICK = 0.1
# Restarts from zero (changed file, 200 to a range) allowed per mirror in one run: a
# server that always ignores ranges and always drops the connection must not loop forever.
_MAX_RESTARTS_PER_MIRROR = 3
# Window over which a mirror's speed per connection is measured from live transfers.
_RATE_WINDOW = 3.0
_MiB = 1 << 20
# The hasher maps this much of the file at a time.
_HASH_WINDOW = 32 * _MiB


@dataclass
class Mirror:
    """One URL's standing in this download."""

    url: str
    host: str = ""
    tries: int = 0  # consecutive failures
    restarts: int = 0
    best_offset: int = 0  # furthest the file got on this mirror (progress resets tries)
    not_before: float = 0.0  # monotonic time before which it is backing off
    dropped: HttpError | None = None
    last_error: HttpError | None = None
    received: int = 0
    connections: int = 0
    conn_seconds: float = 0.0  # integral of open connections over time
    conn_rate: float | None = None  # bytes/s per connection, measured live
    samples: deque[tuple[float, int, float]] = field(default_factory=lambda: deque(maxlen=64))

    def __post_init__(self) -> None:
        self.host = self.host or host_of(self.url)

    @property
    def usable(self) -> bool:
        return self.dropped is None

    def rate(self, window: float = _RATE_WINDOW) -> float:
        """Bytes/s received from this mirror over the last ``window`` seconds."""
        if len(self.samples) < 2:
            return 0.0
        t1, b1, _ = self.samples[-1]
        for t0, b0, _ in self.samples:
            if t1 - t0 <= window:
                return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        return 0.0


class _Stop(Exception):
    """Internal: leave the current single-stream attempt to start again from zero."""


class _RestartNeeded(Exception):
    """Internal: the reference mirror now serves another version; start from zero."""


@dataclass
class _Probe:
    kind: str  # "segmented", "single", "complete"
    mirror: Mirror | None = None
    transfer: Transfer | None = None
    response: requests.Response | None = None
    size: int | None = None
    asked: tuple[int, int] = (0, -1)


class HttpDownload:
    """Fetch ``request`` according to ``options``, reporting through ``on_event``.

    ``run()`` returns a ``DownloadResult`` once the data is verified and renamed into
    place, or raises a ``SourceError`` subclass (``DownloadCancelled`` after ``cancel()``,
    ``DiskFull`` on ENOSPC, ``DigestMismatch`` when the data was wrong from every
    mirror, ...). In every case but success and DigestMismatch a last ``Checkpoint`` has
    been emitted, so the caller can resume with ``FileRequest(resume=state)``.
    """

    def __init__(
        self,
        request: FileRequest,
        options: HttpOptions | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.request = request
        self.options = options or HttpOptions()
        self._emit_cb = on_event or (lambda event: None)
        self._cancel = threading.Event()
        self._transfers: set[Transfer] = set()
        self._transfers_lock = threading.Lock()
        # Held across (snapshot, fdatasync, emit) by checkpoints and across restarts, so
        # a checkpoint never claims bytes of a version that a restart just threw away.
        self._state_lock = threading.Lock()
        # Mirror standing and the scheduling of segmented workers.
        self._cond = threading.Condition(threading.RLock())
        self._mirrors: list[Mirror] = []
        self._part: PartFile | None = None
        self._hasher: Hasher | None = None
        self._validator = Validator()
        self._validator_url: str | None = None
        self._size: int | None = request.size
        self._mode = "idle"  # "idle" (nothing decided), "single", "segmented"
        self._resume_done: list[Range] = []  # what the resume state vouches for (idle)
        self._offset = 0  # single stream: bytes [0, offset) are written
        self._plan: Plan | None = None  # segmented
        self._contributors: set[str] = set()  # mirrors whose bytes are in the .part
        self._restrict: str | None = None  # after a mismatch: fetch from this mirror only
        self._received = 0  # body bytes received in this run (rate, checkpoint trigger)
        self._last_checkpoint: tuple[float, int] = (0.0, -1)  # (time, received)
        self._session: requests.Session | None = None
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._wake = threading.Event()  # writers: enough new bytes for a checkpoint
        # Segmented round state (guarded by _cond).
        self._workers = 1
        self._fatal: BaseException | None = None
        self._restart_reason: str | None = None
        self._fallback = False
        self._hash_thread: threading.Thread | None = None
        self._hash_stop = threading.Event()
        self._hash_error: BaseException | None = None
        self._hashed = 0

    # -- public ------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop soon (thread-safe): ``run()`` raises DownloadCancelled after a last
        checkpoint, within about a second even when a server is silent."""
        self._cancel.set()
        self._abort_all("cancelled", DownloadCancelled.code)
        with self._cond:
            self._cond.notify_all()

    def run(self) -> DownloadResult:
        """Download, verify and rename into place; see the class docstring."""
        try:
            self._prepare()
        except BaseException:
            if self._part is not None:
                self._part.close()
            raise
        self._session = make_session(self.options.user_agent, max(1, self.options.connections))
        self._start_watchdog()
        ok = False
        try:
            while True:
                if self.options.connections > 1:
                    self._run_segmented()
                else:
                    self._enter_single()
                    self._run_single()
                try:
                    result = self._finish()
                except DigestMismatch as exc:
                    if not self._retry_after_mismatch(exc):
                        assert self._part is not None
                        self._part.remove()
                        ok = True  # nothing left to checkpoint: the state was reset
                        raise
                    continue
                ok = True
                return result
        finally:
            self._stop_hasher()
            self._stop_watchdog()
            if not ok and self._part is not None:
                self._final_checkpoint()
            if self._part is not None:
                self._part.close()
            self._session.close()

    # -- setup -------------------------------------------------------------------------
    def _prepare(self) -> None:
        req = self.request
        if not req.urls:
            raise BadUrl(f"no URL given for {req.dest}", dest=str(req.dest))
        errors: list[HttpError] = []
        for url in req.urls:
            try:
                check_url(url)
            except (BadUrl, UnsupportedUrl) as exc:
                errors.append(exc)
                self._emit(MirrorDropped(url, exc.code, str(exc)))
                continue
            if all(m.url != url for m in self._mirrors):
                self._mirrors.append(Mirror(url))
        if not self._mirrors:
            raise errors[0] if len(errors) == 1 else self._all_failed(errors)
        self._hasher = Hasher(req.digests)  # UnsupportedDigest before any I/O
        part_path = req.part
        part_size = part_path.stat().st_size if part_path.exists() else None
        self._part = PartFile(part_path)
        point = resume.decode(req.resume, part_size=part_size, expected_size=req.size)
        if isinstance(point, str):
            if part_size:
                self._emit(Restarted(f"partial file discarded: {point}"))
            self._part.truncate(0)
            return
        self._validator = point.validator
        self._validator_url = point.url
        if point.size is not None:
            self._size = point.size
        self._resume_done = point.done

    def _enter_single(self) -> None:
        """Switch to one stream from the contiguous prefix of what is on disk."""
        assert self._part is not None
        with self._state_lock:
            written = self._written()
            self._stop_hasher()
            self._plan = None
            self._mode = "single"
            self._offset = contiguous_prefix(written)
            # Bytes past the last checkpoint may not have reached the disk before a power
            # loss, and a stream continues only from the prefix: keep just that.
            self._part.truncate(self._offset)
            self._hasher = Hasher(self.request.digests)
            if self._offset:
                self._hasher.update_from_file(self._part.fd, 0, self._offset)

    def _enter_segmented(self, size: int) -> None:
        assert self._part is not None
        with self._state_lock:
            self._size = size
            self._plan = Plan(
                size,
                self._resume_done,
                margin=self.options.chunk_size,
                min_steal=max(_MiB, self.options.chunk_size),
            )
            self._mode = "segmented"
        if self._part.size() > size:
            self._part.truncate(size)  # a longer leftover must not outlive the rename
        self._part.preallocate(size)
        self._start_hasher(self._plan)

    # -- segmented ---------------------------------------------------------------------
    def _run_segmented(self) -> None:
        """Fetch the whole file (or hand over to the single stream); returns once every
        byte is written and hashed."""
        while True:
            self._check_cancel()
            probe = self._probe()
            if probe.kind == "single":
                self._enter_single()
                if probe.response is not None:
                    self._single_from_probe(probe)
                self._run_single()
                return
            assert probe.size is not None
            try:
                self._enter_segmented(probe.size)
            except BaseException:
                if probe.transfer is not None and probe.mirror is not None:
                    self._release(probe.mirror, probe.transfer, probe.response, None)
                raise
            plan = self._plan
            assert plan is not None
            first: tuple[Mirror, Segment, Transfer, requests.Response] | None = None
            if probe.kind == "segmented":
                assert probe.mirror and probe.transfer and probe.response
                seg = plan.take(chunk_for(None), 0.0)
                assert seg is not None and seg.pos == probe.asked[0]
                # The probe's connection becomes the first segment's: the scheduler owns
                # its count from now on.
                probe.transfer.counted = True
                probe.transfer.asked = probe.asked
                first = (probe.mirror, seg, probe.transfer, probe.response)
            self._round(plan, first)
            with self._cond:
                fatal, restart, fallback = self._fatal, self._restart_reason, self._fallback
                self._fatal, self._restart_reason, self._fallback = None, None, False
            if fatal is not None:
                raise fatal
            self._check_cancel()
            if restart is not None:
                self._stop_hasher()
                self._restart_all(restart)
                continue
            if fallback:
                self._enter_single()
                self._run_single()
                return
            if plan.complete:
                self._wait_hasher(plan)
                return

    def _round(
        self,
        plan: Plan,
        first: tuple[Mirror, Segment, Transfer, requests.Response] | None,
    ) -> None:
        """Run the workers until the plan completes or something stops them."""
        remaining = sum(end - start for start, end in plan.todo()) + sum(
            s.remaining for s in plan.active()
        )
        self._workers = max(1, min(self.options.connections, math.ceil(remaining / plan.min_steal)))
        threads = [
            threading.Thread(
                target=self._worker,
                name=f"http-{self.request.dest.name}-{i}",
                daemon=True,
            )
            for i in range(1, self._workers)
        ]
        for t in threads:
            t.start()
        self._worker(first)
        for t in threads:
            t.join()

    def _worker(
        self, first: tuple[Mirror, Segment, Transfer, requests.Response] | None = None
    ) -> None:
        buf = bytearray(self.options.chunk_size)
        try:
            if first is not None:
                self._segment(buf, *first)
            while True:
                job = self._assign()
                if job is None:
                    return
                mirror, seg = job
                try:
                    transfer, response = self._open_segment(mirror, seg)
                except HttpError as exc:
                    self._segment_done(mirror, seg, exc, progressed=False)
                    continue
                self._segment(buf, mirror, seg, transfer, response)
        except BaseException as exc:
            self._set_fatal(exc)

    def _stopping(self) -> bool:
        return (
            self._cancel.is_set()
            or self._fatal is not None
            or self._restart_reason is not None
            or self._fallback
        )

    def _assign(self) -> tuple[Mirror, Segment] | None:
        """The next (mirror, segment) for a free worker; None when it should exit."""
        plan = self._plan
        assert plan is not None
        with self._cond:
            while True:
                if self._stopping():
                    return None
                if plan.complete:
                    self._cond.notify_all()
                    return None
                mirror, wait = self._pick_mirror(time.monotonic())
                if mirror is not None:
                    if not self._try_slot(mirror):
                        wait = 0.1  # the host is at the daemon-wide cap: wait for a slot
                    else:
                        seg = plan.take(chunk_for(mirror.conn_rate), mirror.conn_rate or 0.0)
                        if seg is not None:
                            mirror.connections += 1
                            return mirror, seg
                        self._free_slot(mirror)
                        wait = 0.1  # all assigned: wait for a release or a chance to steal
                elif wait is None:
                    self._no_mirror_left()
                    return None
                self._cond.wait(min(max(wait, 0.01), 0.25))

    def _pick_mirror(self, now: float) -> tuple[Mirror | None, float | None]:
        """The mirror a free worker should use, or how long to wait for one (None: no
        usable mirror at all)."""
        usable = [
            m
            for m in self._mirrors
            if m.usable and (self._restrict is None or m.url == self._restrict)
        ]
        if not usable:
            return None, None
        ready = [m for m in usable if m.not_before <= now]
        if not ready:
            return None, min(m.not_before for m in usable) - now
        target = allocate(
            {m.url: m.conn_rate for m in ready},
            self._workers,
            per_host=self.options.per_host_connections,
            hosts={m.url: m.host for m in ready},
        )
        per_host: dict[str, int] = {}
        for m in self._mirrors:
            per_host[m.host] = per_host.get(m.host, 0) + m.connections
        best: Mirror | None = None
        best_deficit = 0
        slots = self.options.host_slots
        for m in ready:
            if per_host.get(m.host, 0) >= self.options.per_host_connections:
                continue
            if slots is not None and slots.full(m.host):
                continue
            deficit = target[m.url] - m.connections
            if deficit > best_deficit:
                best, best_deficit = m, deficit
        if best is None:
            return None, 0.1
        return best, 0.0

    def _no_mirror_left(self) -> None:
        """Every mirror is dropped: fall back to one stream if some were dropped only for
        lacking range support, else fail with their errors."""
        no_ranges = [m for m in self._mirrors if isinstance(m.dropped, RangesUnsupported)]
        if no_ranges:
            for m in no_ranges:
                m.dropped = None
                m.tries = 0
            self._fallback = True
            self._abort_all("falling back to one stream", "http.fallback")
            self._cond.notify_all()
            return
        self._set_fatal(self._final_error())

    def _probe(self) -> _Probe:
        """The first request of a segmented download: from the first byte not on disk,
        one chunk. It tells the size, the validator and whether ranges work; its body
        becomes the first segment."""
        while True:
            self._check_cancel()
            if self._size is not None and not gaps(self._size, self._resume_done):
                return _Probe("complete", size=self._size)
            mirror = self._probe_mirror()
            wait = mirror.not_before - time.monotonic()
            if wait > 0 and self._cancel.wait(wait):
                self._check_cancel()
            start = gaps(1 << 62, self._resume_done)[0][0]
            last = start + chunk_for(None) - 1
            headers = {"Range": f"bytes={start}-{last}"}
            if_range = self._validator.if_range() if self._resume_done else None
            if if_range:
                headers["If-Range"] = if_range
            try:
                transfer, response = self._send(mirror, headers)
            except HttpError as exc:
                self._failed(mirror, exc)
                continue
            try:
                kind = self._probe_answer(mirror, response, start, last, if_range)
            except _RestartNeeded as why:
                self._release(mirror, transfer, response, None)
                self._restart_all(str(why))
                continue
            except HttpError as exc:
                self._release(mirror, transfer, response, None)
                self._failed(mirror, exc)
                continue
            if kind == "complete":
                self._release(mirror, transfer, response, None)
                return _Probe("complete", size=self._size)
            if kind == "single-fresh":
                self._release(mirror, transfer, response, None)
                return _Probe("single")
            if kind == "single" and any(
                m.usable and m is not mirror and not isinstance(m.last_error, RangesUnsupported)
                for m in self._mirrors
            ):
                # Another mirror may serve ranges: try it before giving up on segments.
                self._release(mirror, transfer, response, None)
                self._failed(
                    mirror,
                    RangesUnsupported(
                        f"{mirror.url} answered a range request with the whole file (200)",
                        url=mirror.url,
                    ),
                )
                continue
            if kind == "single":
                for m in self._mirrors:  # none serves ranges: all of them can serve a stream
                    if isinstance(m.dropped, RangesUnsupported):
                        m.dropped = None
            return _Probe(kind, mirror, transfer, response, self._size, (start, last))

    def _probe_mirror(self) -> Mirror:
        usable = [m for m in self._mirrors if m.usable]
        if not usable:
            raise self._final_error()
        for m in usable:
            if m.url == self._validator_url:
                return m  # resuming: ask the mirror the validator came from first
        return min(usable, key=lambda m: m.not_before)

    def _probe_answer(
        self,
        mirror: Mirror,
        response: requests.Response,
        start: int,
        last: int,
        if_range: str | None,
    ) -> str:
        status = response.status_code
        got = Validator.from_headers(response.headers)
        if status == 206:
            cr = parse_content_range(response.headers.get("Content-Range"))
            if cr is None or cr.first != start or cr.last > last:
                raise ContentRangeMismatch(
                    f"{mirror.url} sent Content-Range {response.headers.get('Content-Range')!r} "
                    f"for bytes={start}-{last}",
                    url=mirror.url,
                    asked=f"bytes={start}-{last}",
                    got=response.headers.get("Content-Range"),
                )
            if cr.total is None:
                return "single-fresh"  # unknown size: nothing to plan
            conflict = self._validator.conflicts(got) if self._resume_done else None
            if conflict is None and self._resume_done and self._size not in (None, cr.total):
                conflict = f"size changed from {self._size} to {cr.total} bytes"
            if conflict is not None:
                raise _RestartNeeded(f"{mirror.url}: {conflict}")
            self._check_size(mirror, cr.total)
            if not self._resume_done or not self._validator:
                self._validator = got
                self._validator_url = mirror.url
            self._size = cr.total
            return "segmented"
        if status == 200:
            if if_range is not None and self._validator.conflicts(got):
                raise _RestartNeeded(f"{mirror.url}: {self._validator.conflicts(got)}")
            return "single"
        if status == 416:
            total = _unsatisfied_total(response.headers.get("Content-Range"))
            if (
                start > 0
                and total == start
                and self.request.size in (None, total)
                and self._validator.conflicts(got) is None
            ):
                self._size = total
                return "complete"
            raise _RestartNeeded(f"{mirror.url} cannot serve from byte {start} any more (416)")
        raise self._status_error(response, mirror.url)

    def _open_segment(self, mirror: Mirror, seg: Segment) -> tuple[Transfer, requests.Response]:
        assert self._plan is not None
        first = seg.pos
        last = seg.pos + self._plan.limit(seg) - 1
        headers = {"Range": f"bytes={first}-{last}"}
        if_range = self._validator.if_range()
        if if_range:
            headers["If-Range"] = if_range
        transfer, response = self._send(mirror, headers, counted=True)
        transfer.asked = (first, last)
        transfer.if_range = if_range
        return transfer, response

    def _segment(
        self,
        buf: bytearray,
        mirror: Mirror,
        seg: Segment,
        transfer: Transfer,
        response: requests.Response,
    ) -> None:
        """Check one answer and write its body into ``seg``; always releases both."""
        before = seg.pos
        reader: BodyReader | None = None
        error: HttpError | None = None
        try:
            try:
                self._check_segment(mirror, seg, transfer, response)
                reader = BodyReader(response)
                self._read_segment(buf, mirror, seg, transfer, reader)
            except _RestartNeeded as why:
                self._request_restart(str(why))
            except HttpError as exc:
                error = exc
            finally:
                self._release(mirror, transfer, response, reader)
        finally:
            self._segment_done(mirror, seg, error, progressed=seg.pos > before)

    def _segment_done(
        self, mirror: Mirror, seg: Segment, error: HttpError | None, *, progressed: bool
    ) -> None:
        assert self._plan is not None
        self._plan.release(seg)
        with self._cond:
            mirror.connections -= 1
            self._free_slot(mirror)
            if error is not None and not self._stopping():
                if progressed:
                    mirror.tries = 0  # it delivered: a blip, not a broken mirror
                self._failed(mirror, error)
            elif error is None and progressed:
                mirror.tries = 0
            self._cond.notify_all()

    def _check_segment(
        self, mirror: Mirror, seg: Segment, transfer: Transfer, response: requests.Response
    ) -> None:
        assert self._plan is not None
        url = mirror.url
        status = response.status_code
        got = Validator.from_headers(response.headers)
        first, last = transfer.asked
        if status == 206:
            cr = parse_content_range(response.headers.get("Content-Range"))
            if cr is None or cr.first != first or cr.last > last:
                raise ContentRangeMismatch(
                    f"{url} sent Content-Range {response.headers.get('Content-Range')!r} "
                    f"for bytes={first}-{last}",
                    url=url,
                    asked=f"bytes={first}-{last}",
                    got=response.headers.get("Content-Range"),
                )
            conflict = self._validator.conflicts(got)
            if conflict is None and cr.total not in (None, self._plan.size):
                conflict = f"size {cr.total} differs from {self._plan.size}"
            if conflict is not None:
                self._version_conflict(mirror, conflict)
            return
        if status == 200:
            conflict = self._validator.conflicts(got)
            if conflict is not None:
                self._version_conflict(mirror, conflict)
            raise RangesUnsupported(
                f"{url} answered a range request with the whole file (200)", url=url
            )
        if status == 416:
            self._version_conflict(mirror, f"cannot serve bytes {first}-{last} (416)")
        raise self._status_error(response, url)

    def _version_conflict(self, mirror: Mirror, conflict: str) -> None:
        """The reference mirror changed: restart; another mirror differs: drop it."""
        if mirror.url == self._validator_url:
            raise _RestartNeeded(f"{mirror.url}: {conflict}")
        raise VersionMismatch(
            f"{mirror.url} serves another version than {self._validator_url}: {conflict}",
            url=mirror.url,
            reference=self._validator_url,
            reason=conflict,
        )

    def _read_segment(
        self,
        buf: bytearray,
        mirror: Mirror,
        seg: Segment,
        transfer: Transfer,
        reader: BodyReader,
    ) -> None:
        plan = self._plan
        part = self._part
        assert plan is not None and part is not None
        view = memoryview(buf)
        size = len(buf)
        for limiter in self.options.limiters:
            size = limiter.chunk_size(size)
        threshold = self.options.checkpoint_bytes
        reads = 0
        while True:
            left = plan.limit(seg)
            body_left = reader.remaining
            if left <= 0 or body_left == 0:
                return
            want = min(size, left, body_left if body_left is not None else size)
            try:
                n = reader.readinto(view[:want])
            except (requests.RequestException, OSError, http.client.HTTPException) as exc:
                raise self._transport_error(transfer, exc, mirror.url) from exc
            if not n:
                if transfer.aborted:
                    raise self._transport_error(transfer, EOFError(), mirror.url)
                raise Truncated(
                    f"body truncated: {mirror.url} stopped at byte {seg.pos}",
                    url=mirror.url,
                    at=seg.pos,
                )
            part.pwrite(view[:n], seg.pos)
            plan.advance(seg, n)
            if not transfer.received:
                self._contributors.add(mirror.url)
            transfer.received += n
            mirror.received += n
            self._received += n
            if self._received - self._last_checkpoint[1] >= threshold:
                self._wake.set()
            reads += 1
            if reads % 16 == 0:
                seg.rate = mirror.conn_rate or 0.0
            for limiter in self.options.limiters:
                transfer.throttled += limiter.acquire(n, self._cancel)
            if self._cancel.is_set():
                raise DownloadCancelled(f"download of {mirror.url} cancelled", url=mirror.url)

    def _request_restart(self, reason: str) -> None:
        with self._cond:
            if self._restart_reason is None:
                self._restart_reason = reason
            self._abort_all("restarting", "http.restart")
            self._cond.notify_all()

    def _set_fatal(self, exc: BaseException) -> None:
        with self._cond:
            if self._fatal is None:
                self._fatal = exc
            self._abort_all("stopping", "http.stopping")
            self._cond.notify_all()

    def _restart_all(self, reason: str) -> None:
        """Throw every byte away (segmented or undecided mode) and start from zero."""
        assert self._part is not None
        restarts = max(m.restarts for m in self._mirrors) + 1
        for m in self._mirrors:
            m.restarts = restarts
        if restarts > _MAX_RESTARTS_PER_MIRROR:
            raise VersionMismatch(
                f"the file changed under the download {restarts} times: {reason}",
                reason=reason,
            )
        self._start_over(reason, forget_plan=True)

    def _start_over(self, reason: str, *, forget_plan: bool) -> None:
        """Throw the data and what was learnt of the file away, and say so: the caller's
        next request starts from byte 0 (``forget_plan``: the segment plan too)."""
        assert self._part is not None
        log.debug("restarting %s from zero: %s", self.request.dest.name, reason)
        with self._state_lock:
            self._part.truncate(0)
            if forget_plan:
                self._plan = None
                self._mode = "idle"
                self._resume_done = []
            self._offset = 0
            self._hasher = Hasher(self.request.digests)
            self._validator = Validator()
            self._validator_url = None
            self._size = self.request.size
            self._contributors.clear()
            state = self._state()
            self._last_checkpoint = (time.monotonic(), self._received)
        self._emit(Restarted(reason))
        self._emit(Checkpoint(state))

    # -- hashing the written prefix ----------------------------------------------------
    def _start_hasher(self, plan: Plan) -> None:
        self._stop_hasher()
        self._hash_stop = threading.Event()
        self._hash_error = None
        self._hashed = 0
        self._hasher = Hasher(self.request.digests)
        self._hash_thread = threading.Thread(
            target=self._hash_loop,
            args=(plan, self._hasher, self._hash_stop),
            name=f"http-hash-{self.request.dest.name}",
            daemon=True,
        )
        self._hash_thread.start()

    def _hash_loop(self, plan: Plan, hasher: Hasher, stop: threading.Event) -> None:
        """Hash the contiguous written prefix as it grows: its pages are still in the
        page cache, and verification costs little once the last byte is in. The file is
        read through a sliding read-only mapping: no copy, and no more than one window
        of it counts against the process's resident memory."""
        part = self._part
        assert part is not None
        hashed = 0
        window = _HASH_WINDOW - _HASH_WINDOW % mmap.ALLOCATIONGRANULARITY
        mapped: mmap.mmap | None = None
        view: memoryview | None = None
        base = end = 0

        def unmap() -> None:
            nonlocal mapped, view
            if view is not None:
                view.release()
                view = None
            if mapped is not None:
                mapped.close()
                mapped = None

        try:
            while not stop.is_set():
                target = plan.prefix()
                if target <= hashed:
                    if hashed >= plan.size:
                        return
                    stop.wait(0.01)
                    continue
                while hashed < target and not stop.is_set():
                    if view is None or hashed >= end:
                        unmap()
                        base = hashed - hashed % mmap.ALLOCATIONGRANULARITY
                        end = min(plan.size, base + window)
                        mapped = mmap.mmap(part.fd, end - base, prot=mmap.PROT_READ, offset=base)
                        view = memoryview(mapped)
                    stop_at = min(target, end)
                    hasher.update(view[hashed - base : stop_at - base])
                    hashed = stop_at
                    self._hashed = hashed
        except BaseException as exc:
            self._hash_error = exc
        finally:
            unmap()

    def _wait_hasher(self, plan: Plan) -> None:
        thread = self._hash_thread
        if thread is not None:
            thread.join()
        if self._hash_error is not None:
            raise self._hash_error
        if self._hashed != plan.size:
            raise AssertionError(f"hashed {self._hashed} of {plan.size} bytes")

    def _stop_hasher(self) -> None:
        thread = self._hash_thread
        if thread is not None:
            self._hash_stop.set()
            thread.join()
            self._hash_thread = None

    # -- single stream -----------------------------------------------------------------
    def _run_single(self) -> None:
        while True:
            self._check_cancel()
            if self._size is not None and self._offset >= self._size and self._offset > 0:
                return
            mirror = self._next_mirror()
            wait = mirror.not_before - time.monotonic()
            if wait > 0 and self._cancel.wait(wait):
                self._check_cancel()
            try:
                if self._single_attempt(mirror):
                    return
            except _Stop:
                continue
            except HttpError as exc:
                self._failed(mirror, exc)
            else:
                # The whole body arrived but the size is still short (a close-delimited
                # body cut early): count it as a failed try.
                self._failed(
                    mirror, Truncated(f"the body from {mirror.url} ended early", url=mirror.url)
                )

    def _next_mirror(self) -> Mirror:
        for mirror in self._mirrors:
            if mirror.usable:
                return mirror
        raise self._final_error()

    def _single_attempt(self, mirror: Mirror) -> bool:
        """One request; True when the file is complete."""
        offset = self._offset
        headers: dict[str, str] = {}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if_range = self._validator.if_range()
            if if_range:
                headers["If-Range"] = if_range
        transfer, response = self._send(mirror, headers)
        return self._single_with(mirror, transfer, response, offset)

    def _single_from_probe(self, probe: _Probe) -> None:
        """Continue with the probe's answer (a 200: the whole file) as the first stream."""
        assert probe.mirror and probe.transfer and probe.response
        try:
            done = self._single_with(probe.mirror, probe.transfer, probe.response, self._offset)
        except _Stop:
            return
        except HttpError as exc:
            self._failed(probe.mirror, exc)
            return
        if not done:
            self._failed(
                probe.mirror,
                Truncated(f"the body from {probe.mirror.url} ended early", url=probe.mirror.url),
            )

    def _single_with(
        self, mirror: Mirror, transfer: Transfer, response: requests.Response, offset: int
    ) -> bool:
        try:
            return self._single_response(mirror, transfer, response, offset)
        finally:
            self._release(mirror, transfer, response, None)
            if self._offset > mirror.best_offset:
                mirror.best_offset = self._offset
                mirror.tries = 0

    def _single_response(
        self, mirror: Mirror, transfer: Transfer, response: requests.Response, offset: int
    ) -> bool:
        url = mirror.url
        status = response.status_code
        got = Validator.from_headers(response.headers)
        if status == 416:
            total = _unsatisfied_total(response.headers.get("Content-Range"))
            if (
                offset > 0
                and total == offset
                and self.request.size in (None, total)
                and self._validator.conflicts(got) is None
            ):
                # Everything is here already (an earlier answer overstated its length).
                self._size = total
                return True
            self._restart(mirror, f"{url} cannot serve from byte {offset} any more (416)")
            raise _Stop
        if status == 200:
            if offset > 0:
                reason = self._validator.conflicts(got) or (
                    f"{url} answered a range request with the whole file (200)"
                )
                self._restart(mirror, reason)
            # Writing starts from zero: this answer's validator is the one to keep.
            self._validator = Validator()
            self._adopt(mirror, got, _body_length(response))
            expected = _body_length(response)
        elif status == 206:
            cr = parse_content_range(response.headers.get("Content-Range"))
            if cr is None or cr.first != offset:
                raise ContentRangeMismatch(
                    f"{url} sent Content-Range {response.headers.get('Content-Range')!r} "
                    f"for a request from byte {offset}",
                    url=url,
                    asked=f"bytes={offset}-",
                    got=response.headers.get("Content-Range"),
                )
            conflict = self._validator.conflicts(got)
            if conflict is None and self._size is not None and cr.total not in (None, self._size):
                conflict = f"size changed from {self._size} to {cr.total} bytes"
            if conflict is not None:
                self._restart(mirror, f"{url}: {conflict}")
                raise _Stop
            self._adopt(mirror, got, cr.total)
            expected = cr.last - cr.first + 1
        else:
            raise self._status_error(response, url)
        self._read_body(mirror, transfer, response, expected)
        return self._size is None or self._offset >= self._size

    def _adopt(self, mirror: Mirror, got: Validator, total: int | None) -> None:
        """Take the validator first seen and the size this answer announces."""
        if not self._validator:
            self._validator = got
            self._validator_url = mirror.url
        if total is not None:
            self._check_size(mirror, total)
            self._size = total

    def _check_size(self, mirror: Mirror, total: int) -> None:
        if self.request.size is not None and total != self.request.size:
            raise SizeMismatch(
                f"{mirror.url} has {total} bytes, the manifest says {self.request.size}",
                url=mirror.url,
                expected=self.request.size,
                actual=total,
            )

    def _read_body(
        self,
        mirror: Mirror,
        transfer: Transfer,
        response: requests.Response,
        expected: int | None,
    ) -> None:
        assert self._part is not None and self._hasher is not None
        reader = BodyReader(response)
        chunk = self.options.chunk_size
        for limiter in self.options.limiters:
            chunk = limiter.chunk_size(chunk)
        buf = bytearray(chunk)
        view = memoryview(buf)
        got = 0
        threshold = self.options.checkpoint_bytes
        while True:
            try:
                n = reader.readinto(view)
            except (requests.RequestException, OSError, http.client.HTTPException) as exc:
                raise self._transport_error(transfer, exc, mirror.url) from exc
            if not n:
                if transfer.aborted:  # a shutdown socket reads as EOF
                    raise self._transport_error(transfer, EOFError(), mirror.url)
                break
            data = view[:n]
            if not got:
                self._contributors.add(mirror.url)
            self._part.pwrite(data, self._offset)
            self._hasher.update(data)
            self._offset += n
            got += n
            transfer.received += n
            mirror.received += n
            self._received += n
            if self._received - self._last_checkpoint[1] >= threshold:
                self._wake.set()
            for limiter in self.options.limiters:
                transfer.throttled += limiter.acquire(n, self._cancel)
            if self._cancel.is_set():
                raise DownloadCancelled(f"download of {mirror.url} cancelled", url=mirror.url)
        if expected is not None and got < expected:
            raise Truncated(
                f"body truncated: {mirror.url} sent {got} of {expected} bytes",
                url=mirror.url,
                got=got,
                expected=expected,
            )

    def _restart(self, mirror: Mirror, reason: str) -> None:
        """Single stream: throw the data away and start from zero (never splice two
        versions)."""
        assert self._part is not None
        mirror.restarts += 1
        if mirror.restarts > _MAX_RESTARTS_PER_MIRROR:
            raise VersionMismatch(
                f"{mirror.url} changed under the download {mirror.restarts} times: {reason}",
                url=mirror.url,
                reason=reason,
            )
        self._start_over(reason, forget_plan=False)

    # -- requests ----------------------------------------------------------------------
    def _send(
        self, mirror: Mirror, headers: dict[str, str], *, counted: bool = False
    ) -> tuple[Transfer, requests.Response]:
        """Send a GET, registered for abort. ``counted``: the caller already counted the
        connection on the mirror."""
        assert self._session is not None
        transfer = Transfer(mirror.url)
        transfer.counted = counted
        with self._transfers_lock:
            self._transfers.add(transfer)
        if not counted:
            slots = self.options.host_slots
            if slots is not None and not slots.take(mirror.host, self._cancel):
                with self._transfers_lock:
                    self._transfers.discard(transfer)
                raise DownloadCancelled("cancelled while waiting for a connection slot")
            with self._cond:
                mirror.connections += 1
        if self._cancel.is_set():
            transfer.abort("cancelled", DownloadCancelled.code)
        try:
            with tracking(transfer):
                response = self._session.get(
                    mirror.url,
                    headers=headers,
                    stream=True,
                    timeout=(self.options.connect_timeout, self.options.read_timeout),
                )
        except (requests.RequestException, OSError, http.client.HTTPException) as exc:
            with self._transfers_lock:
                self._transfers.discard(transfer)
            if not counted:
                with self._cond:
                    mirror.connections -= 1
                    self._free_slot(mirror)
            raise self._transport_error(transfer, exc, mirror.url) from exc
        return transfer, response

    def _release(
        self,
        mirror: Mirror,
        transfer: Transfer,
        response: requests.Response | None,
        reader: BodyReader | None,
    ) -> None:
        """Close (or pool) the connection and forget the transfer."""
        if response is not None:
            with contextlib.suppress(Exception):
                if reader is not None and not transfer.aborted:
                    reader.release(response)
                else:
                    response.close()
        with self._transfers_lock:
            self._transfers.discard(transfer)
        if not transfer.counted:
            with self._cond:
                mirror.connections -= 1
                self._free_slot(mirror)

    def _try_slot(self, mirror: Mirror) -> bool:
        slots = self.options.host_slots
        return slots is None or slots.try_take(mirror.host)

    def _free_slot(self, mirror: Mirror) -> None:
        if self.options.host_slots is not None:
            self.options.host_slots.release(mirror.host)

    def _abort_all(self, reason: str, code: str) -> None:
        with self._transfers_lock:
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.abort(reason, code)

    def _status_error(self, response: requests.Response, url: str) -> HttpError:
        exc = status_error(response.status_code, url, response.reason or "")
        retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        if retry_after is not None:
            exc.details["retry_after"] = retry_after
        return exc

    # -- failures ----------------------------------------------------------------------
    def _transport_error(self, transfer: Transfer, exc: BaseException, url: str) -> SourceError:
        if self._cancel.is_set() or transfer.abort_code == DownloadCancelled.code:
            return DownloadCancelled(f"download of {url} cancelled", url=url)
        if transfer.abort_code == Stalled.code:
            return Stalled(f"{url}: {transfer.abort_reason}", url=url)
        if transfer.aborted:
            return ConnectionFailed(f"{url}: {transfer.abort_reason}", url=url, kind="aborted")
        if isinstance(exc, requests.Timeout | TimeoutError):
            return ConnectionFailed(f"{url} timed out: {exc}", url=url, kind="timeout")
        if isinstance(
            exc,
            http.client.IncompleteRead
            | requests.exceptions.ChunkedEncodingError
            | http.client.RemoteDisconnected,
        ):
            return Truncated(f"{url}: connection closed mid-transfer ({exc})", url=url)
        return ConnectionFailed(f"{url}: {exc}", url=url, kind=type(exc).__name__)

    def _failed(self, mirror: Mirror, exc: SourceError) -> None:
        """Count a failure against ``mirror``: back off, or drop it. Raises when the
        download as a whole must stop (cancel, disk full)."""
        if isinstance(exc, DownloadCancelled) or self._cancel.is_set():
            raise DownloadCancelled(
                f"download of {self.request.dest.name} cancelled", dest=str(self.request.dest)
            ) from None
        if isinstance(exc, DiskFull):
            raise exc
        assert isinstance(exc, HttpError)
        with self._cond:
            mirror.last_error = exc
            if not exc.retryable:
                self._drop(mirror, exc)
                return
            mirror.tries += 1
            if mirror.tries >= self.options.max_tries:
                self._drop(mirror, exc)
                return
            delay = backoff_delay(mirror.tries, self.options.backoff_base, self.options.backoff_max)
            retry_after = exc.details.get("retry_after")
            if isinstance(retry_after, float | int):
                if retry_after > self.options.retry_after_max:
                    self._drop(mirror, exc)
                    return
                delay = max(float(retry_after), 0.0)
            mirror.not_before = time.monotonic() + delay
            self._cond.notify_all()
        log.debug("retrying %s in %.1fs (try %d): %s", mirror.url, delay, mirror.tries, exc)
        self._emit(Retrying(mirror.url, mirror.tries, delay, str(exc)))

    def _drop(self, mirror: Mirror, exc: HttpError) -> None:
        if mirror.dropped is not None:
            return
        mirror.dropped = exc
        mirror.last_error = exc
        log.debug("dropping mirror %s: %s", mirror.url, exc)
        self._emit(MirrorDropped(mirror.url, exc.code, str(exc)))

    def _final_error(self) -> HttpError:
        errors = [m.last_error for m in self._mirrors if m.last_error is not None]
        if not errors:
            return AllMirrorsFailed(f"no usable mirror for {self.request.dest.name}")
        return errors[0] if len(errors) == 1 else self._all_failed(errors)

    def _all_failed(self, errors: list[HttpError]) -> HttpError:
        listing = {str(e.details.get("url", i)): f"{e.code}: {e}" for i, e in enumerate(errors)}
        codes = {e.code for e in errors}
        if len(codes) == 1:
            first = errors[0]
            first.details["mirrors"] = listing
            return first
        return AllMirrorsFailed(
            f"all {len(errors)} mirrors of {self.request.dest.name} failed: "
            + "; ".join(f"{k}: {v}" for k, v in listing.items()),
            mirrors=listing,
        )

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise DownloadCancelled(
                f"download of {self.request.dest.name} cancelled", dest=str(self.request.dest)
            )

    # -- finish ------------------------------------------------------------------------
    def _finish(self) -> DownloadResult:
        assert self._part is not None and self._hasher is not None
        size = self._plan.size if self._plan is not None else self._offset
        if self.request.size is not None and size != self.request.size:
            self._discard()
            raise SizeMismatch(
                f"got {size} bytes for {self.request.dest.name}, the manifest says "
                f"{self.request.size}",
                expected=self.request.size,
                actual=size,
            )
        actual = self._hasher.hexdigests()
        for algorithm, expected in sorted(self.request.digests.items()):
            name = normalise_algorithm(algorithm)
            if actual[name] != expected.strip().lower():
                urls = sorted(self._contributors)
                self._discard()
                raise DigestMismatch(
                    f"{name} of {self.request.dest.name} is {actual[name]}, expected "
                    f"{expected.strip().lower()}; the data was discarded",
                    algorithm=name,
                    expected=expected.strip().lower(),
                    actual=actual[name],
                    url=urls[0] if len(urls) == 1 else (self._validator_url or ""),
                    urls=urls,
                )
        self._part.rename_to(self.request.dest)
        self._contributors.clear()
        self._emit(Progress(size, size, 0.0, 0, self._mirror_stats(time.monotonic())))
        return DownloadResult(
            path=self.request.dest,
            size=size,
            digests=actual,
            validator=self._validator.describe(),
        )

    def _discard(self) -> None:
        """Throw the data away (wrong size or digest) and say so in a checkpoint."""
        assert self._part is not None
        self._stop_hasher()
        with self._state_lock:
            self._part.truncate(0)
            self._offset = 0
            self._plan = None
            self._mode = "idle"
            self._resume_done = []
            self._hasher = Hasher(self.request.digests)
            self._validator = Validator()
            self._validator_url = None
            self._size = self.request.size
            state = self._state()
            self._last_checkpoint = (time.monotonic(), self._received)
        self._emit(Checkpoint(state))

    def _retry_after_mismatch(self, exc: DigestMismatch) -> bool:
        """After wrong data: drop the mirror that served it when that is known (one
        contributor), else fetch again from the best single mirror so the next
        mismatch names the culprit. True when a mirror is left to try."""
        urls = exc.details.get("urls")
        bad = {str(u) for u in urls} if isinstance(urls, list) else set()
        self._contributors.clear()
        for mirror in self._mirrors:
            mirror.best_offset = 0
            mirror.tries = 0
            if isinstance(mirror.dropped, VersionMismatch):
                # It disagreed with a reference that turned out wrong: judge it again.
                mirror.dropped = None
        if len(bad) == 1:
            for mirror in self._mirrors:
                if mirror.url in bad and mirror.usable:
                    self._drop(mirror, exc)
            self._restrict = None
        else:
            usable = [m for m in self._mirrors if m.usable]
            if usable:
                best = max(usable, key=lambda m: m.conn_rate or 0.0)
                self._restrict = best.url
                log.warning(
                    "data from several mirrors was wrong; fetching %s again from %s only",
                    self.request.dest.name,
                    best.url,
                )
        return any(m.usable for m in self._mirrors)

    # -- checkpoints and the watchdog --------------------------------------------------
    def _written(self) -> list[Range]:
        if self._plan is not None:
            return self._plan.written()
        if self._mode == "single":
            return [(0, self._offset)] if self._offset else []
        return list(self._resume_done)

    def _done_bytes(self) -> int:
        if self._plan is not None:
            return self._plan.written_bytes()
        if self._mode == "single":
            return self._offset
        return sum(end - start for start, end in self._resume_done)

    def _state(self) -> dict[str, Any]:
        return resume.encode(
            size=self._size,
            validator=self._validator,
            url=self._validator_url,
            done=self._written(),
        )

    def _checkpoint(self) -> None:
        """fdatasync, then tell the caller what is safely on disk."""
        part = self._part
        if part is None or part.fd < 0:
            return
        with self._state_lock:
            received = self._received
            state = self._state()  # snapshot first: only bytes written before the sync
            part.sync()
            self._last_checkpoint = (time.monotonic(), received)
        self._emit(Checkpoint(state))

    def _final_checkpoint(self) -> None:
        try:
            self._checkpoint()
        except DiskFull:
            # The data was written but cannot be flushed: vouch only for the last flush.
            log.warning("final flush of %s failed: disk full", self.request.part)
        except OSError as exc:
            log.warning("final flush of %s failed: %s", self.request.part, exc)

    def _start_watchdog(self) -> None:
        self._watchdog = threading.Thread(
            target=self._watch, name=f"http-watch-{self.request.dest.name}", daemon=True
        )
        self._watchdog.start()

    def _stop_watchdog(self) -> None:
        self._watchdog_stop.set()
        self._wake.set()
        if self._watchdog is not None:
            self._watchdog.join()

    def _watch(self) -> None:
        opts = self.options
        next_progress = 0.0
        rate_samples: deque[tuple[float, int]] = deque(maxlen=64)
        stall: dict[Transfer, deque[tuple[float, int, float]]] = {}
        last_tick = time.monotonic()
        while not self._watchdog_stop.is_set():
            if self._wake.wait(_TICK):
                self._wake.clear()
                # Woken by a writer: still keep checkpoints (each an fdatasync) apart.
                early = self._last_checkpoint[0] + opts.checkpoint_min_interval
                if early > time.monotonic():
                    self._watchdog_stop.wait(early - time.monotonic())
            if self._watchdog_stop.is_set():
                break
            now = time.monotonic()
            try:
                dt, last_tick = now - last_tick, now
                rate_samples.append((now, self._received))
                self._measure_mirrors(now, dt)
                self._check_stalls(now, stall)
                last_time, last_received = self._last_checkpoint
                new = self._received - last_received
                active = max(1, len(self._transfers))
                if (new > 0 and now - last_time >= opts.checkpoint_interval) or (
                    new >= opts.checkpoint_bytes * active
                    and now - last_time >= opts.checkpoint_min_interval
                ):
                    self._checkpoint()
                if now >= next_progress:
                    next_progress = now + opts.progress_interval
                    self._emit(
                        Progress(
                            done=self._done_bytes(),
                            total=self._size,
                            rate=_rate(rate_samples),
                            connections=len(self._transfers),
                            mirrors=self._mirror_stats(now),
                        )
                    )
            except DiskFull:
                pass  # the writers meet the same error and report it
            except Exception:
                log.exception("HTTP watchdog failed for %s", self.request.dest)

    def _measure_mirrors(self, now: float, dt: float) -> None:
        """Each mirror's speed per connection over the last few seconds: bytes received
        over connection-seconds, so a mirror that slows down loses connections."""
        for m in self._mirrors:
            m.conn_seconds += m.connections * dt
            m.samples.append((now, m.received, m.conn_seconds))
            t1, b1, c1 = m.samples[-1]
            for t0, b0, c0 in m.samples:
                if t1 - t0 <= _RATE_WINDOW:
                    if c1 - c0 >= 0.5:  # enough connection time to judge
                        m.conn_rate = (b1 - b0) / (c1 - c0)
                    break

    def _check_stalls(
        self, now: float, history: dict[Transfer, deque[tuple[float, int, float]]]
    ) -> None:
        """Drop a connection below ``min_speed`` over ``min_speed_window`` (time spent
        waiting on rate limiters does not count against it)."""
        opts = self.options
        with self._transfers_lock:
            live = set(self._transfers)
        for gone in set(history) - live:
            del history[gone]
        if opts.min_speed <= 0 or opts.min_speed_window <= 0:
            return
        for transfer in live:
            samples = history.setdefault(transfer, deque())
            samples.append((now, transfer.received, transfer.throttled))
            while len(samples) > 2 and now - samples[1][0] >= opts.min_speed_window:
                samples.popleft()
            t0, b0, th0 = samples[0]
            active = (now - t0) - (transfer.throttled - th0)
            if active >= opts.min_speed_window and not transfer.aborted:
                speed = (transfer.received - b0) / active
                if speed < opts.min_speed:
                    reason = (
                        f"below {opts.min_speed} B/s for {opts.min_speed_window:g}s "
                        f"({speed:.0f} B/s)"
                    )
                    log.warning("dropping stalled connection to %s: %s", transfer.url, reason)
                    transfer.abort(reason, Stalled.code)

    def _mirror_stats(self, now: float) -> tuple[MirrorStat, ...]:
        stats = []
        for m in self._mirrors:
            reason: str | None
            if m.dropped is not None:
                state, reason = "dropped", str(m.dropped)
            elif m.not_before > now:
                state, reason = "backoff", str(m.last_error) if m.last_error else None
            else:
                state, reason = ("active" if m.connections else "idle"), None
            stats.append(
                MirrorStat(
                    url=m.url,
                    rate=m.rate(),
                    connections=m.connections,
                    bytes=m.received,
                    state=state,
                    reason=reason,
                )
            )
        return tuple(stats)

    def _emit(self, event: object) -> None:
        self._emit_cb(event)


def _rate(samples: deque[tuple[float, int]], window: float = 3.0) -> float:
    if len(samples) < 2:
        return 0.0
    t1, b1 = samples[-1]
    t0, b0 = samples[0]
    for t, b in samples:
        if t1 - t <= window:
            t0, b0 = t, b
            break
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def _body_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _unsatisfied_total(value: str | None) -> int | None:
    """The size in a 416's ``Content-Range: bytes */size``."""
    if not value:
        return None
    _, _, total = value.rpartition("/")
    return int(total) if total.strip().isdigit() else None

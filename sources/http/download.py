"""``HttpDownload``: one file from one or more HTTP(S) mirrors into ``dest``.

Threads: ``run()`` blocks in the caller's transfer thread. A watchdog thread emits
Progress, takes checkpoints (fdatasync, then the Checkpoint event) and drops connections
that stay below the minimum speed. ``cancel()`` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
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
from acquired.sources.http.protocol import (
    Validator,
    backoff_delay,
    check_url,
    parse_content_range,
    parse_retry_after,
    status_error,
)

log = logging.getLogger("acquired.sources.http")

EventSink = Callable[[object], None]

# How often the watchdog wakes: bounds the latency of byte-triggered checkpoints.
_TICK = 0.1
# Restarts from zero (changed file, 200 to a range) allowed per mirror in one run: a
# server that always ignores ranges and always drops the connection must not loop forever.
_MAX_RESTARTS_PER_MIRROR = 3


@dataclass
class Mirror:
    """One URL's standing in this download."""

    url: str
    tries: int = 0  # consecutive failures
    restarts: int = 0
    best_offset: int = 0  # furthest the file got on this mirror (progress resets tries)
    not_before: float = 0.0  # monotonic time before which it is backing off
    dropped: HttpError | None = None
    last_error: HttpError | None = None
    received: int = 0
    connections: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def usable(self) -> bool:
        return self.dropped is None


class _Stop(Exception):
    """Internal: leave the current attempt to start again from zero."""


class HttpDownload:
    """Fetch ``request`` according to ``options``, reporting through ``on_event``.

    ``run()`` returns a ``DownloadResult`` once the data is verified and renamed into
    place, or raises a ``SourceError`` subclass (``DownloadCancelled`` after ``cancel()``,
    ``DiskFull`` on ENOSPC, ``DigestMismatch`` when the data was wrong, ...). In every
    case but success and DigestMismatch a last ``Checkpoint`` has been emitted, so the
    caller can resume with ``FileRequest(resume=state)``.
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
        self._mirrors: list[Mirror] = []
        self._part: PartFile | None = None
        self._hasher: Hasher | None = None
        self._validator = Validator()
        self._validator_url: str | None = None
        self._size: int | None = request.size
        self._offset = 0  # single stream: bytes [0, offset) are written
        self._contributors: set[str] = set()  # mirrors whose bytes are in the .part
        self._received = 0  # body bytes received in this run (rate)
        self._last_checkpoint: tuple[float, int] = (0.0, -1)
        self._session: requests.Session | None = None
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._wake = threading.Event()  # writers: enough new bytes for a checkpoint

    # -- public ------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop soon (thread-safe): ``run()`` raises DownloadCancelled after a last
        checkpoint, within about a second even when a server is silent."""
        self._cancel.set()
        with self._transfers_lock:
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.abort("cancelled", DownloadCancelled.code)

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
        self._offset = point.prefix
        # Bytes past the last checkpoint may not have reached the disk before a power
        # loss: only what the state vouches for is kept.
        self._part.truncate(self._offset)
        if self._offset:
            self._hasher.update_from_file(self._part.fd, 0, self._offset)

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
        assert self._session is not None
        url = mirror.url
        offset = self._offset
        headers: dict[str, str] = {}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if_range = self._validator.if_range()
            if if_range:
                headers["If-Range"] = if_range
        transfer = Transfer(url)
        with self._transfers_lock:
            self._transfers.add(transfer)
        if self._cancel.is_set():
            transfer.abort("cancelled", DownloadCancelled.code)
        mirror.connections += 1
        try:
            with tracking(transfer):
                try:
                    response = self._session.get(
                        url,
                        headers=headers,
                        stream=True,
                        timeout=(self.options.connect_timeout, self.options.read_timeout),
                    )
                except (requests.RequestException, OSError, http.client.HTTPException) as exc:
                    raise self._transport_error(transfer, exc, url) from exc
                with contextlib.closing(response):
                    return self._single_response(mirror, transfer, response, offset)
        finally:
            mirror.connections -= 1
            with self._transfers_lock:
                self._transfers.discard(transfer)
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
            exc = status_error(status, url, response.reason or "")
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            if retry_after is not None:
                exc.details["retry_after"] = retry_after
            raise exc
        self._read_body(mirror, transfer, response, expected)
        return self._size is None or self._offset >= self._size

    def _adopt(self, mirror: Mirror, got: Validator, total: int | None) -> None:
        """Take the validator first seen and the size this answer announces."""
        if not self._validator:
            self._validator = got
            self._validator_url = mirror.url
        if total is not None:
            if self.request.size is not None and total != self.request.size:
                raise SizeMismatch(
                    f"{mirror.url} has {total} bytes, the manifest says {self.request.size}",
                    url=mirror.url,
                    expected=self.request.size,
                    actual=total,
                )
            self._size = total

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
            if self._offset - self._last_checkpoint[1] >= threshold:
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

    # -- failures ----------------------------------------------------------------------
    def _transport_error(self, transfer: Transfer, exc: BaseException, url: str) -> SourceError:
        if self._cancel.is_set() or transfer.abort_code == DownloadCancelled.code:
            return DownloadCancelled(f"download of {url} cancelled", url=url)
        if transfer.abort_code == Stalled.code:
            return Stalled(f"{url}: {transfer.abort_reason}", url=url)
        if isinstance(exc, DiskFull):
            return exc
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
        if isinstance(exc, DownloadCancelled) or self._cancel.is_set():
            raise DownloadCancelled(
                f"download of {self.request.dest.name} cancelled", dest=str(self.request.dest)
            ) from None
        if isinstance(exc, DiskFull):
            raise exc
        assert isinstance(exc, HttpError)
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
        log.info("retrying %s in %.1fs (try %d): %s", mirror.url, delay, mirror.tries, exc)
        self._emit(Retrying(mirror.url, mirror.tries, delay, str(exc)))

    def _drop(self, mirror: Mirror, exc: HttpError) -> None:
        mirror.dropped = exc
        mirror.last_error = exc
        log.warning("dropping mirror %s: %s", mirror.url, exc)
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

    # -- restart / finish --------------------------------------------------------------
    def _restart(self, mirror: Mirror, reason: str) -> None:
        """Throw the data away and start from zero: never splice two versions."""
        assert self._part is not None
        mirror.restarts += 1
        if mirror.restarts > _MAX_RESTARTS_PER_MIRROR:
            raise VersionMismatch(
                f"{mirror.url} changed under the download {mirror.restarts} times: {reason}",
                url=mirror.url,
                reason=reason,
            )
        log.warning("restarting %s from zero: %s", self.request.dest.name, reason)
        with self._state_lock:
            self._part.truncate(0)
            self._offset = 0
            self._hasher = Hasher(self.request.digests)
            self._validator = Validator()
            self._validator_url = None
            self._size = self.request.size
            self._contributors.clear()
            state = self._state()
            self._last_checkpoint = (time.monotonic(), 0)
        self._emit(Restarted(reason))
        self._emit(Checkpoint(state))

    def _finish(self) -> DownloadResult:
        assert self._part is not None and self._hasher is not None
        size = self._offset
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
                self._discard()
                raise DigestMismatch(
                    f"{name} of {self.request.dest.name} is {actual[name]}, expected "
                    f"{expected.strip().lower()}; the data was discarded",
                    algorithm=name,
                    expected=expected.strip().lower(),
                    actual=actual[name],
                    url=self._validator_url or self._mirrors[0].url,
                    urls=[m.url for m in self._mirrors if m.received],
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
        with self._state_lock:
            self._part.truncate(0)
            self._offset = 0
            self._hasher = Hasher(self.request.digests)
            self._validator = Validator()
            self._validator_url = None
            self._size = self.request.size
            state = self._state()
            self._last_checkpoint = (time.monotonic(), 0)
        self._emit(Checkpoint(state))

    def _retry_after_mismatch(self, exc: DigestMismatch) -> bool:
        """Drop the mirrors that served the bad data; True when another one is left to
        fetch the file from."""
        bad = set(self._contributors)
        self._contributors.clear()
        for mirror in self._mirrors:
            if mirror.url in bad and mirror.usable:
                self._drop(mirror, exc)
            mirror.best_offset = 0
        return any(m.usable for m in self._mirrors)

    # -- checkpoints and the watchdog --------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return resume.encode(
            size=self._size,
            validator=self._validator,
            url=self._validator_url,
            done=[(0, self._offset)],
        )

    def _checkpoint(self) -> None:
        """fdatasync, then tell the caller what is safely on disk."""
        part = self._part
        if part is None or part.fd < 0:
            return
        with self._state_lock:
            done = self._offset
            state = self._state()
            part.sync()
            self._last_checkpoint = (time.monotonic(), done)
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
                rate_samples.append((now, self._received))
                for mirror in self._mirrors:
                    mirror.samples.append((now, mirror.received))
                self._check_stalls(now, stall)
                last_time, last_done = self._last_checkpoint
                done = self._offset
                if done != last_done and (
                    now - last_time >= opts.checkpoint_interval
                    or (
                        done - last_done >= opts.checkpoint_bytes
                        and now - last_time >= opts.checkpoint_min_interval
                    )
                ):
                    self._checkpoint()
                if now >= next_progress:
                    next_progress = now + opts.progress_interval
                    self._emit(
                        Progress(
                            done=self._offset,
                            total=self._size,
                            rate=_rate(rate_samples),
                            connections=len(self._transfers),
                            mirrors=self._mirror_stats(now),
                        )
                    )
            except DiskFull:
                pass  # the writer meets the same error and reports it
            except Exception:
                log.exception("HTTP watchdog failed for %s", self.request.dest)

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
                    rate=_rate(m.samples),
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

"""Segmented transfers: a first request learns the size and validator, then worker
threads fetch chunks in file order (``plan.Plan``) over connections spread across the
mirrors in proportion to their measured speed, stealing work at the tail, while a
hashing thread follows the contiguous written prefix."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import requests

from acquired.sources.http.classify import Expected, Kind, classify
from acquired.sources.http.conn import BodyReader, Transfer
from acquired.sources.http.errors import (
    HttpError,
    RangesUnsupported,
    Truncated,
    VersionMismatch,
)
from acquired.sources.http.fetch import Fetcher
from acquired.sources.http.mirrors import Mirror, MirrorPool
from acquired.sources.http.model import HttpOptions
from acquired.sources.http.plan import Plan, Segment, chunk_for, gaps
from acquired.sources.http.protocol import Validator
from acquired.sources.http.single import MAX_RESTARTS_PER_MIRROR
from acquired.sources.http.state import FileState


@dataclass
class Handover:
    """The segmented transfer gives the file to a single stream, with the first
    request's answer when it has one (a 200: the whole file)."""

    mirror: Mirror | None = None
    transfer: Transfer | None = None
    response: requests.Response | None = None


@dataclass
class _First:
    kind: str  # "segmented", "complete", "single"
    mirror: Mirror | None = None
    transfer: Transfer | None = None
    response: requests.Response | None = None
    asked: tuple[int, int] = (0, -1)


_Job = tuple[Mirror, Segment, Transfer, requests.Response]


class SegmentedTransfer:
    """Fetches the file over several connections, or hands it to a single stream."""

    def __init__(
        self, state: FileState, pool: MirrorPool, fetch: Fetcher, options: HttpOptions
    ) -> None:
        self.state = state
        self.pool = pool
        self.fetch = fetch
        self.options = options
        # Round state, guarded by pool.cond.
        self._workers = 1
        self._fatal: BaseException | None = None
        self._restart: tuple[Mirror, str] | None = None
        self._fallback = False

    def run(self) -> Handover | None:
        """Fetch every byte and hash it (None), or hand over to one stream."""
        state = self.state
        while True:
            self.pool.check_cancel()
            first = self._first_request()
            if first.kind == "single":
                return Handover(first.mirror, first.transfer, first.response)
            assert state.size is not None
            try:
                plan = state.enter_segmented(state.size, self.options)
            except BaseException:
                if first.transfer is not None and first.mirror is not None:
                    self.fetch.release(first.mirror, first.transfer, first.response)
                raise
            head: _Job | None = None
            if first.kind == "segmented":
                assert first.mirror and first.transfer and first.response
                seg = plan.take(chunk_for(None), 0.0)
                assert seg is not None and seg.pos == first.asked[0]
                # Its connection becomes the first segment's: the scheduler counts it now.
                first.transfer.counted = True
                first.transfer.asked = first.asked
                head = (first.mirror, seg, first.transfer, first.response)
            self._round(plan, head)
            with self.pool.cond:
                fatal, restart, fallback = self._fatal, self._restart, self._fallback
                self._fatal, self._restart, self._fallback = None, None, False
            if fatal is not None:
                raise fatal
            self.pool.check_cancel()
            if restart is not None:
                self._start_again(*restart)
                continue
            if fallback:
                return Handover()
            if plan.complete:
                assert state.prefix is not None
                state.prefix.wait()
                return None

    def _start_again(self, mirror: Mirror, reason: str) -> None:
        self.pool.changed(mirror, reason, MAX_RESTARTS_PER_MIRROR, self.state.validator_url)
        self.state.reset(reason)

    # -- the first request ---------------------------------------------------------------
    def _first_request(self) -> _First:
        """From the first byte not on disk, one chunk: it tells the size, the validator
        and whether ranges work; its body becomes the first segment."""
        state, pool = self.state, self.pool
        while True:
            pool.check_cancel()
            if state.size is not None and not gaps(state.size, state.resume_done):
                return _First("complete")
            mirror = pool.first_choice(state.validator_url)
            wait = mirror.not_before - time.monotonic()
            if wait > 0:
                pool.cancel.wait(wait)
                continue
            start = gaps(1 << 62, state.resume_done)[0][0]
            last = start + chunk_for(None) - 1
            resuming = bool(state.resume_done)
            headers = {"Range": f"bytes={start}-{last}"}
            if_range = state.validator.if_range() if resuming else None
            if if_range:
                headers["If-Range"] = if_range
            try:
                transfer, response = self.fetch.send(mirror, headers)
            except HttpError as exc:
                pool.failed(mirror, exc)
                continue
            outcome = classify(
                response,
                Expected(
                    mirror.url,
                    start,
                    last,
                    validator=state.validator if resuming else Validator(),
                    size=state.size if resuming else None,
                    manifest_size=state.request.size,
                ),
            )
            keep = outcome.kind is Kind.RANGE and outcome.total is not None
            if outcome.kind is Kind.WHOLE and not pool.next_ranged_alternative(mirror):
                keep = True
            if not keep:
                self.fetch.release(mirror, transfer, response)
            if outcome.kind is Kind.ERROR:
                assert outcome.error is not None
                pool.failed(mirror, outcome.error)
            elif outcome.kind is Kind.CHANGED:
                self._start_again(mirror, f"{mirror.url}: {outcome.reason}")
            elif outcome.kind is Kind.COMPLETE:
                state.size = outcome.total
                return _First("complete")
            elif outcome.kind is Kind.RANGE and outcome.total is None:
                return _First("single")  # unknown size: nothing to plan
            elif outcome.kind is Kind.RANGE:
                if not resuming or not state.validator:
                    state.validator = outcome.validator
                    state.validator_url = mirror.url
                state.size = outcome.total
                return _First("segmented", mirror, transfer, response, (start, last))
            elif not keep:
                # Another mirror may serve ranges: try it before giving up on segments.
                pool.failed(mirror, _no_ranges(mirror))
            else:
                pool.fall_back_to_stream()  # none serves ranges: all can serve a stream
                return _First("single", mirror, transfer, response)

    # -- the workers ---------------------------------------------------------------------
    def _round(self, plan: Plan, head: _Job | None) -> None:
        """Run the workers until the plan completes or something stops them."""
        remaining = sum(end - start for start, end in plan.todo()) + sum(
            s.remaining for s in plan.active()
        )
        self._workers = max(1, min(self.options.connections, math.ceil(remaining / plan.min_steal)))
        name = self.state.request.dest.name
        threads = [
            threading.Thread(
                target=self._worker, args=(plan,), name=f"http-{name}-{i}", daemon=True
            )
            for i in range(1, self._workers)
        ]
        for t in threads:
            t.start()
        self._worker(plan, head)
        for t in threads:
            t.join()

    def _worker(self, plan: Plan, head: _Job | None = None) -> None:
        try:
            if head is not None:
                self._segment(plan, *head)
            while True:
                job = self._assign(plan)
                if job is None:
                    return
                mirror, seg = job
                try:
                    transfer, response = self._open(plan, mirror, seg)
                except HttpError as exc:
                    self._segment_done(plan, mirror, seg, exc, progressed=False)
                    continue
                self._segment(plan, mirror, seg, transfer, response)
        except BaseException as exc:
            self._set_fatal(exc)

    def _stopping(self) -> bool:
        return (
            self.pool.cancel.is_set()
            or self._fatal is not None
            or self._restart is not None
            or self._fallback
        )

    def _assign(self, plan: Plan) -> tuple[Mirror, Segment] | None:
        """The next (mirror, segment) for a free worker; None when it should exit."""
        pool = self.pool
        with pool.cond:
            while True:
                if self._stopping():
                    return None
                if plan.complete:
                    pool.cond.notify_all()
                    return None
                mirror, wait = pool.pick(self._workers, time.monotonic())
                if mirror is not None:
                    if pool.connect(mirror, wait=False):
                        seg = plan.take(chunk_for(mirror.conn_rate), mirror.conn_rate or 0.0)
                        if seg is not None:
                            return mirror, seg
                        pool.disconnect(mirror)
                    wait = 0.1  # at a host cap, or all assigned: wait for a release
                elif wait is None:
                    self._no_mirror_left()
                    return None
                pool.cond.wait(min(max(wait, 0.01), 0.25))

    def _no_mirror_left(self) -> None:
        """Every mirror is dropped: fall back to one stream if some were dropped only for
        lacking range support, else fail with their errors."""
        if self.pool.fall_back_to_stream():
            self._fallback = True
            self.fetch.abort_all("falling back to one stream", "http.fallback")
            self.pool.cond.notify_all()
            return
        self._set_fatal(self.pool.final_error())

    def _open(self, plan: Plan, mirror: Mirror, seg: Segment) -> tuple[Transfer, requests.Response]:
        first = seg.pos
        last = seg.pos + plan.limit(seg) - 1
        headers = {"Range": f"bytes={first}-{last}"}
        if_range = self.state.validator.if_range()
        if if_range:
            headers["If-Range"] = if_range
        transfer, response = self.fetch.send(mirror, headers, counted=True)
        transfer.asked = (first, last)
        transfer.if_range = if_range
        return transfer, response

    def _segment(
        self,
        plan: Plan,
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
                self._check(plan, mirror, transfer, response)
                reader = BodyReader(response)
                self._read(plan, mirror, seg, transfer, reader)
            except _RestartNeeded as why:
                self._request_restart(mirror, str(why))
            except HttpError as exc:
                error = exc
            finally:
                self.fetch.release(mirror, transfer, response, reader)
        finally:
            self._segment_done(plan, mirror, seg, error, progressed=seg.pos > before)

    def _read(
        self, plan: Plan, mirror: Mirror, seg: Segment, transfer: Transfer, reader: BodyReader
    ) -> None:
        reads = 0

        def advance(data: memoryview) -> None:
            nonlocal reads
            plan.advance(seg, len(data))
            reads += 1
            if reads % 16 == 0:
                seg.rate = mirror.conn_rate or 0.0

        self.fetch.pump(
            mirror, transfer, reader, seg.pos, room=lambda: plan.limit(seg), on_data=advance
        )
        if plan.limit(seg) > 0 and reader.remaining != 0:
            raise Truncated(
                f"body truncated: {mirror.url} stopped at byte {seg.pos}",
                url=mirror.url,
                at=seg.pos,
            )

    def _segment_done(
        self, plan: Plan, mirror: Mirror, seg: Segment, error: HttpError | None, *, progressed: bool
    ) -> None:
        plan.release(seg)
        self.pool.disconnect(mirror)
        with self.pool.cond:
            if progressed:
                self.pool.succeeded(mirror)  # it delivered: a blip, not a broken mirror
            if error is not None and not self._stopping():
                self.pool.failed(mirror, error)
            self.pool.cond.notify_all()

    def _check(
        self, plan: Plan, mirror: Mirror, transfer: Transfer, response: requests.Response
    ) -> None:
        first, last = transfer.asked
        outcome = classify(
            response,
            Expected(
                mirror.url,
                first,
                last,
                validator=self.state.validator,
                size=plan.size,
                manifest_size=self.state.request.size,
            ),
        )
        if outcome.kind is Kind.RANGE:
            return
        if outcome.kind is Kind.ERROR:
            assert outcome.error is not None
            raise outcome.error
        if outcome.kind is Kind.WHOLE:
            raise _no_ranges(mirror)
        # CHANGED (and a 416 for a range inside the file).
        reason = outcome.reason or f"cannot serve bytes {first}-{last}"
        if mirror.url == self.state.validator_url:
            raise _RestartNeeded(f"{mirror.url}: {reason}")
        raise VersionMismatch(
            f"{mirror.url} serves another version than {self.state.validator_url}: {reason}",
            url=mirror.url,
            reference=self.state.validator_url,
            reason=reason,
        )

    def _request_restart(self, mirror: Mirror, reason: str) -> None:
        with self.pool.cond:
            if self._restart is None:
                self._restart = (mirror, reason)
            self.fetch.abort_all("restarting", "http.restart")
            self.pool.cond.notify_all()

    def _set_fatal(self, exc: BaseException) -> None:
        with self.pool.cond:
            if self._fatal is None:
                self._fatal = exc
            self.fetch.abort_all("stopping", "http.stopping")
            self.pool.cond.notify_all()


class _RestartNeeded(Exception):
    """The reference mirror now serves another version: start from zero."""


def _no_ranges(mirror: Mirror) -> RangesUnsupported:
    return RangesUnsupported(
        f"{mirror.url} answered a range request with the whole file (200)", url=mirror.url
    )

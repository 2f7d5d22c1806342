"""One stream at a time from the current offset: for ``connections == 1``, small files,
servers without range support and files of unknown size. Hashes while writing."""

from __future__ import annotations

import time

import requests

from acquired.sources.http.classify import Expected, Kind, classify
from acquired.sources.http.conn import BodyReader, Transfer
from acquired.sources.http.errors import HttpError, SizeMismatch, Truncated
from acquired.sources.http.fetch import Fetcher
from acquired.sources.http.mirrors import Mirror, MirrorPool
from acquired.sources.http.protocol import Validator
from acquired.sources.http.state import FileState

MAX_RESTARTS_PER_MIRROR = 3
"""Restarts from zero (changed file, 200 to a range) a mirror may cause in one run: a
server that always ignores ranges and always drops the connection must not loop."""


class _Stop(Exception):
    """Leave the current attempt to start again from zero."""


class SingleStream:
    """Fetches the rest of the file over one connection, mirror after mirror."""

    def __init__(self, state: FileState, pool: MirrorPool, fetch: Fetcher) -> None:
        self.state = state
        self.pool = pool
        self.fetch = fetch

    def run(self) -> None:
        """Until the file is complete; raises the final error when no mirror is left."""
        state = self.state
        while True:
            self.pool.check_cancel()
            if state.size is not None and state.offset >= state.size and state.offset > 0:
                return
            mirror = self._next_mirror()
            wait = mirror.not_before - time.monotonic()
            if wait > 0:
                self.fetch.cancel.wait(wait)
                continue
            offset = state.offset
            headers: dict[str, str] = {}
            if offset > 0:
                headers["Range"] = f"bytes={offset}-"
                if_range = state.validator.if_range()
                if if_range:
                    headers["If-Range"] = if_range
            try:
                transfer, response = self.fetch.send(mirror, headers)
            except HttpError as exc:
                self.pool.failed(mirror, exc)
                continue
            if self.answer(mirror, transfer, response):
                return

    def _next_mirror(self) -> Mirror:
        for mirror in self.pool.mirrors:
            if mirror.usable:
                return mirror
        raise self.pool.final_error()

    def answer(self, mirror: Mirror, transfer: Transfer, response: requests.Response) -> bool:
        """Read one answer (also the first request's, handed over); True when the file
        is complete. Failures are counted against the mirror."""
        reader = BodyReader(response)
        try:
            done = self._read(mirror, transfer, response, reader)
        except _Stop:
            return False
        except HttpError as exc:
            self.pool.failed(mirror, exc)
            return False
        finally:
            # A body read to its end leaves the connection to the next request.
            self.fetch.release(mirror, transfer, response, reader)
            if self.state.offset > mirror.best_offset:
                mirror.best_offset = self.state.offset
                self.pool.succeeded(mirror)
        if not done:
            # The whole body arrived but the size is still short (a close-delimited body
            # cut early): count it as a failed try.
            self.pool.failed(
                mirror, Truncated(f"the body from {mirror.url} ended early", url=mirror.url)
            )
        return done

    def _read(
        self, mirror: Mirror, transfer: Transfer, response: requests.Response, reader: BodyReader
    ) -> bool:
        state = self.state
        offset = state.offset
        outcome = classify(
            response,
            Expected(
                mirror.url,
                first=offset,
                validator=state.validator if offset else Validator(),
                size=state.size if offset else None,
                manifest_size=state.request.size,
            ),
        )
        if outcome.kind is Kind.ERROR:
            assert outcome.error is not None
            raise outcome.error
        if outcome.kind is Kind.COMPLETE:
            state.size = outcome.total  # an earlier answer overstated its length
            return True
        if outcome.kind is Kind.CHANGED:
            self._restart(mirror, f"{mirror.url}: {outcome.reason}")
            raise _Stop
        if outcome.kind is Kind.WHOLE and offset > 0:
            self._restart(
                mirror, f"{mirror.url} answered a range request with the whole file (200)"
            )
        if outcome.kind is Kind.WHOLE:
            state.validator = Validator()  # writing starts from zero: keep this one
        state.adopt(mirror.url, outcome.validator, outcome.total)
        start = state.offset
        end: tuple[int, str] | None = None
        if outcome.length is not None:
            end = (start + outcome.length, "longer than its Content-Length")
        if state.size is not None and (end is None or state.size < end[0]):
            end = (state.size, "the size of the file")
        try:
            got = self.fetch.pump(
                mirror,
                transfer,
                reader,
                start,
                room=lambda: None,
                on_data=self._hash,
                end=end,
            )
        except SizeMismatch:
            # Whatever came before the excess is not the file the size describes either.
            state.reset(None, forget_plan=False)
            raise
        if outcome.length is not None and got < outcome.length:
            raise Truncated(
                f"body truncated: {mirror.url} sent {got} of {outcome.length} bytes",
                url=mirror.url,
                got=got,
                expected=outcome.length,
            )
        return state.size is None or state.offset >= state.size

    def _hash(self, data: memoryview) -> None:
        self.state.hasher.update(data)
        self.state.offset += len(data)

    def _restart(self, mirror: Mirror, reason: str) -> None:
        """Throw the data away and start from zero (never splice two versions)."""
        self.pool.changed(mirror, reason, MAX_RESTARTS_PER_MIRROR, None)
        # Even when the mirror is dropped for it: its bytes and validator must not be
        # what the next mirror continues from.
        self.state.reset(reason, forget_plan=False)
        if mirror.dropped is not None:
            raise _Stop

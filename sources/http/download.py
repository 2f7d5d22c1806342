"""``HttpDownload``: one file from one or more HTTP(S) mirrors into ``dest``.

The parts, each in its own module:

- ``classify``: what an answer means (status, Content-Range, validators, sizes);
- ``mirrors.MirrorPool``: the mirrors' standing, ranking, backoff, dropping, the
  per-host connection cap and the final error;
- ``fetch.Fetcher``: abortable requests and the one read loop into the ``.part`` file;
- ``state.FileState``: what is on disk, checkpoints and the one reset;
- ``segmented.SegmentedTransfer`` (``connections > 1``, ranges served, a known size of
  more than ``SMALL_FILE``) and ``single.SingleStream`` (everything else);
- ``watchdog.Watchdog``: Progress, checkpoints, speeds and stalls.

Threads: ``run()`` blocks in the caller's transfer thread (which also serves as the first
segment worker). ``cancel()`` may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from acquired.sources.http import resume
from acquired.sources.http.conn import shared_session
from acquired.sources.http.errors import (
    BadUrl,
    DigestMismatch,
    DownloadCancelled,
    HttpError,
    SizeMismatch,
    UnsupportedUrl,
)
from acquired.sources.http.events import MirrorDropped, Progress, Restarted
from acquired.sources.http.fetch import Fetcher
from acquired.sources.http.hashing import mismatches, new_hasher
from acquired.sources.http.mirrors import MirrorPool, all_failed
from acquired.sources.http.model import DownloadResult, FileRequest, HttpOptions
from acquired.sources.http.partfile import PartFile
from acquired.sources.http.protocol import check_url
from acquired.sources.http.segmented import Handover, SegmentedTransfer
from acquired.sources.http.single import SingleStream
from acquired.sources.http.state import FileState
from acquired.sources.http.watchdog import SMALL_FILE, Watchdog

__all__ = ["SMALL_FILE", "HttpDownload"]

log = logging.getLogger("acquired.sources.http")

EventSink = Callable[[object], None]


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
        self._emit = on_event or (lambda event: None)
        self._cancel = threading.Event()
        self._fetch: Fetcher | None = None

    def cancel(self) -> None:
        """Stop soon (thread-safe): ``run()`` raises DownloadCancelled after a last
        checkpoint, within about a second even when a server is silent."""
        self._cancel.set()
        fetch = self._fetch
        if fetch is not None:
            fetch.abort_all("cancelled", DownloadCancelled.code)
            with fetch.pool.cond:
                fetch.pool.cond.notify_all()

    def run(self) -> DownloadResult:
        """Download, verify and rename into place; see the class docstring."""
        pool = self._mirror_pool()
        new_hasher(self.request.digests)  # UnsupportedDigest before any I/O
        part_path = self.request.part
        try:
            part_size: int | None = os.lstat(part_path).st_size
        except (FileNotFoundError, NotADirectoryError):
            part_size = None  # PartFile says why when a folder on the way is not one
        part = PartFile(part_path, root=self.request.root)
        try:
            state = self._prepare(part, part_size)
        except BaseException:
            part.close()
            raise
        session = self.options.session or shared_session(self.options.user_agent)
        fetch = self._fetch = Fetcher(session, self.options, pool, state, self._cancel)
        if self._cancel.is_set():
            fetch.abort_all("cancelled", DownloadCancelled.code)
        watchdog = Watchdog(state, pool, fetch, self.options, self._emit)
        # A small file is usually done before a watchdog would first look at it.
        watchdog.start(deferred=not self._segmented(state))
        ok = False
        try:
            while True:
                self._transfer(state, pool, fetch)
                try:
                    result = self._finish(state, pool)
                except DigestMismatch as exc:
                    if not self._after_mismatch(state, pool, exc):
                        part.remove()
                        ok = True  # nothing left to checkpoint: the state was reset
                        raise
                    continue
                ok = True
                return result
        finally:
            state.stop_prefix_hasher()
            watchdog.stop()
            if not ok:
                state.final_checkpoint()
            part.close()

    # -- setup -------------------------------------------------------------------------
    def _mirror_pool(self) -> MirrorPool:
        """The usable mirrors; a bad URL among good ones is dropped with an event."""
        req = self.request
        if not req.urls:
            raise BadUrl(f"no URL given for {req.dest}", dest=str(req.dest))
        errors: list[HttpError] = []
        good: list[str] = []
        for url in req.urls:
            try:
                good.append(check_url(url))
            except (BadUrl, UnsupportedUrl) as exc:
                errors.append(exc)
                self._emit(MirrorDropped(url, exc.code, str(exc)))
        if not good:
            raise errors[0] if len(errors) == 1 else all_failed(errors, req.dest.name)
        return MirrorPool(good, self.options, req.dest.name, self._cancel, self._emit)

    def _prepare(self, part: PartFile, part_size: int | None) -> FileState:
        """What the ``.part`` file (``part_size`` before opening; None: there was none)
        and the resume state say is already here."""
        req = self.request
        state = FileState(req, part, self._emit)
        point = resume.decode(req.resume, part_size=part_size, expected_size=req.size)
        if isinstance(point, str):
            if part_size:
                self._emit(Restarted(f"partial file discarded: {point}"))
            part.truncate(0)
        else:
            state.load(point)
        return state

    # -- transfer ----------------------------------------------------------------------
    def _segmented(self, state: FileState) -> bool:
        """Several connections for a file that is not known to be small."""
        if self.options.connections <= 1:
            return False
        return state.size is None or state.size > SMALL_FILE

    def _transfer(self, state: FileState, pool: MirrorPool, fetch: Fetcher) -> None:
        """Get every byte onto disk and hashed."""
        handover: Handover | None = Handover()
        if self._segmented(state):
            handover = SegmentedTransfer(state, pool, fetch, self.options).run()
        if handover is None:
            return
        state.enter_single()
        single = SingleStream(state, pool, fetch)
        if handover.response is not None:
            assert handover.mirror is not None and handover.transfer is not None
            if single.answer(handover.mirror, handover.transfer, handover.response):
                return
        single.run()

    # -- finish ------------------------------------------------------------------------
    def _finish(self, state: FileState, pool: MirrorPool) -> DownloadResult:
        req = self.request
        size = state.plan.size if state.plan is not None else state.offset
        if req.size is not None and size != req.size:
            state.reset(None)
            raise SizeMismatch(
                f"got {size} bytes for {req.dest.name}, the manifest says {req.size}",
                expected=req.size,
                actual=size,
            )
        actual, wrong = mismatches(state.hasher, req.digests)
        if wrong:
            name, expected = wrong[0]
            urls = sorted(state.contributors)
            url = urls[0] if len(urls) == 1 else (state.validator_url or "")
            state.reset(None)
            raise DigestMismatch(
                f"{name} of {req.dest.name} is {actual[name]}, expected {expected}; "
                "the data was discarded",
                algorithm=name,
                expected=expected,
                actual=actual[name],
                url=url,
                urls=urls,
            )
        validator = state.validator.describe()
        state.rename_into_place()
        state.contributors.clear()
        self._emit(Progress(size, size, 0.0, 0, pool.stats(time.monotonic())))
        return DownloadResult(path=req.dest, size=size, digests=actual, validator=validator)

    def _after_mismatch(self, state: FileState, pool: MirrorPool, exc: DigestMismatch) -> bool:
        """Whether to fetch again after wrong data (see ``MirrorPool.after_mismatch``)."""
        urls = exc.details.get("urls")
        bad = {str(u) for u in urls} if isinstance(urls, list) else set()
        state.contributors.clear()
        return pool.after_mismatch(bad, exc)

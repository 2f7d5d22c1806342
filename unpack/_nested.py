"""Nested extraction: inner archives (``n01440764.tar`` inside ``train.tar``) handed to
worker processes, or extracted inline, under the budget of the whole extraction."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import IO, Any

from . import _readers, formats
from ._engine import Shared, Writer
from ._readers import InnerJob, InnerResult
from .errors import CorruptArchive, ExtractCancelled, WriteFailed
from .safety import Limits


def writers_lock(staging: Path) -> Path:
    """The lock file that every process writing into ``staging`` holds shared."""
    return staging.with_name(staging.name + ".lock")


def remove(path: Path) -> None:
    """Remove a file or folder (not following a link); absent is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


class Nested:
    """Hands inner archives to worker processes (or extracts them inline)."""

    def __init__(
        self,
        *,
        archive: Path,
        staging: Path,
        writer: Writer,
        limits: Limits,
        archive_size: int,
        workers: int,
        shared: Shared,
        mp: tuple[Any, Any, Any] | None,
        cancel: threading.Event | None,
        on_wait: Callable[[], None],
    ) -> None:
        self.archive = archive
        self.staging = staging
        self.writer = writer
        self.limits = limits
        self.archive_size = archive_size
        self.workers = workers
        self.shared = shared
        self.mp = mp
        self.cancel = cancel
        self.on_wait = on_wait
        self.pool: ProcessPoolExecutor | None = None
        self.pending: set[Future[InnerResult]] = set()
        self.results: list[InnerResult] = []
        self.dests: set[str] = set()
        self.tmp = staging.with_name(staging.name + ".inner")
        self.count = 0

    def hook(self, member: str, rel: str, offset: int, size: int, src: Any) -> bool:
        """Take an inner archive member for a worker process; False: extract it as a file."""
        if formats.format_from_name(rel) not in formats.CONTAINERS:
            return False
        dest = formats.strip_suffix(rel)
        if dest in self.dests:
            raise CorruptArchive(
                f"{member!r}: another inner archive already extracts into {dest!r}",
                member=member,
            )
        self.writer.directory(dest, member, None)
        self.writer.inner_dirs.add(dest)
        self.dests.add(dest)
        if offset >= 0:
            job = InnerJob(
                str(self.archive),
                offset,
                size,
                member,
                str(self.staging / dest),
                self.limits,
                self.archive_size,
            )
        else:
            # The outer archive is compressed (or zip): the inner one is copied out to a
            # temporary file first; at most 2 per worker are waiting at any time.
            self.tmp.mkdir(exist_ok=True)
            self.count += 1
            path = self.tmp / f"inner-{self.count}"
            copy_stream(src, path, size, member)
            job = InnerJob(
                str(path),
                0,
                size,
                member,
                str(self.staging / dest),
                self.limits,
                self.archive_size,
                delete_source=True,
            )
        self._submit(job)
        return True

    def _submit(self, job: InnerJob) -> None:
        if self.workers <= 1 or self.mp is None:
            self.results.append(_readers.extract_inner(job, self.shared, self.cancel))
            self.on_wait()
            return
        if self.pool is None:
            ctx, array, lock = self.mp
            lock_path = writers_lock(self.staging)
            self.pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=ctx,
                initializer=_readers.worker_init,
                initargs=(array, lock, str(lock_path), os.getpid()),
            )
        while len(self.pending) >= 2 * self.workers:
            self._wait_some()
        self.pending.add(self.pool.submit(_readers.run_inner, job))

    def _wait_some(self) -> None:
        done, self.pending = wait(self.pending, timeout=0.25, return_when=FIRST_COMPLETED)
        for f in done:
            self.results.append(result_of(f))
        if self.cancel is not None and self.cancel.is_set():
            raise ExtractCancelled("extraction was cancelled")
        self.on_wait()

    def finish(self) -> None:
        """Wait for every inner archive still being extracted."""
        while self.pending:
            self._wait_some()

    def close(self, failed: bool) -> None:
        """Stop the workers; on failure tell the ones still running to abort."""
        if failed:
            self.shared.abort()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        remove(self.tmp)


def result_of(f: Future[InnerResult]) -> InnerResult:
    """The result of one inner archive, a dead worker process told as a write failure."""
    try:
        return f.result()
    except BrokenProcessPool:
        raise WriteFailed(
            "a worker process of the nested extraction died (out of memory?)"
        ) from None


def copy_stream(src: IO[bytes], path: Path, size: int, member: str) -> None:
    """Copy ``size`` bytes of a member to ``path``; a short member is an error."""
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = src.read(min(remaining, 1 << 20))
            if not chunk:
                raise CorruptArchive(f"{member!r}: archive ends inside this member", member=member)
            out.write(chunk)
            remaining -= len(chunk)

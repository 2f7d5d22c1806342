"""What one download has on disk and what it belongs to: the ``.part`` file, the bytes
written, the validator and size they were checked against, checkpoints, and the one
routine that throws it all away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from acquired.sources.errors import DiskFull
from acquired.sources.http import resume
from acquired.sources.http.events import Checkpoint, Restarted
from acquired.sources.http.hashing import PrefixHasher, hash_file_prefix, new_hasher
from acquired.sources.http.model import FileRequest, HttpOptions
from acquired.sources.http.partfile import PartFile
from acquired.sources.http.plan import Plan, contiguous_prefix
from acquired.sources.http.protocol import Validator
from acquired.sources.http.resume import Range, ResumePoint

log = logging.getLogger("acquired.sources.http")

_MiB = 1 << 20


class FileState:
    """The bytes of one file in flight and the facts they were checked against.

    ``lock`` is held across (snapshot, fdatasync, emit) by checkpoints and across
    resets, so a checkpoint never claims bytes of a version a reset just threw away.
    Modes: "idle" (nothing decided; ``resume_done`` is what a resume state vouches
    for), "single" (bytes ``[0, offset)`` are written and hashed), "segmented" (``plan``
    says what is written; ``prefix`` hashes behind the writers)."""

    def __init__(
        self, request: FileRequest, part: PartFile, emit: Callable[[object], None]
    ) -> None:
        self.request = request
        self.part = part
        self.emit = emit
        self.lock = threading.Lock()
        self.hasher = new_hasher(request.digests)  # UnsupportedDigest before any I/O
        self.prefix: PrefixHasher | None = None
        self.validator = Validator()
        self.validator_url: str | None = None
        self.size: int | None = request.size
        self.mode = "idle"
        self.resume_done: list[Range] = []
        self.offset = 0
        self.plan: Plan | None = None
        self.contributors: set[str] = set()  # mirrors whose bytes are in the .part
        self.received = 0  # body bytes received in this run
        self.last_checkpoint: tuple[float, int] = (0.0, -1)  # (time, received)
        self.wake = threading.Event()  # set by writers once a checkpoint is due

    def load(self, point: ResumePoint) -> None:
        """Take what a usable resume state says is on disk."""
        self.validator = point.validator
        self.validator_url = point.url
        if point.size is not None:
            self.size = point.size
        self.resume_done = point.done

    # -- what is on disk -----------------------------------------------------------------
    def written(self) -> list[Range]:
        """The byte ranges written so far."""
        if self.plan is not None:
            return self.plan.written()
        if self.mode == "single":
            return [(0, self.offset)] if self.offset else []
        return list(self.resume_done)

    def done_bytes(self) -> int:
        """How many bytes of the file are written."""
        return sum(end - start for start, end in self.written())

    def encode(self) -> dict[str, Any]:
        """The resume state for what is written now."""
        return resume.encode(
            size=self.size, validator=self.validator, url=self.validator_url, done=self.written()
        )

    def adopt(self, url: str, got: Validator, total: int | None) -> None:
        """Take the validator first seen and the size an answer announces."""
        if not self.validator:
            self.validator = got
            self.validator_url = url
        if total is not None:
            self.size = total

    def note_received(self, n: int, threshold: int) -> None:
        """Count body bytes; wake the watchdog once a checkpoint's worth arrived."""
        self.received += n
        if self.received - self.last_checkpoint[1] >= threshold:
            self.wake.set()

    # -- modes ---------------------------------------------------------------------------
    def enter_single(self) -> None:
        """Switch to one stream from the contiguous prefix of what is on disk."""
        with self.lock:
            written = self.written()
            self.stop_prefix_hasher()
            self.plan = None
            self.mode = "single"
            self.offset = contiguous_prefix(written)
            # Bytes past the last checkpoint may not have reached the disk before a power
            # loss, and a stream continues only from the prefix: keep just that.
            self.part.truncate(self.offset)
            self.hasher = new_hasher(self.request.digests)
            hash_file_prefix(self.hasher, self.part, self.offset)

    def enter_segmented(self, size: int, options: HttpOptions) -> Plan:
        """Plan the file of ``size`` bytes around what is on disk; start hashing."""
        with self.lock:
            self.size = size
            self.plan = Plan(
                size,
                self.resume_done,
                margin=options.chunk_size,
                min_steal=max(_MiB, options.chunk_size),
            )
            self.mode = "segmented"
        if self.part.size() > size:
            self.part.truncate(size)  # a longer leftover must not outlive the rename
        self.part.preallocate(size)
        self.stop_prefix_hasher()
        self.prefix = PrefixHasher(
            self.part, self.plan, self.request.digests, self.request.dest.name
        )
        self.hasher = self.prefix.hasher
        return self.plan

    def stop_prefix_hasher(self) -> None:
        """Stop the segmented mode's hashing thread, if any."""
        if self.prefix is not None:
            self.prefix.stop()
            self.prefix = None

    # -- the one reset -------------------------------------------------------------------
    def reset(self, reason: str | None, *, forget_plan: bool = True) -> None:
        """Throw the data and what was learnt of the file away and say so in a checkpoint
        (and a Restarted event when ``reason`` is given): the next request starts from
        byte 0. ``forget_plan`` False keeps the single-stream mode."""
        if forget_plan:
            self.stop_prefix_hasher()
        with self.lock:
            self.part.truncate(0)
            if forget_plan:
                self.plan = None
                self.mode = "idle"
                self.resume_done = []
            self.offset = 0
            self.hasher = new_hasher(self.request.digests)
            self.validator = Validator()
            self.validator_url = None
            self.size = self.request.size
            self.contributors.clear()
            state = self.encode()
            self.last_checkpoint = (time.monotonic(), self.received)
        if reason is not None:
            log.debug("restarting %s from zero: %s", self.request.dest.name, reason)
            self.emit(Restarted(reason))
        self.emit(Checkpoint(state))

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint(self) -> None:
        """fdatasync, then tell the caller what is safely on disk."""
        with self.lock:
            if self.part.fd < 0:
                return
            received = self.received
            state = self.encode()  # snapshot first: only bytes written before the sync
            self.part.sync()
            self.last_checkpoint = (time.monotonic(), received)
        self.emit(Checkpoint(state))

    def final_checkpoint(self) -> None:
        """The last checkpoint of a run that did not finish; never raises."""
        try:
            self.checkpoint()
        except DiskFull:
            # The data was written but cannot be flushed: vouch only for the last flush.
            log.warning("final flush of %s failed: disk full", self.request.part)
        except OSError as exc:
            log.warning("final flush of %s failed: %s", self.request.part, exc)

    def rename_into_place(self) -> None:
        """Move the verified data to the destination (no checkpoint can race it)."""
        with self.lock:
            self.part.rename_to(self.request.dest)

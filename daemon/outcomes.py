"""What follows the end of a transfer or step: done, stopped, retried, switched or
failed; and completed copies found in watched folders."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from acquired.daemon.errors import DaemonError, ErrorInfo, describe
from acquired.daemon.lifecycle import Event, FileState
from acquired.daemon.messages import TransferEnded, WatchedMatch
from acquired.daemon.scheduler import DISK_WAIT, retry_delay
from acquired.daemon.store import FileRow
from acquired.sources.choice import Decision, MirrorEvidence, RunningState, reevaluate
from acquired.unpack import Candidate

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")

# A file that fails with a retryable error is tried this many times before it fails.
MAX_ATTEMPTS = 5


SINGLE_SOURCE_HINT = (
    "The data was discarded. This file has a single source, so it is fetched from the "
    "same one again; if the checksum keeps differing, check it in the manifest."
)


class ChecksumLikelyWrong(DaemonError):
    """Every source gave the same data, which does not match the manifest's checksum."""

    code = "manifest.checksum_likely_wrong"
    hint = (
        "Compare the checksum in the manifest with the one the dataset publishes; if the "
        "manifest is right, the source serves other data. `acquirectl retry JOB` tries again."
    )

    @classmethod
    def of(cls, path: str, algorithm: str, expected: str, actual: str) -> ChecksumLikelyWrong:
        """The error for ``path``, naming the expected and the actual digest."""
        return cls(
            f"{path}: two downloads gave the same {algorithm} {actual}, but the manifest"
            f" expects {expected}; the manifest's checksum is likely wrong (the data was"
            " discarded)",
            algorithm=algorithm,
            expected=expected,
            actual=actual,
        )


def same_wrong_digest(
    previous: dict[str, Any] | None, info: ErrorInfo
) -> tuple[str, str, str] | None:
    """(algorithm, expected, actual) when this checksum mismatch repeats the previous
    attempt's exactly (same data from every source tried), else None."""
    if previous is None or previous.get("code") != info.code:
        return None
    before, now = previous.get("details") or {}, info.details
    keys = ("algorithm", "expected", "actual")
    if not all(now.get(k) for k in keys) or any(before.get(k) != now.get(k) for k in keys):
        return None
    return str(now["algorithm"]), str(now["expected"]), str(now["actual"])


def retry_reason(info: ErrorInfo, delay: float, attempts: int) -> str:
    """What a file waiting to try again shows: "retrying HOST in 40 s: cause (3rd try)"."""
    url = str(info.details.get("url") or "")
    host = urlsplit(url).hostname if url else None
    where = f" {host}" if host else ""
    return f"retrying{where} in {delay:.0f} s: {info.message} ({ordinal(attempts + 1)} try)"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class Outcomes:
    """The state thread's handling of ends: one place for retry, switch and failure."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        # Watched files being matched, and files whose transfer stops for a watched copy.
        self.matching: set[Path] = set()
        self.watched_for: dict[int, Path] = {}

    def on_transfer_ended(self, message: TransferEnded) -> None:
        """A transfer or step ended: on to the next state, or what a failure calls for."""
        act = self.svc.active.get(message.file_id)
        if act is None or act.token != message.token:
            self.svc.scheduler.drained(message.token)
            return
        del self.svc.active[message.file_id]
        if act.torrent_key is not None:
            group = self.svc.torrent.groups.get(act.torrent_key)
            if group is not None and message.file_id in group:
                group.remove(message.file_id)
                if not group:
                    del self.svc.torrent.groups[act.torrent_key]
        try:
            row = self.svc.store.get_file(message.file_id)
        except KeyError:
            return  # its job was replaced or removed meanwhile
        if message.error is None:
            if act.kind == "unpack":
                self.svc.metrics.observe_extract(time.monotonic() - act.started)
                self.svc.move(row.id, Event.UNPACKED, say=("info", "done (unpacked)"))
            else:
                digests = getattr(message.result, "digests", None)
                size = int(getattr(message.result, "size", act.bytes_done))
                # The bytes that arrived after the last progress report.
                self.svc.metrics.observe_bytes(act.kind, size - act.bytes_done)
                self.svc.files.fetched(row, digests, size=size)
            return
        if act.stop_reason is not None:
            self.stopped(row, act.stop_reason)
            return
        self.attempt_failed(row, describe(message.error), act.kind)

    def stopped(self, row: FileRow, reason: str) -> None:
        """A transfer the daemon stopped has ended: the state its reason says."""
        if reason == "shutdown":
            return  # stays in flight in the store; the next start resumes it
        if reason == "watched":
            path = self.watched_for.pop(row.id, None)
            if path is not None:
                self.svc.files.place_watched(row, path)
            else:  # another file of the same torrent: it goes back to the queue
                self.svc.move(row.id, Event.REQUEUE, reason="torrent restarted")
            return
        if reason == "pause":
            self.svc.move(row.id, Event.PAUSE, reason="paused by user")
        elif reason == "cancel":
            self.svc.move(row.id, Event.CANCEL, reason="cancelled by user")
        elif reason == "disk":
            self.svc.move(row.id, Event.DISK_PAUSE, reason=f"{DISK_WAIT}: below the reserve")
            self.svc.event("warning", f"paused: {DISK_WAIT}", job_id=row.job_id, row=row)

    def attempt_failed(self, row: FileRow, info: ErrorInfo, kind: str) -> None:
        """What follows a failed attempt: pause for disk, switch source, retry, or fail."""
        if info.code == "disk.full":
            self.svc.move(row.id, Event.DISK_PAUSE, reason=f"{DISK_WAIT}: {info.message}")
            self.svc.event("warning", f"paused: {DISK_WAIT}", job_id=row.job_id, row=row)
            return
        mismatch = info.code == "verify.digest_mismatch"
        spec = self.svc.spec(row)
        if mismatch:
            self.svc.store.clear_checkpoint(row.id)
            same = same_wrong_digest(row.error, info)
            if same is not None:
                # Two sources (or one source twice) gave the same data: fetching it a
                # third time will not help; the manifest's checksum is the likely culprit.
                self.fail(row, describe(ChecksumLikelyWrong.of(row.path, *same)))
                return
            if len(spec.sources.mirrors) <= 1 and not spec.sources.torrent:
                info = dataclasses.replace(info, hint=SINGLE_SOURCE_HINT)
        retry = (info.retryable or mismatch) and row.attempts < MAX_ATTEMPTS
        # Switching counts as an attempt too, so two broken sources cannot take turns forever.
        switchable = kind in ("torrent", "http") and row.attempts < MAX_ATTEMPTS
        if switchable and self.svc.torrents is not None and spec.sources.torrent:
            decision = reevaluate(
                RunningState(
                    current="torrent" if kind == "torrent" else "http",
                    torrent_available=True,
                    mirrors=tuple(
                        MirrorEvidence(url=m, ok=kind == "torrent") for m in spec.sources.mirrors
                    ),
                    torrent_error=info.message if kind == "torrent" else None,
                    mirrors_failed=kind == "http" and not retry,
                )
            )
            if decision is not None:
                self.switch(row, decision)
                return
        if kind == "unpack":
            retry = False  # an archive that cannot be extracted will not improve by waiting
        if retry:
            delay = retry_delay(row.attempts)
            reason = retry_reason(info, delay, row.attempts)
            # Discarded data is no progress: what status shows starts again from zero.
            fields: dict[str, Any] = {"bytes_done": 0} if mismatch else {}
            self.svc.move(
                row.id,
                Event.RETRY,
                reason=reason,
                error=info.as_dict(),
                not_before=time.time() + delay,
                **fields,
            )
            self.svc.event(
                "warning",
                reason,
                job_id=row.job_id,
                row=row,
                code=info.code,
            )
            return
        self.fail(row, info)

    def switch(self, row: FileRow, decision: Decision) -> None:
        """Change a file's source (stalled torrent, failed mirrors) and queue it."""
        self.svc.store.set_plan(row.id, {"source": decision.source, "reason": decision.reason})
        self.svc.move(row.id, Event.SWITCH, reason=decision.reason)
        self.svc.event(
            "warning", f"switching source: {decision.reason}", job_id=row.job_id, row=row
        )

    def fail(self, row: FileRow, info: ErrorInfo) -> None:
        """Fail a file for good, with its error's code and hint."""
        self.svc.metrics.failure(info.code)
        self.svc.move(row.id, Event.FAIL, reason=info.message, error=info.as_dict())
        self.svc.event(
            "error",
            f"failed: {info.message} — {info.hint}",
            job_id=row.job_id,
            row=row,
            code=info.code,
        )

    def on_watched_file(self, path: Path) -> None:
        """A complete file in a watched folder: match it against unfinished files."""
        if path in self.matching:
            return
        candidates = [
            Candidate(
                key=str(r.id),
                name=Path(r.path).name,
                size=r.size,
                digests=spec.digests,
            )
            for r in self.svc.store.unfinished_named(path.name)
            if (spec := self.svc.spec_if_loaded(r)) is not None
        ]
        if not candidates:
            return
        self.matching.add(path)

        self.svc.watched_runner.match(path, candidates)

    def on_watched_match(self, message: WatchedMatch) -> None:
        """Use a matched watched file: stop the file's transfer, then place the copy."""
        self.matching.discard(message.path)
        if message.error is not None:
            info = describe(message.error)
            LOG.warning(
                "watched file %s not used: %s",
                message.path,
                info.message,
                extra={"code": info.code},
            )
            self.svc.store.add_event(
                "warning", f"watched file {message.path} not used: {info.message}", code=info.code
            )
            return
        if message.file_id is None:
            return
        try:
            row = self.svc.store.get_file(message.file_id)
        except KeyError:
            return
        if row.state in (FileState.DONE, FileState.CANCELLED, FileState.UNPACKING):
            return
        act = self.svc.active.get(row.id)
        if act is not None:
            if act.kind in ("http", "torrent", "choosing") and act.stop_reason is None:
                # The copy replaces the transfer; it is placed once the transfer stopped.
                self.watched_for[row.id] = message.path
                self.svc.stop_active(act, "watched")
            return
        self.svc.files.place_watched(row, message.path)

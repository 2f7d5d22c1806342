"""The state thread: it owns the store and every job and file state.

Everything else — the inbox watcher, transfer threads, the torrent alert pump, unpack
workers, the control server — talks to it by posting messages on its queue
(``acquired.daemon.messages``). Decisions that need no I/O are pure functions
(``states``, ``plan_start``, ``retry_delay``, ``order_mirrors``, and the source choice in
``acquired.sources.choice``) so tests call them directly.

A file's way through the daemon: queued → (choosing its source) → fetching from HTTP
mirrors or a torrent → unpacking (its ``unpack`` steps) → done. Files of one job that come
from the same torrent are fetched as one torrent request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from acquired.common import safepath
from acquired.common.redact import redact_text
from acquired.daemon.config import Config
from acquired.daemon.errors import DaemonError, ErrorInfo, describe
from acquired.daemon.forget import forget_job
from acquired.daemon.inbox import UnreadableManifest, read_manifest, reject_file
from acquired.daemon.manifest import (
    FileSpec,
    FrameworkLayout,
    Manifest,
    ManifestError,
    manifest_digest,
    parse_manifest,
    resolve_under,
)
from acquired.daemon.messages import (
    Active,
    InboxFile,
    JobStepProgress,
    JobStepsEnded,
    Message,
    Reload,
    Reply,
    Request,
    SourceChosen,
    SourceEvent,
    StepProgress,
    Stop,
    TorrentAdded,
    TorrentEvent,
    TransferEnded,
    WatchedFile,
    WatchedMatch,
)
from acquired.daemon.metrics import Metrics
from acquired.daemon.notify import Notifier, format_status
from acquired.daemon.states import FileState, after_command, job_is_active, job_state
from acquired.daemon.store import FileRow, NewFile, Store
from acquired.daemon.torrents import (
    peer_hints,
    probe_and_choose,
    restore_seeding,
    same_torrent,
    torrent_key,
    torrent_source,
)
from acquired.daemon.units import format_bytes
from acquired.sources.choice import (
    Decision,
    MirrorEvidence,
    RunningState,
    SwarmEvidence,
    reevaluate,
)
from acquired.sources.http import FileRequest, HttpDownload, HttpOptions
from acquired.sources.http import events as http_events
from acquired.sources.http.hostslots import HostSlots
from acquired.sources.http.partfile import drop_empty_part
from acquired.sources.http.pip_mirrors import prefetch_wheels
from acquired.sources.http.ratelimit import RateLimiter
from acquired.sources.torrent import TorrentEngine, TorrentRequest
from acquired.sources.torrent import events as tev
from acquired.unpack import (
    Candidate,
    ChecksumFileStep,
    FrameworkStep,
    ImagenetValStep,
    Limits,
    ListingStep,
    UnpackStep,
    finish_job,
    match_completed,
    process_file,
)

LOG = logging.getLogger("acquired.service")
VERSION = "0.1.0"

# A file that fails with a retryable error is tried this many times before it fails.
MAX_ATTEMPTS = 5
DISK_WAIT = "waiting for disk"
TICK = 0.5  # seconds: the longest the state thread sleeps; it pings the watchdog each tick


class JobConflict(DaemonError):
    code = "manifest.conflict"
    hint = "Use `acquirectl add --replace FILE` to replace the active job, or rename the job."


class UnknownJob(DaemonError):
    code = "control.unknown_job"
    hint = "`acquirectl status` lists the jobs."


class UnknownCommand(DaemonError):
    code = "control.unknown_command"
    hint = "`acquirectl --help` lists the commands."


class NoUsableSource(DaemonError):
    code = "source.none_usable"
    hint = (
        "The file's only source is a torrent and the torrent engine is not running "
        "(see the daemon's log and `acquirectl doctor`); add an HTTP mirror or fix the engine."
    )


class StoppedByDaemon(DaemonError):
    """A transfer the daemon itself stopped (pause, cancel, disk, shutdown)."""

    code = "transfer.stopped"
    hint = "Nothing to do: the daemon stopped this transfer on purpose."


# -- pure decisions -------------------------------------------------------------------------


class DiskView(NamedTuple):
    free: int
    reserve: int


def plan_start(size: int | None, bytes_done: int, committed: int, disk: DiskView) -> str | None:
    """Whether a file may start now: None if yes, else the reason it waits.

    ``committed`` is what transfers already running still need to write: two files that
    each fit alone must not both start when only one fits.
    """
    if size is None:
        return None if disk.free > disk.reserve else _disk_reason(None, disk)
    need = max(size - bytes_done, 0)
    if need + committed <= disk.free - disk.reserve:
        return None
    return _disk_reason(need, disk)


def _disk_reason(need: int | None, disk: DiskView) -> str:
    have = max(disk.free - disk.reserve, 0)
    if need is None:
        return f"{DISK_WAIT}: free {format_bytes(disk.free)} is below the reserve"
    return f"{DISK_WAIT}: need {format_bytes(need)}, free {format_bytes(have)} above the reserve"


def retry_delay(attempt: int, *, base: float = 5.0, cap: float = 600.0) -> float:
    """Back-off before a file's next attempt: exponential with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))


def order_mirrors(mirrors: list[str], avoid: str | None) -> list[str]:
    """Put the mirror that served bad data last, keeping the manifest order otherwise."""
    if not avoid or avoid not in mirrors:
        return list(mirrors)
    return [m for m in mirrors if m != avoid] + [avoid]


# -- the service --------------------------------------------------------------------------


class _StepHandle:
    """Lets the state thread stop an unpack step between entries."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def cancel(self) -> None:
        self.event.set()


class Service:
    """The daemon's state thread. ``run()`` blocks until ``stop()``."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        disk_usage: Callable[[Path], tuple[int, int]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier or Notifier()
        # Always recorded; exposed over HTTP only when [metrics] listen is set.
        self.metrics = metrics or Metrics()
        self._disk_usage = disk_usage or _disk_usage
        self.queue: queue.Queue[Message] = queue.Queue()
        self.active: dict[int, Active] = {}
        self._tokens = 0
        self._started = time.monotonic()
        self._stopping = False
        self._last_disk_check = 0.0
        self._last_status = 0.0
        self._disk = DiskView(0, 0)
        self.manifests_dir = config.state_dir / "manifests"
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        self._test_faults = os.environ.get("ACQUIRED_TEST_FAULTS") == "1"
        # One bucket for all transfers, one per job that sets its own limit.
        self.limiter = RateLimiter(config.bandwidth_limit or None)
        self._job_limiters: dict[str, RateLimiter] = {}
        # Connections per host, counted over every file being fetched at once.
        self.host_slots = HostSlots(config.http.per_host_connections)
        # The torrent engine, once attached; torrent key -> files it fetches; torrents
        # seeding after their files are done (key -> what status shows of them).
        self.torrents: TorrentEngine | None = None
        self.torrents_down: str | None = "the torrent engine was not started"
        self._groups: dict[str, list[int]] = {}
        self._seeding: dict[str, dict[str, Any]] = {}
        self._dht_nodes: int | None = None
        # Jobs whose own steps run now: job id -> (token, handle, thread, progress text).
        self._finishing: dict[str, tuple[int, _StepHandle, threading.Thread, str]] = {}
        # Watched files being matched, and files whose transfer stops for a watched copy.
        self._matching: set[Path] = set()
        self._watched_for: dict[int, Path] = {}
        # What the state thread does with each kind of message.
        self._handlers: dict[type, Callable[[Any], None]] = {
            SourceEvent: self._on_source_event,
            TorrentEvent: lambda m: self._on_torrent_event(m.event),
            TransferEnded: self._on_transfer_ended,
            StepProgress: self._on_step_progress,
            SourceChosen: self._on_source_chosen,
            TorrentAdded: self._on_torrent_added,
            JobStepProgress: self._on_job_step_progress,
            JobStepsEnded: self._on_job_steps_ended,
            InboxFile: lambda m: self._on_inbox_file(m.path),
            WatchedFile: lambda m: self._on_watched_file(m.path),
            WatchedMatch: self._on_watched_match,
            Request: lambda m: m.reply.set(self._on_request(m.payload)),
            Reload: lambda m: self._apply_config(m.config),
        }

    def attach_torrents(self, engine: TorrentEngine | None, why_not: str | None = None) -> None:
        """Use ``engine`` for torrent sources (None: torrents are unavailable, ``why_not``)."""
        self.torrents = engine
        self.torrents_down = why_not if engine is None else None
        self._seeding.update(restore_seeding(engine, self.store))

    # -- threads other than the state thread call only these ---------------------------

    def post(self, message: Message) -> None:
        self.queue.put(message)

    def call(self, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Run a control request on the state thread and wait for its reply."""
        if payload.get("cmd") == "ping":
            return {"ok": True, "result": {"pid": os.getpid(), "version": VERSION}}
        reply = Reply()
        self.post(Request(payload, reply))
        value = reply.wait(timeout)
        if value is None:
            return _error_reply(describe(DaemonError("the daemon did not answer in time")))
        return value

    def stop(self) -> None:
        self.post(Stop())

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        n = self.store.requeue_interrupted()
        if n:
            self._event("info", f"resuming {n} file(s) interrupted by the last stop")
        for job in self.store.list_jobs():
            if job.finish == "pending":
                self._maybe_finish(job.id)
        self._check_disk(force=True)
        while True:
            self.notifier.watchdog()
            try:
                message: Message | None = self.queue.get(timeout=TICK)
            except queue.Empty:
                message = None
            # Handle what is waiting before scheduling (progress events come in bursts and
            # need no scheduling decision each), but never so long that the watchdog
            # goes without a ping.
            until = time.monotonic() + TICK
            while message is not None:
                if isinstance(message, Stop):
                    self._shutdown()
                    return
                self._handle(message)
                if time.monotonic() > until:
                    break
                try:
                    message = self.queue.get_nowait()
                except queue.Empty:
                    message = None
            self._check_disk()
            self._schedule()
            self._publish_status()

    def _handle(self, message: Message) -> None:
        try:
            self._handlers[type(message)](message)
        except Exception:
            # The state thread must survive any single bad message; the bug is logged.
            LOG.exception("internal error while handling %s", type(message).__name__)
            if isinstance(message, Request):
                message.reply.set(_error_reply(describe(RuntimeError("internal error"))))

    def _shutdown(self) -> None:
        """Stop every transfer, keeping its progress; the next start resumes them."""
        self._stopping = True
        self.notifier.stopping()
        for act in list(self.active.values()):
            act.stop_reason = "shutdown"
            if act.handle is not None:
                act.handle.cancel()
        for _, handle, _, _ in self._finishing.values():
            handle.cancel()
        threads = [a.thread for a in self.active.values() if a.thread is not None]
        threads += [t for _, _, t, _ in self._finishing.values()]
        deadline = time.monotonic() + 10
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.1))
        # Record the last checkpoints the transfers emitted while stopping.
        while True:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, SourceEvent):
                self._on_source_event(message)
        if self.torrents is not None:
            # Saving every torrent's resume data can take a while: tell systemd.
            self.notifier.extend_timeout(30_000_000)
            self.torrents.stop(timeout=20)
        LOG.info("stopped; %d transfer(s) will resume at the next start", len(self.active))

    # -- intake ------------------------------------------------------------------------------

    def _on_inbox_file(self, path: Path) -> None:
        try:
            data = read_manifest(path, self.config.inbox_max_manifest_size)
        except FileNotFoundError:
            return  # taken away before we got to it
        except UnreadableManifest as exc:
            self._reject(path, describe(exc))
            return
        except OSError as exc:
            LOG.error("cannot read %s: %s", path, exc)
            return
        try:
            result = self.intake(data, path.name, replace=False)
        except Exception as exc:
            self._reject(path, describe(exc))
            return
        LOG.info("%s: %s", path.name, result["message"], extra={"job": result["job"]})
        path.unlink(missing_ok=True)

    def _reject(self, path: Path, info: ErrorInfo) -> None:
        text = f"{info.message}\n\nWhat to do: {info.hint}\n(error code: {info.code})\n"
        try:
            reject_file(self.config.inbox, path.name, text)
        except (OSError, safepath.UnsafePath) as exc:
            LOG.error("cannot move rejected manifest %s: %s", path, exc)
            return
        LOG.error("rejected manifest %s: %s", path.name, info.message, extra={"code": info.code})
        self.store.add_event(
            "error", f"rejected manifest {path.name}: {info.message}", code=info.code
        )

    def intake(self, data: bytes, source_name: str, *, replace: bool) -> dict[str, Any]:
        """Validate a manifest and turn it into a job (or recognise it as known)."""
        manifest = parse_manifest(data, source_name)
        root = self.config.data_root
        dest = resolve_under(root, manifest.destination, "destination", source_name)
        for field, relative in manifest.relative_paths():
            resolve_under(dest, relative, field, source_name)
        digest = manifest_digest(manifest)
        existing = self.store.get_job(manifest.name)
        carried: dict[tuple[str, str], tuple[FileRow, dict[str, Any] | None]] = {}
        if existing is not None:
            if existing.manifest_digest == digest:
                return {"job": manifest.name, "created": False, "message": "already known"}
            totals = self.store.job_totals(manifest.name)
            if job_is_active(totals.counts, existing.finish) and not replace:
                raise JobConflict(
                    f"{source_name}: a different manifest for job '{manifest.name}' is"
                    " active; it was not replaced",
                    job=manifest.name,
                )
            carried = self._drop_job(manifest.name)
        suffix = ".json" if data.lstrip()[:1] == b"{" else ".toml"
        saved = self.manifests_dir / f"{manifest.name}{suffix}"
        saved.write_bytes(data)
        files = []
        for i, f in enumerate(manifest.files):
            spec = f.model_dump(mode="json")
            old, checkpoint = carried.get((f.path, _spec_key(spec)), (None, None))
            if old is not None and old.state == FileState.DONE:
                files.append(NewFile(i, f.path, f.size, spec, "done", old.bytes_done))
            elif old is not None:
                files.append(NewFile(i, f.path, f.size, spec, "queued", old.bytes_done, checkpoint))
            else:
                files.append(NewFile(i, f.path, f.size, spec))
        warnings = manifest.warnings()
        self.store.add_job(
            manifest.name,
            manifest=manifest.model_dump(mode="json"),
            manifest_digest=digest,
            manifest_path=str(saved),
            destination=str(dest.relative_to(root.resolve())),
            warnings=warnings,
            files=files,
            finish="pending" if manifest.has_job_steps else None,
        )
        verb = "replaced" if existing is not None else "added"
        self._event("info", f"job {verb}: {len(files)} file(s)", job_id=manifest.name)
        for w in warnings:
            self._event("warning", w, job_id=manifest.name)
        return {"job": manifest.name, "created": True, "message": f"job {verb}"}

    def _drop_job(
        self, job_id: str
    ) -> dict[tuple[str, str], tuple[FileRow, dict[str, Any] | None]]:
        """Stop a job's transfers and delete it; return its files and their checkpoints,
        so that a replacing manifest keeps what was already downloaded."""
        for act in [a for a in self.active.values() if a.job_id == job_id]:
            self._stop_active(act, "cancel")
            # The transfer must be off the file before a new job writes to the same path.
            if act.thread is not None:
                act.thread.join(15)
            self.active.pop(act.file_id, None)
        if job_id in self._finishing:
            _, handle, thread, _ = self._finishing.pop(job_id)
            handle.cancel()
            thread.join(15)
        rows: dict[tuple[str, str], tuple[FileRow, dict[str, Any] | None]] = {}
        offset = 0
        while batch := self.store.job_files(job_id, offset=offset):
            for row in batch:
                rows[(row.path, _spec_key(row.spec))] = (row, self.store.load_checkpoint(row.id))
            offset += len(batch)
        self.store.delete_job(job_id)
        return rows

    # -- disk guard and scheduling -----------------------------------------------------------

    def _check_disk(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_disk_check < 2.0:
            return
        self._last_disk_check = now
        try:
            total, free = self._disk_usage(self.config.data_root)
        except OSError as exc:
            LOG.error("cannot read free space of %s: %s", self.config.data_root, exc)
            return
        self._disk = DiskView(free, self.config.reserve_bytes(total))
        # Paused files come back only with some room above the reserve, so that a disk
        # that filled up (ENOSPC) does not flap between pausing and resuming.
        resume_at = self._disk.reserve + max(total // 100, 1 << 20)
        if free < self._disk.reserve:
            for act in list(self.active.values()):
                if act.stop_reason is None and act.kind in ("http", "torrent"):
                    self._event(
                        "warning",
                        f"pausing: free space {format_bytes(free)} is below the reserve"
                        f" {format_bytes(self._disk.reserve)}",
                        job_id=act.job_id,
                        file_id=act.file_id,
                    )
                    self._stop_active(act, "disk")
        elif free >= resume_at:
            for row in self.store.paused_because(DISK_WAIT):
                self.store.set_state(row.id, FileState.QUEUED, reason="space is back")
                self._event("info", "space is back; resuming", job_id=row.job_id, row=row)

    def _committed(self) -> int:
        return sum(max((a.size or 0) - a.bytes_done, 0) for a in self.active.values())

    def _schedule(self) -> None:
        if self._stopping:
            return
        slots = self.config.max_concurrent_files - len(self.active)
        if slots <= 0:
            return
        # Look a little past the free slots so files waiting for disk do not block
        # smaller ones behind them.
        rows = self.store.next_queued(time.time(), limit=slots + 32, skip=self.active)
        for row in rows:
            if slots <= 0:
                break
            if row.id in self.active:
                continue  # started just now with another file of its torrent
            wait = plan_start(row.size, row.bytes_done, self._committed(), self._disk)
            if wait is not None:
                if row.reason != wait:
                    self.store.set_reason(row.id, wait)
                    self._event("info", wait, job_id=row.job_id, row=row)
                continue
            self._start(row)
            slots -= 1

    def _start(self, row: FileRow) -> None:
        """Start a queued file the way its sources and its plan say."""
        job = self.store.get_job(row.job_id)
        if job is None:
            return
        spec = FileSpec.model_validate(row.spec)
        if row.digests is not None:
            # Fetched and verified before a stop: only what follows the fetch is left.
            if spec.unpack:
                self._start_steps(row, spec, verified=True)
                return
            if self._target(row).exists():
                self.store.set_state(row.id, FileState.DONE)
                return
            # Gone since (deleted by hand): fetch it again.
            self.store.forget_fetch(row.id)
            row = self.store.get_file(row.id)
        mirrors = list(spec.sources.mirrors)
        tspec = spec.sources.torrent if self.torrents is not None else None
        if tspec is None and not mirrors:
            why = self.torrents_down or "no source"
            self._fail(row, describe(NoUsableSource(f"{row.path}: {why}")))
            return
        planned = (row.plan or {}).get("source")
        if tspec is None:
            kind = "http"
        elif not mirrors:
            kind = "torrent"
        elif planned in ("http", "torrent", "both"):
            kind = planned
        else:
            self._start_choosing(row, spec, mirrors)
            return
        if kind == "http":
            self._start_http(row, spec, Manifest.model_validate(job.manifest), mirrors)
        else:
            self._start_torrent(row, spec, web_seeds=mirrors if kind == "both" else [])

    def _target(self, row: FileRow) -> Path:
        job = self.store.get_job(row.job_id)
        destination = job.destination if job is not None else row.job_id
        return self.config.data_root / destination / row.path

    def _track(self, row: FileRow, token: int, thread: threading.Thread, **fields: Any) -> Active:
        """The state thread's record of a file in flight (``fields``: the rest of Active,
        which by default has the row's size and progress)."""
        fields.setdefault("size", row.size)
        fields.setdefault("bytes_done", row.bytes_done)
        return Active(
            file_id=row.id, job_id=row.job_id, path=row.path, token=token, thread=thread, **fields
        )

    def _next_token(self) -> int:
        self._tokens += 1
        return self._tokens

    # -- HTTP ----------------------------------------------------------------------------------

    def _start_http(
        self, row: FileRow, spec: FileSpec, manifest: Manifest, mirrors: list[str]
    ) -> None:
        avoid = (row.error or {}).get("details", {}).get("url") if row.error else None
        target = self._target(row)
        request = FileRequest(
            urls=order_mirrors(mirrors, avoid),
            dest=target,
            size=spec.size,
            digests=spec.digests,
            resume=self.store.load_checkpoint(row.id),
        )
        http = self.config.http
        options = HttpOptions(
            connections=spec.connections or manifest.connections or http.connections_per_file,
            per_host_connections=http.per_host_connections,
            connect_timeout=http.connect_timeout,
            read_timeout=http.read_timeout,
            min_speed=http.min_speed,
            min_speed_window=http.min_speed_window,
            max_tries=http.max_tries,
            checkpoint_interval=http.checkpoint_interval,
            limiters=self._limiters(row.job_id, manifest.bandwidth_limit),
            host_slots=self.host_slots,
        )
        token = self._next_token()
        file_id = row.id

        def on_event(event: object) -> None:
            self.post(SourceEvent(file_id, token, event))

        download = HttpDownload(request, options, on_event)
        thread = threading.Thread(
            target=self._run_transfer,
            args=(download, row.id, token),
            name=f"http-{row.job_id}-{row.idx}",
            daemon=True,
        )
        source = "http" if len(mirrors) == 1 else f"http {len(mirrors)} mirrors"
        self.active[row.id] = self._track(
            row,
            token,
            thread,
            source=source,
            handle=download,
        )
        self.store.set_state(row.id, FileState.FETCHING, attempts=row.attempts + 1, source="http")
        self._event("info", f"fetching from {source}", job_id=row.job_id, row=row)
        thread.start()

    def _limiters(self, job_id: str, job_limit: int | None) -> tuple[RateLimiter, ...]:
        if not job_limit:
            return (self.limiter,)
        limiter = self._job_limiters.get(job_id)
        if limiter is None:
            limiter = self._job_limiters[job_id] = RateLimiter(job_limit)
        else:
            limiter.set_rate(job_limit)
        return (self.limiter, limiter)

    def _run_transfer(self, download: HttpDownload, file_id: int, token: int) -> None:
        try:
            result = download.run()
        except BaseException as exc:
            self.post(TransferEnded(file_id, token, None, exc))
        else:
            self.post(TransferEnded(file_id, token, result, None))

    def _on_source_event(self, message: SourceEvent) -> None:
        act = self.active.get(message.file_id)
        ev = message.event
        if act is None or act.token != message.token:
            if isinstance(ev, http_events.Checkpoint):
                # A stopped transfer's last word still counts: it proves data on disk.
                with contextlib.suppress(KeyError):
                    done = self.store.get_file(message.file_id).bytes_done
                    self.store.save_checkpoint(message.file_id, ev.state, done)
            return
        if isinstance(ev, http_events.Progress):
            self.metrics.observe_bytes("http", ev.done - act.bytes_done)
            act.bytes_done = ev.done
            act.rate = ev.rate
            used = [m for m in ev.mirrors if m.connections]
            act.detail = f"{ev.connections} conn" + (
                f", {len(used)} mirrors" if len(used) > 1 else ""
            )
        elif isinstance(ev, http_events.Checkpoint):
            self.store.save_checkpoint(act.file_id, ev.state, act.bytes_done)
        elif isinstance(ev, http_events.Retrying):
            self._event(
                "warning",
                f"retrying {ev.url} in {ev.delay:.1f}s (attempt {ev.attempt}): {ev.reason}",
                job_id=act.job_id,
                file_id=act.file_id,
            )
        elif isinstance(ev, http_events.MirrorDropped):
            self._event(
                "warning",
                f"dropped mirror {ev.url}: {ev.reason}",
                job_id=act.job_id,
                file_id=act.file_id,
                code=ev.code,
            )
        elif isinstance(ev, http_events.Restarted):
            act.bytes_done = 0
            self._event(
                "warning", f"starting over: {ev.reason}", job_id=act.job_id, file_id=act.file_id
            )

    # -- choosing between a swarm and mirrors ------------------------------------------------

    def _start_choosing(self, row: FileRow, spec: FileSpec, mirrors: list[str]) -> None:
        engine, tspec = self.torrents, spec.sources.torrent
        assert engine is not None and tspec is not None
        token = self._next_token()
        window = self.config.torrent.probe_window

        def work() -> None:
            try:
                decision = probe_and_choose(
                    engine, tspec, mirrors, window=window, single_file=tspec.file is None
                )
            except Exception as exc:
                decision = Decision("http", f"probing failed ({describe(exc).message}); chose http")
            self.post(SourceChosen(row.id, token, decision))

        thread = threading.Thread(target=work, name=f"choose-{row.job_id}-{row.idx}", daemon=True)
        self.active[row.id] = self._track(
            row,
            token,
            thread,
            source="choosing",
            kind="choosing",
            detail=f"watching the swarm for {window:.0f}s, measuring mirrors",
        )
        self.store.set_state(row.id, FileState.FETCHING, source="choosing")
        thread.start()

    def _on_source_chosen(self, message: SourceChosen) -> None:
        act = self.active.get(message.file_id)
        if act is None or act.token != message.token:
            return
        del self.active[message.file_id]
        row = self.store.get_file(message.file_id)
        if act.stop_reason is not None:
            self._stopped(row, act.stop_reason)
            return
        decision: Decision = message.decision
        self.store.set_plan(row.id, {"source": decision.source, "reason": decision.reason})
        self._event("info", f"source: {decision.reason}", job_id=row.job_id, row=row)
        self._start(self.store.get_file(row.id))

    # -- torrents --------------------------------------------------------------------------------

    def _start_torrent(self, row: FileRow, spec: FileSpec, web_seeds: list[str]) -> None:
        """Fetch ``row`` and every queued file of its job from the same torrent, as one
        torrent request."""
        engine, tspec = self.torrents, spec.sources.torrent
        assert engine is not None and tspec is not None
        key = torrent_key(row.job_id, tspec)
        if key in self._groups:
            return  # its torrent is already running for other files; it waits for them
        rows = [row]
        for other in self.store.files_in_state(FileState.QUEUED, job_id=row.job_id):
            ospec = FileSpec.model_validate(other.spec).sources.torrent
            free = other.id != row.id and other.id not in self.active
            if free and ospec is not None and same_torrent(ospec, tspec):
                rows.append(other)
        files: dict[str, Path] = {}
        digests: dict[str, dict[str, str]] = {}
        inner_of: dict[int, str] = {}
        for r in rows:
            s = FileSpec.model_validate(r.spec)
            inner = (s.sources.torrent.file if s.sources.torrent else None) or s.path
            inner_of[r.id] = inner
            files[inner] = self._target(r)
            files[inner].parent.mkdir(parents=True, exist_ok=True)
            if s.digests:
                digests[inner] = s.digests
        single = len(rows) == 1 and tspec.file is None
        request = TorrentRequest(
            key=key,
            source=torrent_source(tspec),
            save_dir=self._target(row).parent,
            files=files,
            web_seeds=tuple(web_seeds) if single else (),
            peers=peer_hints(tspec),
            digests=digests,
        )
        token = self._next_token()
        label = "torrent+web seed" if request.web_seeds else "torrent"

        def work() -> None:
            try:
                in_session = engine.keys()
                if key in in_session:
                    engine.resume(key)  # paused earlier: the session still has it
                else:
                    engine.add(request)
            except Exception as exc:
                for r in rows:
                    self.post(TransferEnded(r.id, token, None, exc))
            else:
                self.post(TorrentAdded(key, token))

        thread = threading.Thread(target=work, name=f"torrent-add-{key}", daemon=True)
        for r in rows:
            self.active[r.id] = self._track(
                r,
                token,
                thread,
                source=label,
                kind="torrent",
                torrent_key=key,
                inner=inner_of[r.id],
                detail="starting",
            )
            self.store.set_state(
                r.id, FileState.FETCHING, attempts=r.attempts + 1, source="torrent"
            )
        self._groups[key] = [r.id for r in rows]
        self._event("info", f"fetching from {label} ({len(rows)} file(s))", job_id=row.job_id)
        thread.start()

    def _on_torrent_added(self, message: TorrentAdded) -> None:
        acts = [self.active[f] for f in self._groups.get(message.key, []) if f in self.active]
        if acts and (acts[0].token != message.token or acts[0].stop_reason is None):
            return  # running as asked, or a newer start owns the torrent now
        # Stopped while the engine was still adding it: stop it there too.
        if self.torrents is not None:
            with contextlib.suppress(Exception):
                self.torrents.pause(message.key)

    def _stop_torrent(self, key: str, reason: str) -> None:
        """Stop every file of a torrent: pause keeps it in the session, cancel removes it;
        the data stays either way."""
        fids = self._groups.pop(key, [])
        if self.torrents is not None:
            with contextlib.suppress(Exception):
                if reason == "cancel":
                    self.torrents.remove(key)
                elif reason != "shutdown":
                    self.torrents.pause(key)
        for fid in fids:
            act = self.active.get(fid)
            if act is not None:
                act.stop_reason = act.stop_reason or reason
                self.post(
                    TransferEnded(fid, act.token, None, StoppedByDaemon(f"stopped: {reason}"))
                )

    def _on_torrent_event(self, ev: object) -> None:
        if isinstance(ev, tev.DhtStatus):
            self._dht_nodes = ev.nodes
            return
        if isinstance(ev, tev.ListenFailed):
            LOG.error(
                "torrent: cannot listen on %s:%d/%s: %s%s — run `acquirectl doctor`",
                ev.address,
                ev.port,
                ev.transport,
                ev.error,
                f" (held by {ev.holder})" if ev.holder else "",
            )
            return
        key = getattr(ev, "key", None)
        if key is None:
            return
        if key in self._seeding:
            self._on_seeding_event(key, ev)
            return
        acts = [self.active[f] for f in self._groups.get(key, []) if f in self.active]
        if not acts:
            return
        if isinstance(ev, tev.TorrentProgress):
            sizes = [a.size or 0 for a in acts]
            whole = sum(sizes)
            for a, size in zip(acts, sizes, strict=True):
                share = size / whole if whole else 1 / len(acts)
                self.metrics.observe_bytes("torrent", int(ev.done * share) - a.bytes_done)
                a.bytes_done = int(ev.done * share)
                a.rate = ev.rate * share
                a.detail = f"{ev.peers} peers, {ev.seeds} seeds"
        elif isinstance(ev, tev.MetadataWaiting):
            for a in acts:
                a.detail = (
                    f"waiting for metadata ({ev.elapsed:.0f}s, {ev.peers} peers,"
                    f" {ev.dht_nodes} DHT nodes)"
                )
        elif isinstance(ev, tev.TorrentFinished):
            del self._groups[key]
            self._seeding[key] = {"job": acts[0].job_id, "ratio": 0.0, "peers": 0, "upload": 0.0}
            for a in acts:
                del self.active[a.file_id]
                row = self.store.get_file(a.file_id)
                digests = ev.digests.get(a.inner or "", {}) or None
                self._fetched(row, digests, size=row.size or a.bytes_done)
        elif isinstance(ev, tev.TorrentFailed):
            info = describe(ev.error)
            del self._groups[key]
            if self.torrents is not None:
                with contextlib.suppress(Exception):
                    self.torrents.remove(key, delete_data=info.code == "verify.digest_mismatch")
            for a in acts:
                del self.active[a.file_id]
                self._attempt_failed(self.store.get_file(a.file_id), info, "torrent")
        elif isinstance(ev, tev.TorrentStalled):
            self._maybe_leave_torrent(key, acts, ev)

    def _maybe_leave_torrent(self, key: str, acts: list[Active], ev: tev.TorrentStalled) -> None:
        """A torrent with no data for the stall window falls back to the mirrors."""
        first = self.store.get_file(acts[0].file_id)
        mirrors = FileSpec.model_validate(first.spec).sources.mirrors
        decision = reevaluate(
            RunningState(
                current="torrent",
                torrent_available=True,
                mirrors=tuple(MirrorEvidence(url=m) for m in mirrors),
                swarm=SwarmEvidence(seeds=ev.seeds, peers=ev.peers),
                seconds_without_data=ev.seconds_without_data,
                stall_window=self.config.torrent.stall_window,
            )
        )
        if decision is None:
            self._event(
                "warning",
                f"torrent: no data for {ev.seconds_without_data:.0f}s ({ev.peers} peers,"
                f" {ev.seeds} seeds) and no mirror to fall back to; still waiting",
                job_id=acts[0].job_id,
            )
            return
        self._groups.pop(key, None)
        if self.torrents is not None:
            with contextlib.suppress(Exception):
                self.torrents.remove(key)
        for a in acts:
            del self.active[a.file_id]
            row = self.store.get_file(a.file_id)
            self._switch(row, decision)

    def _switch(self, row: FileRow, decision: Decision) -> None:
        self.store.set_plan(row.id, {"source": decision.source, "reason": decision.reason})
        self.store.set_state(row.id, FileState.QUEUED, reason=decision.reason)
        self._event("warning", f"switching source: {decision.reason}", job_id=row.job_id, row=row)

    def _on_seeding_event(self, key: str, ev: object) -> None:
        info = self._seeding[key]
        if isinstance(ev, tev.TorrentProgress):
            info.update(ratio=ev.ratio, peers=ev.peers, upload=ev.upload_rate)
        elif isinstance(ev, (tev.SeedingDone, tev.TorrentFailed)):
            del self._seeding[key]
            if self.torrents is not None:
                with contextlib.suppress(Exception):
                    self.torrents.remove(key)
            self._event(
                "info", f"stopped seeding {key} (ratio {info['ratio']:.2f})", job_id=info["job"]
            )

    # -- after the bytes: unpack steps ---------------------------------------------------------

    def _fetched(self, row: FileRow, digests: dict[str, str] | None, *, size: int) -> None:
        """A source delivered a verified file: run its unpack steps, or it is done."""
        self.store.clear_checkpoint(row.id)
        self.store.set_state(row.id, FileState.FETCHING, digests=digests or {}, bytes_done=size)
        spec = FileSpec.model_validate(row.spec)
        if spec.unpack:
            self._start_steps(self.store.get_file(row.id), spec, verified=True)
            return
        self.store.set_state(row.id, FileState.DONE)
        self._event("info", f"done ({format_bytes(size)}, verified)", job_id=row.job_id, row=row)
        self._maybe_finish(row.job_id)

    def _start_steps(
        self, row: FileRow, spec: FileSpec, *, verified: bool, place_from: Path | None = None
    ) -> None:
        """Run the file's unpack steps on a worker (first placing a watched copy of it)."""
        job = self.store.get_job(row.job_id)
        assert job is not None
        token = self._next_token()
        handle = _StepHandle()
        unpack = self.config.unpack
        steps = []
        for s in spec.unpack:
            own = s.limits
            limits = Limits(
                max_bytes=own.max_bytes if own and own.max_bytes else unpack.max_bytes,
                max_ratio=own.max_ratio if own and own.max_ratio else unpack.max_ratio,
                max_entries=own.max_entries if own and own.max_entries else unpack.max_entries,
                reserve=self._disk.reserve,
            )
            steps.append(
                UnpackStep(
                    format=s.format,
                    into=s.into,
                    nested=s.nested,
                    delete_archive=s.delete_archive or unpack.delete_archives,
                    limits=limits,
                )
            )
        path, job_root = self._target(row), self.config.data_root / job.destination

        def progress(label: str, done: int, total: int) -> None:
            self.post(StepProgress(row.id, token, label, done, total))

        def work() -> None:
            try:
                if place_from is not None:
                    progress("place", 0, 1)
                    _place(place_from, path, self.config.data_root)
                outcome = process_file(
                    path,
                    job_root=job_root,
                    data_root=self.config.data_root,
                    digests=spec.digests,
                    steps=steps,
                    verified=verified,
                    workers=unpack.workers or None,
                    progress=progress,
                    cancel=handle.event,
                )
            except BaseException as exc:
                self.post(TransferEnded(row.id, token, None, exc))
            else:
                self.post(TransferEnded(row.id, token, outcome, None))

        thread = threading.Thread(target=work, name=f"unpack-{row.job_id}-{row.idx}", daemon=True)
        self.active[row.id] = self._track(
            row,
            token,
            thread,
            size=None,
            bytes_done=0,
            source="unpack",
            kind="unpack",
            handle=handle,
            step="unpack",
        )
        self.store.set_state(row.id, FileState.UNPACKING)
        self._event("info", f"unpacking ({len(steps)} step(s))", job_id=row.job_id, row=row)
        thread.start()

    def _on_job_step_progress(self, message: JobStepProgress) -> None:
        current = self._finishing.get(message.job_id)
        if current is not None and current[0] == message.token:
            pct = f" {100 * message.done / message.total:.0f}%" if message.total else ""
            self._finishing[message.job_id] = (*current[:3], f"{message.label}{pct}")

    def _on_step_progress(self, message: StepProgress) -> None:
        act = self.active.get(message.file_id)
        if act is None or act.token != message.token:
            return
        act.step = message.label
        act.bytes_done, act.size = message.done, message.total
        pct = f" {100 * message.done / message.total:.0f}%" if message.total else ""
        act.detail = f"{message.label}{pct}"

    # -- completed files in watched folders ---------------------------------------------------

    def _on_watched_file(self, path: Path) -> None:
        if path in self._matching:
            return
        candidates = [
            Candidate(
                key=str(r.id),
                name=Path(r.path).name,
                size=r.size,
                digests=FileSpec.model_validate(r.spec).digests,
            )
            for r in self.store.unfinished_named(path.name)
        ]
        if not candidates:
            return
        self._matching.add(path)

        def work() -> None:
            # Hashing a large file takes a while: not on the state thread.
            started = time.monotonic()
            try:
                match = match_completed(path, candidates)
            except Exception as exc:
                self.post(WatchedMatch(path, None, exc))
            else:
                self.metrics.observe_verify(time.monotonic() - started)
                self.post(WatchedMatch(path, int(match.key) if match else None, None))

        threading.Thread(target=work, name=f"match-{path.name}", daemon=True).start()

    def _on_watched_match(self, message: WatchedMatch) -> None:
        self._matching.discard(message.path)
        if message.error is not None:
            info = describe(message.error)
            LOG.warning(
                "watched file %s not used: %s",
                message.path,
                info.message,
                extra={"code": info.code},
            )
            self.store.add_event(
                "warning", f"watched file {message.path} not used: {info.message}", code=info.code
            )
            return
        if message.file_id is None:
            return
        try:
            row = self.store.get_file(message.file_id)
        except KeyError:
            return
        if row.state in (FileState.DONE, FileState.CANCELLED, FileState.UNPACKING):
            return
        act = self.active.get(row.id)
        if act is not None:
            if act.kind in ("http", "torrent", "choosing") and act.stop_reason is None:
                # The copy replaces the transfer; it is placed once the transfer stopped.
                self._watched_for[row.id] = message.path
                self._stop_active(act, "watched")
            return
        self._place_watched(row, message.path)

    def _place_watched(self, row: FileRow, path: Path) -> None:
        spec = FileSpec.model_validate(row.spec)
        size = path.stat().st_size
        self.store.clear_checkpoint(row.id)
        self.store.set_state(
            row.id, FileState.FETCHING, digests=spec.digests, source="watched", bytes_done=size
        )
        self._event("info", f"found a completed copy: {path}", job_id=row.job_id, row=row)
        self._start_steps(self.store.get_file(row.id), spec, verified=True, place_from=path)

    # -- a job's own steps, once every file is done -----------------------------------------

    def _maybe_finish(self, job_id: str) -> None:
        """Start the job's own steps if it has some and every file is done."""
        job = self.store.get_job(job_id)
        if job is None or job.finish != "pending" or job_id in self._finishing:
            return
        counts = self.store.job_totals(job_id).counts
        if set(counts) != {FileState.DONE}:
            return
        manifest = Manifest.model_validate(job.manifest)
        job_root = self.config.data_root / job.destination
        layouts: list[ImagenetValStep | FrameworkStep] = []
        for lay in manifest.layout:
            if isinstance(lay, FrameworkLayout):
                layouts.append(
                    FrameworkStep(
                        framework=lay.framework,
                        dataset=lay.dataset,
                        root=str(job_root / lay.root),
                        file=lay.file,
                        into=lay.into,
                        mode=lay.mode,
                        check=lay.check,
                        replace=lay.replace,
                    )
                )
            else:
                layouts.append(ImagenetValStep(**lay.model_dump(exclude={"kind"})))
        checksums = [ChecksumFileStep(**c.model_dump()) for c in manifest.checksums]
        listings = [ListingStep(**li.model_dump()) for li in manifest.listing]
        token = self._next_token()
        handle = _StepHandle()
        workers = self.config.unpack.workers or None

        def progress(label: str, done: int, total: int) -> None:
            self.post(JobStepProgress(job_id, token, label, done, total))

        pip = manifest.pip

        def work() -> None:
            try:
                if pip is not None:
                    progress(f"pip download into {pip.target}", 0, 1)
                    # Rank the indexes on a project the job needs: a private index may
                    # not carry pip itself.
                    project = re.split(r"[^A-Za-z0-9._-]", pip.requirements[0], maxsplit=1)[0]
                    prefetch_wheels(
                        pip.requirements, job_root / pip.target, pip.index_urls, project=project
                    )
                finish_job(
                    job_root,
                    checksums=checksums,
                    layouts=layouts,
                    listings=listings,
                    workers=workers,
                    progress=progress,
                    cancel=handle.event,
                )
            except BaseException as exc:
                self.post(JobStepsEnded(job_id, token, exc))
            else:
                self.post(JobStepsEnded(job_id, token, None))

        thread = threading.Thread(target=work, name=f"finish-{job_id}", daemon=True)
        self._finishing[job_id] = (token, handle, thread, "starting")
        self.store.set_finish(job_id, "running")
        self._event("info", "all files done; running the job's own steps", job_id=job_id)
        thread.start()

    def _on_job_steps_ended(self, message: JobStepsEnded) -> None:
        current = self._finishing.get(message.job_id)
        if current is None or current[0] != message.token:
            return
        del self._finishing[message.job_id]
        if message.error is None:
            self.store.set_finish(message.job_id, "done")
            self._event("info", "done (job steps)", job_id=message.job_id)
            return
        info = describe(message.error)
        if self._stopping or info.code == "unpack.cancelled":
            self.store.set_finish(message.job_id, "pending")
            return
        self.store.set_finish(message.job_id, "failed", info.as_dict())
        self._event(
            "error",
            f"job steps failed: {info.message} — {info.hint}",
            job_id=message.job_id,
            code=info.code,
        )

    # -- the end of a transfer or step --------------------------------------------------------

    def _on_transfer_ended(self, message: TransferEnded) -> None:
        act = self.active.get(message.file_id)
        if act is None or act.token != message.token:
            return
        del self.active[message.file_id]
        if act.torrent_key is not None:
            group = self._groups.get(act.torrent_key)
            if group is not None and message.file_id in group:
                group.remove(message.file_id)
                if not group:
                    del self._groups[act.torrent_key]
        try:
            row = self.store.get_file(message.file_id)
        except KeyError:
            return  # its job was replaced or removed meanwhile
        if message.error is None:
            if act.kind == "unpack":
                self.metrics.observe_extract(time.monotonic() - act.started)
                self.store.set_state(row.id, FileState.DONE)
                self._event("info", "done (unpacked)", job_id=row.job_id, row=row)
                self._maybe_finish(row.job_id)
            else:
                digests = getattr(message.result, "digests", None)
                size = int(getattr(message.result, "size", act.bytes_done))
                # The bytes that arrived after the last progress report.
                self.metrics.observe_bytes(act.kind, size - act.bytes_done)
                self._fetched(row, digests, size=size)
            return
        if act.stop_reason is not None:
            self._stopped(row, act.stop_reason)
            return
        self._attempt_failed(row, describe(message.error), act.kind)

    def _stopped(self, row: FileRow, reason: str) -> None:
        if reason == "shutdown":
            return  # stays in flight in the store; the next start resumes it
        if reason == "watched":
            path = self._watched_for.pop(row.id, None)
            if path is not None:
                self._place_watched(row, path)
            else:  # another file of the same torrent: it goes back to the queue
                self.store.set_state(row.id, FileState.QUEUED, reason="torrent restarted")
            return
        if reason == "pause":
            self.store.set_state(row.id, FileState.PAUSED, reason="paused by user")
        elif reason == "cancel":
            self.store.set_state(row.id, FileState.CANCELLED, reason="cancelled by user")
        elif reason == "disk":
            self.store.set_state(row.id, FileState.PAUSED, reason=f"{DISK_WAIT}: below the reserve")
            self._event("warning", f"paused: {DISK_WAIT}", job_id=row.job_id, row=row)

    def _attempt_failed(self, row: FileRow, info: ErrorInfo, kind: str) -> None:
        """What follows a failed attempt: pause for disk, switch source, retry, or fail."""
        if info.code == "disk.full":
            self.store.set_state(row.id, FileState.PAUSED, reason=f"{DISK_WAIT}: {info.message}")
            self._event("warning", f"paused: {DISK_WAIT}", job_id=row.job_id, row=row)
            return
        mismatch = info.code == "verify.digest_mismatch"
        if mismatch:
            self.store.clear_checkpoint(row.id)
        spec = FileSpec.model_validate(row.spec)
        retry = (info.retryable or mismatch) and row.attempts < MAX_ATTEMPTS
        # Switching counts as an attempt too, so two broken sources cannot take turns forever.
        switchable = kind in ("torrent", "http") and row.attempts < MAX_ATTEMPTS
        if switchable and self.torrents is not None and spec.sources.torrent:
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
                self._switch(row, decision)
                return
        if kind == "unpack":
            retry = False  # an archive that cannot be extracted will not improve by waiting
        if retry:
            delay = retry_delay(row.attempts)
            self.store.set_state(
                row.id,
                FileState.QUEUED,
                reason=f"retrying in {delay:.0f}s after: {info.message}",
                error=info.as_dict(),
                not_before=time.time() + delay,
            )
            self._event(
                "warning",
                f"{info.message}; retrying in {delay:.0f}s",
                job_id=row.job_id,
                row=row,
                code=info.code,
            )
            return
        self._fail(row, info)

    def _fail(self, row: FileRow, info: ErrorInfo) -> None:
        self.metrics.failure(info.code)
        drop_empty_part(self.config.data_root, self._target(row))
        self.store.set_state(row.id, FileState.FAILED, reason=info.message, error=info.as_dict())
        self._event(
            "error",
            f"failed: {info.message} — {info.hint}",
            job_id=row.job_id,
            row=row,
            code=info.code,
        )

    def _stop_active(self, act: Active, reason: str) -> None:
        if act.torrent_key is not None and act.kind == "torrent":
            self._stop_torrent(act.torrent_key, reason)
            return
        act.stop_reason = reason
        if act.handle is not None:
            act.handle.cancel()

    # -- control requests ---------------------------------------------------------------------

    def _on_request(self, payload: dict[str, Any]) -> dict[str, Any]:
        cmd = payload["cmd"]
        try:
            if cmd == "status":
                return {"ok": True, "result": self.snapshot()}
            if cmd == "show":
                return {"ok": True, "result": self.show(str(payload.get("job", "")))}
            if cmd == "add":
                text = str(payload.get("text", "")).encode()
                name = str(payload.get("name") or "manifest.toml")
                replace = bool(payload.get("replace"))
                return {"ok": True, "result": self.intake(text, name, replace=replace)}
            if cmd in ("pause", "resume", "cancel", "retry"):
                return {"ok": True, "result": self.command(cmd, str(payload.get("job", "")))}
            if cmd == "forget":
                return {"ok": True, "result": forget_job(self, payload)}
            if cmd == "doctor":
                return {"ok": True, "result": self.doctor()}
            if cmd == "test-hang" and self._test_faults:
                LOG.warning("test fault: the state thread stops responding")
                while True:
                    time.sleep(3600)
            raise UnknownCommand(f"unknown command '{cmd}'")
        except (DaemonError, ManifestError) as exc:
            return _error_reply(describe(exc))

    def command(self, cmd: str, job_id: str) -> dict[str, Any]:
        if self.store.get_job(job_id) is None:
            raise UnknownJob(f"no job named '{job_id}'", job=job_id)
        changed = 0
        for state in FileState:
            new = after_command(cmd, state)
            if new is None:
                continue
            for row in self.store.files_in_state(state, job_id=job_id):
                act = self.active.get(row.id)
                if act is not None:
                    # The transfer reports when it has stopped; its state is set then.
                    if act.stop_reason is None:
                        self._stop_active(act, "pause" if cmd == "pause" else "cancel")
                else:
                    reason = {"pause": "paused by user", "cancel": "cancelled by user"}.get(cmd)
                    attempts = 0 if cmd == "retry" else None
                    self.store.set_state(row.id, new, reason=reason, attempts=attempts)
                changed += 1
        job = self.store.get_job(job_id)
        if cmd == "retry" and job is not None and job.finish == "failed":
            self.store.set_finish(job_id, "pending")
            self._maybe_finish(job_id)
            changed += 1
        self._event("info", f"{cmd}: {changed} file(s)", job_id=job_id)
        return {"job": job_id, "files": changed}

    def doctor(self) -> dict[str, Any]:
        """Findings about the torrent engine, for `acquirectl doctor`."""
        if self.torrents is None:
            finding = {
                "severity": "error",
                "title": "the torrent engine is not running",
                "detail": self.torrents_down or "",
                "fix": "See the daemon's log for why it did not start; check [torrent] settings.",
            }
            return {"findings": [finding], "session": None}
        return {
            "findings": [dataclasses.asdict(f) for f in self.torrents.doctor()],
            "session": self.torrents.session_status(),
        }

    def snapshot(self) -> dict[str, Any]:
        """The status snapshot described in docs/architecture.md."""
        jobs = []
        for job in self.store.list_jobs():
            totals = self.store.job_totals(job.id)
            mine = [a for a in self.active.values() if a.job_id == job.id]
            fetching = [a for a in mine if a.kind in ("http", "torrent")]
            speed = sum(a.rate for a in fetching)
            done_bytes = totals.bytes_done + sum(
                a.bytes_done - self._stored_done(a) for a in fetching
            )
            remaining = (
                (totals.bytes_total - done_bytes) if totals.bytes_total is not None else None
            )
            jobs.append(
                {
                    "id": job.id,
                    "state": job_state(totals.counts, job.finish),
                    "files_total": totals.files_total,
                    "files_done": totals.counts.get(FileState.DONE, 0),
                    "bytes_total": totals.bytes_total,
                    "bytes_done": done_bytes,
                    "speed": speed,
                    "eta": remaining / speed if remaining is not None and speed > 0 else None,
                    "source": ", ".join(sorted({a.source for a in mine})) or None,
                    "reason": self._job_reason(job.id, totals.counts),
                    "warnings": job.warnings,
                }
            )
        counts = self.store.state_counts()
        return {
            "daemon": {
                "version": VERSION,
                "pid": os.getpid(),
                "uptime": time.monotonic() - self._started,
                "data_root": str(self.config.data_root),
                "disk_free": self._disk.free,
                "disk_reserve": self._disk.reserve,
                "dht_nodes": self._dht_nodes,
            },
            "counts": {
                "active": len(self.active),
                "queued": counts.get(FileState.QUEUED, 0),
                "done": counts.get(FileState.DONE, 0),
                "failed": counts.get(FileState.FAILED, 0),
                "paused": counts.get(FileState.PAUSED, 0),
            },
            "jobs": jobs,
            "active": [self._active_view(a) for a in self.active.values()]
            + [
                {
                    "job": job_id,
                    "file": "(job steps)",
                    "state": "finishing",
                    "bytes_total": None,
                    "bytes_done": 0,
                    "speed": 0.0,
                    "eta": None,
                    "source": "unpack",
                    "detail": detail,
                    "step": detail,
                }
                for job_id, (_, _, _, detail) in self._finishing.items()
            ],
            "seeding": [{"key": k, **v} for k, v in self._seeding.items()],
            "events": self.store.recent_events(limit=10),
        }

    def _active_view(self, a: Active) -> dict[str, Any]:
        state = {"unpack": "unpacking", "verify": "verifying"}.get(a.kind, "fetching")
        return {
            "job": a.job_id,
            "file": a.path,
            "state": state,
            "bytes_total": a.size,
            "bytes_done": a.bytes_done,
            "speed": a.rate,
            "eta": (a.size - a.bytes_done) / a.rate if a.size and a.rate > 0 else None,
            "source": a.source,
            "detail": a.detail,
            "step": a.step,
        }

    def _stored_done(self, act: Active) -> int:
        try:
            return self.store.get_file(act.file_id).bytes_done
        except KeyError:
            return 0

    def _job_reason(self, job_id: str, counts: dict[str, int]) -> str | None:
        """The most useful one-line reason for a job that is not moving."""
        if counts.get(FileState.FETCHING) or counts.get(FileState.UNPACKING):
            return None
        for state in (FileState.QUEUED, FileState.PAUSED, FileState.FAILED):
            if counts.get(state) and (reason := self.store.first_reason(job_id, state)):
                return reason
        return None

    def show(self, job_id: str) -> dict[str, Any]:
        job = self.store.get_job(job_id)
        if job is None:
            raise UnknownJob(f"no job named '{job_id}'", job=job_id)
        totals = self.store.job_totals(job_id)
        files = []
        for row in self.store.job_files(job_id):
            act = self.active.get(row.id)
            files.append(
                {
                    "path": row.path,
                    "state": row.state,
                    "size": row.size,
                    "bytes_done": act.bytes_done if act else row.bytes_done,
                    "speed": act.rate if act else 0.0,
                    "attempts": row.attempts,
                    "source": act.source if act else row.source,
                    "detail": act.detail if act else None,
                    "plan": row.plan,
                    "reason": row.reason,
                    "error": row.error,
                    "digests": row.digests,
                }
            )
        return {
            "id": job.id,
            "state": job_state(totals.counts, job.finish),
            "job_steps": {"state": job.finish, "error": job.finish_error},
            "destination": str(self.config.data_root / job.destination),
            "manifest": job.manifest_path,
            "warnings": job.warnings,
            "files_total": totals.files_total,
            "files": files,
            "events": self.store.recent_events(limit=30, job_id=job_id),
        }

    # -- status, config, events ----------------------------------------------------------------

    def _publish_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < 2.0:
            return
        self._last_status = now
        snapshot = self.snapshot()
        self.metrics.update_from_snapshot(snapshot)
        self.notifier.status(format_status(snapshot))

    def _apply_config(self, new: Config) -> None:
        old = self.config
        for name in ("data_root", "inbox", "state_dir", "runtime_dir"):
            if getattr(old, name) != getattr(new, name):
                LOG.warning(
                    "%s changed in the configuration; it takes effect at the next start", name
                )
                setattr(new, name, getattr(old, name))
        self.config = new
        self.limiter.set_rate(new.bandwidth_limit or None)
        self.host_slots.set_cap(new.http.per_host_connections)
        if new.metrics.listen != old.metrics.listen:
            try:
                self.metrics.restart(new.metrics.listen)
            except Exception as exc:
                info = describe(exc)
                LOG.error("metrics endpoint: %s", info.message, extra={"code": info.code})
        if self.torrents is not None:
            self.torrents.set_rate_limits(new.bandwidth_limit, 0)
        logging.getLogger("acquired").setLevel(new.log_level.upper())
        self._check_disk(force=True)
        self._event("info", "configuration reloaded")

    def _event(
        self,
        level: str,
        message: str,
        *,
        job_id: str | None = None,
        file_id: int | None = None,
        row: FileRow | None = None,
        code: str | None = None,
    ) -> None:
        """One line per state change and per error: in the log and in the store."""
        message = redact_text(message)
        path = None
        if row is not None:
            file_id, path = row.id, row.path
        elif file_id is not None and (act := self.active.get(file_id)) is not None:
            path = act.path
        extra = {"job": job_id, "file": path, "code": code}
        prefix = f"[{job_id}{'/' + path if path else ''}] " if job_id else ""
        LOG.log(logging.getLevelName(level.upper()), "%s%s", prefix, message, extra=extra)
        self.store.add_event(level, message, job_id=job_id, file_id=file_id, code=code)


def _spec_key(spec: dict[str, Any]) -> str:
    """What must match for a file's progress to carry over to a replacing manifest."""
    digests = {k: spec.get(k) for k in ("sha256", "sha1", "md5", "blake2b") if spec.get(k)}
    return repr((spec.get("size"), sorted(digests.items())))


def _error_reply(info: ErrorInfo) -> dict[str, Any]:
    return {"ok": False, "error": info.as_dict()}


def _place(source: Path, target: Path, root: Path) -> None:
    """Put a watched copy at ``target`` atomically: a hard link where the filesystem
    allows it (no bytes copied), else a copy flushed to disk first; never through a link
    below ``root``."""
    safepath.place_copy(source, root, safepath.relative_to(root, target))


def _disk_usage(path: Path) -> tuple[int, int]:
    usage = shutil.disk_usage(path)
    return usage.total, usage.free

"""The state thread: it owns the store and every job and file state.

Everything else — the inbox watcher, transfer threads, the control server — talks to it
by posting messages on its queue. Decisions that need no I/O live in pure functions
(``states``, ``plan_start``, ``retry_delay``) so tests call them directly.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from acquired.daemon.config import Config
from acquired.daemon.errors import DaemonError, ErrorInfo, describe
from acquired.daemon.manifest import (
    FileSpec,
    Manifest,
    ManifestError,
    manifest_digest,
    parse_manifest,
    resolve_under,
)
from acquired.daemon.notify import Notifier, format_status
from acquired.daemon.states import (
    FileState,
    after_command,
    job_is_active,
    job_state,
)
from acquired.daemon.store import FileRow, NewFile, Store
from acquired.sources.http import FileRequest, HttpDownload, HttpOptions
from acquired.sources.http import events as http_events
from acquired.sources.http.ratelimit import RateLimiter

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
        "Torrent sources are not supported by this version yet; add an HTTP mirror "
        "(sources.mirrors) to the file."
    )


# -- messages -----------------------------------------------------------------------------


class Reply:
    """A slot the state thread fills for a waiting control-server thread."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: dict[str, Any] = {}

    def set(self, value: dict[str, Any]) -> None:
        self._value = value
        self._done.set()

    def wait(self, timeout: float) -> dict[str, Any] | None:
        return self._value if self._done.wait(timeout) else None


@dataclass(frozen=True)
class Request:
    payload: dict[str, Any]
    reply: Reply


@dataclass(frozen=True)
class InboxFile:
    path: Path


@dataclass(frozen=True)
class SourceEvent:
    file_id: int
    token: int
    event: object


@dataclass(frozen=True)
class TransferEnded:
    file_id: int
    token: int
    result: object | None
    error: BaseException | None


@dataclass(frozen=True)
class Reload:
    config: Config


@dataclass(frozen=True)
class Stop:
    pass


Message = Request | InboxFile | SourceEvent | TransferEnded | Reload | Stop


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
        return f"{DISK_WAIT}: free {fmt_bytes(disk.free)} is below the reserve"
    return f"{DISK_WAIT}: need {fmt_bytes(need)}, free {fmt_bytes(have)} above the reserve"


def retry_delay(attempt: int, *, base: float = 5.0, cap: float = 600.0) -> float:
    """Back-off before a file's next attempt: exponential with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))


def order_mirrors(mirrors: list[str], avoid: str | None) -> list[str]:
    """Put the mirror that served bad data last, keeping the manifest order otherwise."""
    if avoid not in mirrors:
        return list(mirrors)
    return [m for m in mirrors if m != avoid] + [avoid] if avoid else list(mirrors)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# -- the service --------------------------------------------------------------------------


@dataclass
class Active:
    """A transfer or step in flight, as the state thread sees it."""

    file_id: int
    job_id: str
    path: str
    token: int
    size: int | None
    handle: HttpDownload | None
    thread: threading.Thread
    source: str
    bytes_done: int = 0
    rate: float = 0.0
    detail: str = ""
    stop_reason: str | None = None  # why we asked it to stop: pause, cancel, disk, shutdown
    started: float = field(default_factory=time.monotonic)


class Service:
    """The daemon's state thread. ``run()`` blocks until ``stop()``."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        notifier: Notifier | None = None,
        disk_usage: Callable[[Path], tuple[int, int]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier or Notifier()
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
        self._check_disk(force=True)
        while True:
            self.notifier.watchdog()
            try:
                message = self.queue.get(timeout=TICK)
            except queue.Empty:
                message = None
            if isinstance(message, Stop):
                break
            if message is not None:
                self._handle(message)
                # Drain what else is waiting before scheduling: progress events come in
                # bursts and need no scheduling decision each.
                while not self._stopping:
                    try:
                        nxt = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(nxt, Stop):
                        self._shutdown()
                        return
                    self._handle(nxt)
            self._check_disk()
            self._schedule()
            self._publish_status()
        self._shutdown()

    def _handle(self, message: Message) -> None:
        try:
            if isinstance(message, SourceEvent):
                self._on_source_event(message)
            elif isinstance(message, TransferEnded):
                self._on_transfer_ended(message)
            elif isinstance(message, InboxFile):
                self._on_inbox_file(message.path)
            elif isinstance(message, Request):
                message.reply.set(self._on_request(message.payload))
            elif isinstance(message, Reload):
                self._apply_config(message.config)
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
        deadline = time.monotonic() + 10
        for act in list(self.active.values()):
            act.thread.join(max(deadline - time.monotonic(), 0.1))
        # Record the last checkpoints the transfers emitted while stopping.
        while True:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, SourceEvent):
                self._on_source_event(message)
        LOG.info("stopped; %d transfer(s) will resume at the next start", len(self.active))

    # -- intake ------------------------------------------------------------------------------

    def _on_inbox_file(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return  # taken away before we got to it
        except OSError as exc:
            LOG.error("cannot read %s: %s", path, exc)
            return
        try:
            result = self.intake(data, path.name, replace=False)
        except Exception as exc:
            info = describe(exc)
            self._reject(path, info)
            return
        LOG.info("%s: %s", path.name, result["message"], extra={"job": result["job"]})
        path.unlink(missing_ok=True)

    def _reject(self, path: Path, info: ErrorInfo) -> None:
        rejected = self.config.inbox / "rejected"
        rejected.mkdir(parents=True, exist_ok=True)
        target = rejected / path.name
        try:
            os.replace(path, target)
        except OSError as exc:
            LOG.error("cannot move rejected manifest %s: %s", path, exc)
            return
        text = f"{info.message}\n\nWhat to do: {info.hint}\n(error code: {info.code})\n"
        (rejected / f"{path.name}.error.txt").write_text(text)
        LOG.error("rejected manifest %s: %s", path.name, info.message, extra={"code": info.code})
        self.store.add_event(
            "error", f"rejected manifest {path.name}: {info.message}", code=info.code
        )

    def intake(self, data: bytes, source_name: str, *, replace: bool) -> dict[str, Any]:
        """Validate a manifest and turn it into a job (or recognise it as known)."""
        manifest = parse_manifest(data, source_name)
        root = self.config.data_root
        dest = resolve_under(root, manifest.destination, "destination", source_name)
        for i, f in enumerate(manifest.files):
            resolve_under(dest, f.path, f"files[{i}].path", source_name)
            for j, step in enumerate(f.unpack):
                resolve_under(dest, step.into, f"files[{i}].unpack[{j}].into", source_name)
        if manifest.pip is not None:
            resolve_under(dest, manifest.pip.target, "pip.target", source_name)
        digest = manifest_digest(manifest)
        existing = self.store.get_job(manifest.name)
        carried: dict[tuple[str, str], tuple[FileRow, dict[str, Any] | None]] = {}
        if existing is not None:
            if existing.manifest_digest == digest:
                return {"job": manifest.name, "created": False, "message": "already known"}
            totals = self.store.job_totals(manifest.name)
            if job_is_active(totals.counts) and not replace:
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
            destination=str(dest.relative_to(root.resolve()) if dest.is_absolute() else dest),
            warnings=warnings,
            files=files,
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
            act.thread.join(15)
            self.active.pop(act.file_id, None)
        rows: dict[tuple[str, str], tuple[FileRow, dict[str, Any] | None]] = {}
        offset = 0
        while batch := self.store.job_files(job_id, offset=offset):
            for row in batch:
                rows[(row.path, _spec_key(row.spec))] = (row, self.store.load_checkpoint(row.id))
            offset += len(batch)
        self.store.delete_job(job_id)
        return rows

    # -- scheduling --------------------------------------------------------------------------

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
                if act.stop_reason is None and act.handle is not None:
                    self._event(
                        "warning",
                        f"pausing: free space {fmt_bytes(free)} is below the reserve"
                        f" {fmt_bytes(self._disk.reserve)}",
                        job_id=act.job_id,
                        file_id=act.file_id,
                    )
                    self._stop_active(act, "disk")
        elif free >= resume_at:
            for row in self.store.files_in_state(FileState.PAUSED):
                if row.reason and row.reason.startswith(DISK_WAIT):
                    self.store.set_state(row.id, FileState.QUEUED, reason="space is back")
                    self._event(
                        "info", "space is back; resuming", job_id=row.job_id, file_id=row.id
                    )

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
            wait = plan_start(row.size, row.bytes_done, self._committed(), self._disk)
            if wait is not None:
                if row.reason != wait:
                    self.store.set_reason(row.id, wait)
                    self._event("info", wait, job_id=row.job_id, file_id=row.id, path=row.path)
                continue
            self._start(row)
            slots -= 1

    def _start(self, row: FileRow) -> None:
        job = self.store.get_job(row.job_id)
        if job is None:
            return
        spec = FileSpec.model_validate(row.spec)
        mirrors = list(spec.sources.mirrors)
        if not mirrors:
            self._fail(row, describe(NoUsableSource(f"{row.path}: no HTTP mirror to fetch from")))
            return
        if spec.sources.torrent is not None and row.attempts == 0:
            self._event(
                "info",
                "torrent source not yet supported; using the HTTP mirrors",
                job_id=row.job_id,
                file_id=row.id,
            )
        avoid = (row.error or {}).get("details", {}).get("url") if row.error else None
        manifest = Manifest.model_validate(job.manifest)
        target = self.config.data_root / job.destination / row.path
        target.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = self.store.load_checkpoint(row.id)
        request = FileRequest(
            urls=order_mirrors(mirrors, avoid),
            dest=target,
            size=spec.size,
            digests=spec.digests,
            resume=checkpoint,
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
        )
        self._tokens += 1
        token = self._tokens
        download = HttpDownload(
            request,
            options,
            lambda ev, fid=row.id, tok=token: self.post(SourceEvent(fid, tok, ev)),
        )
        thread = threading.Thread(
            target=self._run_transfer,
            args=(download, row.id, token),
            name=f"http-{row.job_id}-{row.idx}",
            daemon=True,
        )
        source = "http" if len(mirrors) == 1 else f"http {len(mirrors)} mirrors"
        self.active[row.id] = Active(
            file_id=row.id,
            job_id=row.job_id,
            path=row.path,
            token=token,
            size=row.size,
            handle=download,
            thread=thread,
            source=source,
            bytes_done=row.bytes_done,
        )
        self.store.set_state(row.id, FileState.FETCHING, attempts=row.attempts + 1, source="http")
        self._event(
            "info", f"fetching from {source}", job_id=row.job_id, file_id=row.id, path=row.path
        )
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

    def _stop_active(self, act: Active, reason: str) -> None:
        act.stop_reason = reason
        if act.handle is not None:
            act.handle.cancel()

    # -- source events -------------------------------------------------------------------------

    def _on_source_event(self, message: SourceEvent) -> None:
        act = self.active.get(message.file_id)
        if act is None or act.token != message.token:
            if isinstance(message.event, http_events.Checkpoint):
                # A stopped transfer's last word still counts: it proves data on disk.
                self.store.save_checkpoint(message.file_id, message.event.state, 0)
            return
        ev = message.event
        if isinstance(ev, http_events.Progress):
            act.bytes_done = ev.done
            act.rate = ev.rate
            act.detail = f"{ev.connections} conn"
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

    def _on_transfer_ended(self, message: TransferEnded) -> None:
        act = self.active.get(message.file_id)
        if act is None or act.token != message.token:
            return
        del self.active[message.file_id]
        try:
            row = self.store.get_file(message.file_id)
        except KeyError:
            return  # its job was replaced or removed meanwhile
        if message.error is None:
            digests = getattr(message.result, "digests", None)
            size = getattr(message.result, "size", act.bytes_done)
            self.store.clear_checkpoint(row.id)
            self.store.set_state(row.id, FileState.DONE, digests=digests, bytes_done=size)
            self._event(
                "info", f"done ({fmt_bytes(size)}, verified)", job_id=row.job_id, file_id=row.id
            )
            return
        info = describe(message.error)
        if act.stop_reason == "shutdown":
            return  # stays in flight in the store; the next start resumes it
        if act.stop_reason == "pause":
            self.store.set_state(row.id, FileState.PAUSED, reason="paused by user")
            return
        if act.stop_reason == "cancel":
            self.store.set_state(row.id, FileState.CANCELLED, reason="cancelled by user")
            return
        if act.stop_reason == "disk" or info.code == "disk.full":
            reason = f"{DISK_WAIT}: {info.message}" if info.code == "disk.full" else None
            self.store.set_state(
                row.id, FileState.PAUSED, reason=reason or f"{DISK_WAIT}: below the reserve"
            )
            self._event(
                "warning", f"paused: {DISK_WAIT}", job_id=row.job_id, file_id=row.id, path=row.path
            )
            return
        if info.code == "verify.digest_mismatch":
            self.store.clear_checkpoint(row.id)
        if (
            info.retryable or info.code == "verify.digest_mismatch"
        ) and row.attempts < MAX_ATTEMPTS:
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
                file_id=row.id,
                code=info.code,
            )
            return
        self._fail(row, info)

    def _fail(self, row: FileRow, info: ErrorInfo) -> None:
        self.store.set_state(row.id, FileState.FAILED, reason=info.message, error=info.as_dict())
        self._event(
            "error",
            f"failed: {info.message} — {info.hint}",
            job_id=row.job_id,
            file_id=row.id,
            code=info.code,
        )

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
                return {
                    "ok": True,
                    "result": self.intake(text, name, replace=bool(payload.get("replace"))),
                }
            if cmd in ("pause", "resume", "cancel", "retry"):
                return {"ok": True, "result": self.command(cmd, str(payload.get("job", "")))}
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
                    # The transfer thread reports when it has stopped; its state is set then.
                    self._stop_active(act, "pause" if cmd == "pause" else "cancel")
                else:
                    reason = {"pause": "paused by user", "cancel": "cancelled by user"}.get(cmd)
                    self.store.set_state(
                        row.id, new, reason=reason, attempts=0 if cmd == "retry" else None
                    )
                changed += 1
        self._event("info", f"{cmd}: {changed} file(s)", job_id=job_id)
        return {"job": job_id, "files": changed}

    def snapshot(self) -> dict[str, Any]:
        """The status snapshot described in docs/architecture.md."""
        jobs = []
        for job in self.store.list_jobs():
            totals = self.store.job_totals(job.id)
            mine = [a for a in self.active.values() if a.job_id == job.id]
            speed = sum(a.rate for a in mine)
            done_bytes = (
                totals.bytes_done
                + sum(a.bytes_done for a in mine)
                - sum(self._stored_done(a) for a in mine)
            )
            remaining = (
                (totals.bytes_total - done_bytes) if totals.bytes_total is not None else None
            )
            reasons = self._job_reason(job.id, totals.counts)
            jobs.append(
                {
                    "id": job.id,
                    "state": job_state(totals.counts),
                    "files_total": totals.files_total,
                    "files_done": totals.counts.get(FileState.DONE, 0),
                    "bytes_total": totals.bytes_total,
                    "bytes_done": done_bytes,
                    "speed": speed,
                    "eta": remaining / speed if remaining is not None and speed > 0 else None,
                    "source": ", ".join(sorted({a.source for a in mine})) or None,
                    "reason": reasons,
                    "warnings": job.warnings,
                }
            )
        active = [
            {
                "job": a.job_id,
                "file": a.path,
                "state": "fetching",
                "bytes_total": a.size,
                "bytes_done": a.bytes_done,
                "speed": a.rate,
                "eta": (a.size - a.bytes_done) / a.rate if a.size and a.rate > 0 else None,
                "source": a.source,
                "detail": a.detail,
                "step": None,
            }
            for a in self.active.values()
        ]
        counts = self.store.state_counts()
        return {
            "daemon": {
                "version": VERSION,
                "pid": os.getpid(),
                "uptime": time.monotonic() - self._started,
                "data_root": str(self.config.data_root),
                "disk_free": self._disk.free,
                "disk_reserve": self._disk.reserve,
                "dht_nodes": None,
            },
            "counts": {
                "active": len(self.active),
                "queued": counts.get(FileState.QUEUED, 0),
                "done": counts.get(FileState.DONE, 0),
                "failed": counts.get(FileState.FAILED, 0),
                "paused": counts.get(FileState.PAUSED, 0),
            },
            "jobs": jobs,
            "active": active,
            "events": self.store.recent_events(limit=10),
        }

    def _stored_done(self, act: Active) -> int:
        try:
            return self.store.get_file(act.file_id).bytes_done
        except KeyError:
            return 0

    def _job_reason(self, job_id: str, counts: dict[str, int]) -> str | None:
        """The most useful one-line reason for a job that is not moving."""
        if counts.get(FileState.FETCHING):
            return None
        for state in (FileState.QUEUED, FileState.PAUSED, FileState.FAILED):
            if counts.get(state):
                rows = self.store.files_in_state(state, job_id=job_id)
                for row in rows:
                    if row.reason:
                        return row.reason
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
                    "reason": row.reason,
                    "error": row.error,
                    "digests": row.digests,
                }
            )
        return {
            "id": job.id,
            "state": job_state(totals.counts),
            "destination": str(self.config.data_root / job.destination),
            "manifest": job.manifest_path,
            "warnings": job.warnings,
            "files_total": totals.files_total,
            "files": files,
            "events": self.store.recent_events(limit=30, job_id=job_id),
        }

    # -- status, config ------------------------------------------------------------------------

    def _publish_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < 2.0 or not self.notifier.enabled:
            return
        self._last_status = now
        self.notifier.status(format_status(self.snapshot()))

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
        code: str | None = None,
        path: str | None = None,
    ) -> None:
        """One line per state change and per error: in the log and in the store."""
        if path is None and file_id is not None:
            act = self.active.get(file_id)
            path = act.path if act else None
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


def _disk_usage(path: Path) -> tuple[int, int]:
    usage = shutil.disk_usage(path)
    return usage.total, usage.free

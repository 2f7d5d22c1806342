"""The state thread: the loop, the queue and the store.

Everything else — the inbox and watched-folder watchers, the runners (HTTP transfers,
torrents, unpack and job steps, watched-file matching), the intake worker, the control
server — talks to the state thread by posting messages on its queue
(``acquired.daemon.messages``). Every change of a file's state goes through ``move``,
which asks the lifecycle table (``acquired.daemon.lifecycle.decide``). The work of the
state thread is split by responsibility: ``Scheduler`` (slots and the disk guard), a
``JobKind`` per kind of job (``kinds/``: the planner that starts a file), ``TorrentFlow``,
``Outcomes`` (ends, retries, failures), ``JobSteps``, ``Views`` (status, show, commands)
and the ``IntakeDesk``. Each tick is guarded: one bad file or job fails alone.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from acquired.common.redact import redact_text
from acquired.daemon.batchlane import SmallLane
from acquired.daemon.config import Config
from acquired.daemon.errors import DaemonError, describe
from acquired.daemon.intake import IntakeDesk, IntakeWorker
from acquired.daemon.jobcache import ManifestCache
from acquired.daemon.jobsteps import JobSteps
from acquired.daemon.kinds import JobKind
from acquired.daemon.kinds.files import FilesKind
from acquired.daemon.kinds.urllist import UrllistKind
from acquired.daemon.lifecycle import (
    STRICT,
    Effect,
    Event,
    FileState,
    InvalidTransition,
    Move,
    decide,
)
from acquired.daemon.manifest import FileSpec
from acquired.daemon.messages import (
    Active,
    BatchEnded,
    InboxFile,
    IntakeParsed,
    JobStepProgress,
    JobStepsEnded,
    ManifestLoaded,
    Message,
    Reload,
    Reply,
    Request,
    SourceEvent,
    Stop,
    TorrentAdded,
    TorrentEvent,
    TransferEnded,
    WatchedFile,
    WatchedMatch,
)
from acquired.daemon.metrics import Metrics
from acquired.daemon.notify import Notifier, format_status
from acquired.daemon.outcomes import Outcomes
from acquired.daemon.runners import WorkerPool
from acquired.daemon.runners.batch import BatchRunner
from acquired.daemon.runners.http import HttpRunner
from acquired.daemon.runners.steps import StepsRunner
from acquired.daemon.runners.torrent import TorrentRunner
from acquired.daemon.runners.watched import WatchedRunner
from acquired.daemon.scheduler import SMALL_LANE, Scheduler
from acquired.daemon.store import FileRow, Store
from acquired.daemon.torrentflow import TorrentFlow
from acquired.daemon.torrents import restore_seeding
from acquired.daemon.views import VERSION, Views, error_reply
from acquired.sources.http.hostslots import HostSlots
from acquired.sources.http.ratelimit import RateLimiter
from acquired.sources.torrent import TorrentEngine

__all__ = ["VERSION", "Service"]

LOG = logging.getLogger("acquired.service")
TICK = 0.5  # seconds: the longest the state thread sleeps; it pings the watchdog each tick
BATCH = 0.05  # seconds of messages handled before the next scheduling pass

Waitable = threading.Thread | Future[None]


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
        self.disk_usage = disk_usage or _disk_usage
        self.queue: queue.Queue[Message] = queue.Queue()
        self.active: dict[int, Active] = {}
        self._tokens = 0
        self.started = time.monotonic()
        self.stopping = False
        self._last_status = 0.0
        self.manifests_dir = config.state_dir / "manifests"
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        self.test_faults = os.environ.get("ACQUIRED_TEST_FAULTS") == "1"
        # One bucket for all transfers, one per job that sets its own limit.
        self.limiter = RateLimiter(config.bandwidth_limit or None)
        # Connections per host, counted over every file being fetched at once.
        self.host_slots = HostSlots(config.http.per_host_connections)
        self.torrents: TorrentEngine | None = None
        self.torrents_down: str | None = "the torrent engine was not started"
        # The runners (they post back; they never touch the store) ...
        self.pool = WorkerPool(config.max_concurrent_files + SMALL_LANE, "http")
        self.http_runner = HttpRunner(self.post, self.pool)
        self.batch_runner = BatchRunner(self.post)
        self.torrent_runner = TorrentRunner(self.post)
        self.steps_runner = StepsRunner(self.post)
        self.watched_runner = WatchedRunner(self.post, self.metrics.observe_verify)
        # ... and the parts of the state thread's work.
        self.manifests = ManifestCache(self.post)
        self.intake = IntakeWorker(
            config.data_root, self.manifests_dir, self.post, config.inbox_max_manifest_size
        )
        self.scheduler = Scheduler(self)
        self.files = FilesKind(self)
        self.batches = SmallLane(self)
        self.urllist = UrllistKind(self)
        self.kinds: dict[str, JobKind] = {self.files.name: self.files, "urllist": self.urllist}
        self.torrent = TorrentFlow(self)
        self.outcomes = Outcomes(self)
        self.jobsteps = JobSteps(self)
        self.views = Views(self)
        self.desk = IntakeDesk(
            store,
            self.manifests_dir,
            drop_job=self.scheduler.drop_job,
            accepted=self.manifests.put,
            complete=self.jobsteps.maybe_finish,
            event=self.event,
        )
        # What the state thread does with each kind of message.
        self._handlers: dict[type, Callable[[Any], None]] = {
            TorrentEvent: lambda m: self.torrent.on_torrent_event(m.event),
            TransferEnded: self.outcomes.on_transfer_ended,
            BatchEnded: self.batches.on_batch_ended,
            TorrentAdded: self.torrent.on_torrent_added,
            JobStepProgress: self.jobsteps.on_job_step_progress,
            JobStepsEnded: self.jobsteps.on_job_steps_ended,
            InboxFile: lambda m: self.intake.submit(None, m.path.name, inbox_path=m.path),
            IntakeParsed: self._on_intake_parsed,
            WatchedFile: lambda m: self.outcomes.on_watched_file(m.path),
            WatchedMatch: self.outcomes.on_watched_match,
            Request: self._on_request_message,
            Reload: lambda m: self._apply_config(m.config),
            ManifestLoaded: self._on_manifest_loaded,
        }
        for kind in self.kinds.values():
            self._handlers.update(kind.handlers())

    def attach_torrents(self, engine: TorrentEngine | None, why_not: str | None = None) -> None:
        """Use ``engine`` for torrent sources (None: torrents are unavailable, ``why_not``)."""
        self.torrents = engine
        self.torrents_down = why_not if engine is None else None
        self.torrent.seeding.update(restore_seeding(engine, self.store))

    def post(self, message: Message) -> None:
        """Put a message on the state thread's queue (any thread may call this)."""
        self.queue.put(message)

    def call(self, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Run a control request on the state thread and wait for its reply."""
        if payload.get("cmd") == "ping":
            return {"ok": True, "result": {"pid": os.getpid(), "version": VERSION}}
        reply = Reply()
        self.post(Request(payload, reply))
        value = reply.wait(timeout)
        if value is None:
            return error_reply(describe(DaemonError("the daemon did not answer in time")))
        return value

    def stop(self) -> None:
        """Ask the state thread to stop (``run`` returns once transfers are stopped)."""
        self.post(Stop())

    def run(self) -> None:
        """The state thread's loop: messages, then the guarded ticks; until ``stop()``."""
        n = self.store.requeue_interrupted()
        if n:
            self.event("info", f"resuming {n} file(s) interrupted by the last stop")
        for job in self.store.incomplete_jobs():
            # Stopped while its files went into the store: take its manifest in again
            # (what is in keeps its progress, as with a replacement).
            self.event("info", "taking the manifest in again", job_id=job.id)
            self.intake.submit(Path(job.manifest_path), job.manifest_path, replace=True)
        for job in self.store.list_jobs():
            if job.finish == "pending":
                self._guarded("finish", self.jobsteps.maybe_finish, job.id)
        self._guarded("disk", self.scheduler.check_disk, force=True)
        while True:
            self.notifier.watchdog()
            try:
                # While a job's files go into the store, do not sleep between chunks.
                if self.desk.filling:
                    message: Message | None = self.queue.get_nowait()
                else:
                    message = self.queue.get(timeout=TICK)
            except queue.Empty:
                message = None
            with self.store.batch():
                stop = self._turn(message)
            if stop:
                self._shutdown()
                return

    def _turn(self, message: Message | None) -> bool:
        """One turn of the loop, in one store transaction; True when asked to stop."""
        # Handle what is waiting before scheduling (progress events come in bursts and
        # need no scheduling decision each), but not so long that freed slots wait.
        until = time.monotonic() + BATCH
        while message is not None:
            if isinstance(message, Stop):
                return True
            self._handle(message)
            if time.monotonic() > until:
                break
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                message = None
        # Each tick is guarded on its own, as gunicorn guards its arbiter loop: a bug
        # in one of them is logged and the loop, the watchdog pings and the other jobs
        # go on.
        self._guarded("intake", self.desk.tick)
        self._guarded("disk", self.scheduler.check_disk)
        self._guarded("schedule", self.scheduler.schedule)
        self._guarded("bulk", self.files.flush_bulk)
        self._guarded("status", self._publish_status)
        return False

    def _guarded(self, what: str, tick: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            tick(*args, **kwargs)
        except Exception:
            LOG.exception("internal error in the %s tick; the daemon goes on", what)

    def _handle(self, message: Message) -> None:
        try:
            self._handlers[type(message)](message)
        except Exception:
            # The state thread must survive any single bad message; the bug is logged.
            LOG.exception("internal error while handling %s", type(message).__name__)
            if isinstance(message, Request):
                message.reply.set(error_reply(describe(RuntimeError("internal error"))))

    def _shutdown(self) -> None:
        """Stop every transfer, keeping its progress; the next start resumes them."""
        self.stopping = True
        self.notifier.stopping()
        for act in list(self.active.values()):
            act.stop_reason = "shutdown"
            if act.handle is not None:
                act.handle.cancel()
        for _, handle, _, _ in self.jobsteps.finishing.values():
            handle.cancel()
        waits = [a.thread for a in self.active.values() if a.thread is not None]
        waits += [t for _, _, t, _ in self.jobsteps.finishing.values()]
        waits += self.urllist.shutdown()
        small = self.batch_runner.shutdown()
        if small is not None:
            waits.append(small)
        deadline = time.monotonic() + 10
        for w in waits:
            left = max(deadline - time.monotonic(), 0.1)
            if isinstance(w, Future):
                futures.wait([w], timeout=left)
            elif w is not threading.current_thread():
                w.join(left)
        self.pool.shutdown()
        # Record the last checkpoints the transfers emitted while stopping.
        while True:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, SourceEvent):
                self.files.on_source_event(message)
        if self.torrents is not None:
            # Saving every torrent's resume data can take a while: tell systemd.
            self.notifier.extend_timeout(30_000_000)
            self.torrents.stop(timeout=20)
        LOG.info("stopped; %d transfer(s) will resume at the next start", len(self.active))

    def _on_intake_parsed(self, parsed: IntakeParsed) -> None:
        """A manifest prepared by the intake worker: make it a job, or say why not."""
        try:
            result = self.desk.accept(parsed)
        except Exception as exc:
            if parsed.inbox_path is not None:
                self.desk.reject(parsed.inbox_path, exc, self.config.inbox)
            if parsed.reply is not None:
                parsed.reply.set(error_reply(describe(exc)))
            return
        if parsed.inbox_path is not None:
            LOG.info(
                "%s: %s", parsed.inbox_path.name, result["message"], extra={"job": result["job"]}
            )
            parsed.inbox_path.unlink(missing_ok=True)
        if parsed.reply is not None:
            parsed.reply.set({"ok": True, "result": result})

    def spec(self, row: FileRow) -> FileSpec:
        """A file's spec, from its job's parsed manifest."""
        job = self.store.get_job(row.job_id)
        if job is None:
            raise KeyError(row.job_id)
        return self.manifests.spec(job, row.idx)

    def spec_if_loaded(self, row: FileRow) -> FileSpec | None:
        """A file's spec if its job's manifest is loaded, else None (a load starts)."""
        job = self.store.get_job(row.job_id)
        manifest = self.manifests.get(job) if job is not None else None
        return manifest.files[row.idx] if manifest is not None else None

    def _on_manifest_loaded(self, message: ManifestLoaded) -> None:
        self.manifests.loaded(message)
        self.jobsteps.maybe_finish(message.job_id)

    def target(self, row: FileRow) -> Path:
        """Where a file goes: under its job's destination in the data root."""
        job = self.store.get_job(row.job_id)
        destination = job.destination if job is not None else row.job_id
        return self.config.data_root / destination / row.path

    def track(self, row: FileRow, token: int, thread: Waitable, **fields: Any) -> Active:
        """The state thread's record of a file in flight (``fields``: the rest of Active,
        which by default has the row's size and progress)."""
        fields.setdefault("size", row.size)
        fields.setdefault("bytes_done", row.bytes_done)
        return Active(
            file_id=row.id, job_id=row.job_id, path=row.path, token=token, thread=thread, **fields
        )

    def next_token(self) -> int:
        """A new token: a runner's messages carry it, so late words of a stopped
        transfer are told from the current one."""
        self._tokens += 1
        return self._tokens

    def move(
        self,
        file_id: int,
        event: Event,
        *,
        say: tuple[str, str] | None = None,
        **fields: Any,
    ) -> Move | None:
        """The one way a file's state changes: ``decide`` on its stored state, write the
        new state with ``fields``, log ``say``, carry out the bookkeeping effects.

        A move the table does not have is a bug: it is logged with the file and the file
        fails with ``internal.invalid_transition`` (None is returned); the daemon goes on.
        """
        row = self.store.get_file(file_id)
        try:
            move = decide(row.state, event)
        except InvalidTransition as exc:
            if STRICT:
                raise
            info = describe(exc)
            LOG.error(
                "[%s/%s] %s",
                row.job_id,
                row.path,
                exc,
                extra={"job": row.job_id, "code": info.code},
            )
            self.store.set_state(
                row.id, FileState.FAILED, reason=info.message, error=info.as_dict()
            )
            self.store.add_event(
                "error", str(exc), job_id=row.job_id, file_id=row.id, code=info.code
            )
            return None
        if Effect.COUNT_ATTEMPT in move.effects:
            fields["attempts"] = row.attempts + 1
        if Effect.RESET_ATTEMPTS in move.effects:
            fields["attempts"] = 0
        if Effect.CLEAR_CHECKPOINT in move.effects:
            self.store.clear_checkpoint(row.id)
        self.store.set_state(row.id, move.state, **fields)
        if say is not None:
            self.event(say[0], say[1], job_id=row.job_id, row=row)
        if Effect.CHECK_JOB in move.effects:
            self.jobsteps.check(row.job_id)
        return move

    def stop_active(self, act: Active, reason: str) -> None:
        """Ask a file's transfer or step to stop; its end says ``reason``."""
        if act.torrent_key is not None and act.kind == "torrent":
            self.torrent.stop_torrent(act.torrent_key, reason)
            return
        act.stop_reason = reason
        if act.handle is not None:
            act.handle.cancel()

    def _on_request_message(self, message: Request) -> None:
        payload = message.payload
        if payload.get("cmd") == "add":
            # Parsed on the intake worker; the reply is set once the job is made.
            self.intake.submit(
                str(payload.get("text", "")).encode(),
                str(payload.get("name") or "manifest.toml"),
                replace=bool(payload.get("replace")),
                reply=message.reply,
            )
            return
        self.views.reply(payload, message.reply)

    def _publish_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < 2.0:
            return
        self._last_status = now
        snapshot = self.views.snapshot()
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
        self.pool.resize(new.max_concurrent_files + SMALL_LANE)
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
        self.scheduler.check_disk(force=True)
        self.event("info", "configuration reloaded")

    def event(
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


def _disk_usage(path: Path) -> tuple[int, int]:
    usage = shutil.disk_usage(path)
    return usage.total, usage.free

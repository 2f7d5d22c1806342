"""The files job kind: how a file of a manifest is started (its planner), and what its
HTTP transfers and unpack steps report back. The runners do the work."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from acquired.daemon.errors import DaemonError, describe
from acquired.daemon.lifecycle import Event
from acquired.daemon.manifest import FileSpec
from acquired.daemon.messages import SourceChosen, SourceEvent, StepProgress
from acquired.daemon.outcomes import ordinal
from acquired.daemon.scheduler import is_small, order_mirrors
from acquired.daemon.store import FileRow, JobRow
from acquired.daemon.units import format_bytes
from acquired.sources.choice import Decision
from acquired.sources.http import FileRequest, HttpOptions
from acquired.sources.http import events as http_events
from acquired.sources.http.ratelimit import RateLimiter
from acquired.unpack import Limits, UnpackStep

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")


class NoUsableSource(DaemonError):
    """A file whose only source is a torrent while the torrent engine is down."""

    code = "source.none_usable"
    hint = (
        "The file's only source is a torrent and the torrent engine is not running "
        "(see the daemon's log and `acquirectl doctor`); add an HTTP mirror or fix the engine."
    )


# Seconds between the job-level events that sum up small files done.
BULK_EVERY = 10.0


class FilesKind:
    """Jobs of files listed in a manifest (``kind = 'files'``)."""

    name = "files"

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.job_limiters: dict[str, RateLimiter] = {}
        # Small files done per job since the last job-level event: [count, bytes, since].
        self.bulk: dict[str, list[float]] = {}

    def flush_bulk(self, *, every: float = BULK_EVERY) -> None:
        """One event per job for the small files done lately, instead of one per file."""
        now = time.monotonic()
        for job_id, (count, size, since) in list(self.bulk.items()):
            if now - since >= every:
                del self.bulk[job_id]
                self.svc.event(
                    "info",
                    f"{count:.0f} small file(s) done ({format_bytes(int(size))}, verified)"
                    f" in the last {now - since:.0f} s",
                    job_id=job_id,
                )

    def handlers(self) -> dict[type, Any]:
        """The messages this kind's runners post, and who handles them."""
        return {
            SourceEvent: self.on_source_event,
            SourceChosen: self.on_source_chosen,
            StepProgress: self.on_step_progress,
        }

    def start(self, row: FileRow, event: Event = Event.START) -> None:
        """Start a queued file the way its sources and its plan say (``event``: CHOSEN
        once a probe chose the source of a file that is already fetching)."""
        job = self.svc.store.get_job(row.job_id)
        if job is None:
            return
        spec = self.svc.manifests.spec(job, row.idx)
        if row.digests is not None:
            # Fetched and verified before a stop: only what follows the fetch is left.
            if spec.unpack:
                self.start_steps(row, spec, Event.KEPT_UNPACK)
                return
            if self.svc.target(row).exists():
                self.svc.move(row.id, Event.KEPT)
                return
            # Gone since (deleted by hand): fetch it again.
            self.svc.store.forget_fetch(row.id)
            row = self.svc.store.get_file(row.id)
        mirrors = list(spec.sources.mirrors)
        tspec = spec.sources.torrent if self.svc.torrents is not None else None
        if tspec is None and not mirrors:
            why = self.svc.torrents_down or "no source"
            self.svc.outcomes.fail(row, describe(NoUsableSource(f"{row.path}: {why}")))
            return
        planned = (row.plan or {}).get("source")
        if tspec is None:
            kind = "http"
        elif not mirrors:
            kind = "torrent"
        elif planned in ("http", "torrent", "both"):
            kind = planned
        else:
            self.start_choosing(row, spec, mirrors)
            return
        if kind == "http":
            self.start_http(row, spec, job, mirrors, event)
        else:
            self.svc.torrent.start_torrent(
                row, spec, event, web_seeds=mirrors if kind == "both" else []
            )

    def start_http(
        self, row: FileRow, spec: FileSpec, job: JobRow, mirrors: list[str], event: Event
    ) -> None:
        """Fetch the file from its mirrors on the HTTP runner."""
        avoid = (row.error or {}).get("details", {}).get("url") if row.error else None
        target = self.svc.target(row)
        request = FileRequest(
            urls=order_mirrors(mirrors, avoid),
            dest=target,
            root=self.svc.config.data_root,
            size=spec.size,
            digests=spec.digests,
            resume=self.svc.store.load_checkpoint(row.id),
        )
        http = self.svc.config.http
        options = HttpOptions(
            connections=spec.connections or job.connections or http.connections_per_file,
            per_host_connections=http.per_host_connections,
            connect_timeout=http.connect_timeout,
            read_timeout=http.read_timeout,
            min_speed=http.min_speed,
            min_speed_window=http.min_speed_window,
            max_tries=http.max_tries,
            checkpoint_interval=http.checkpoint_interval,
            limiters=self.limiters(row.job_id, job.bandwidth_limit),
            host_slots=self.svc.host_slots,
        )
        token = self.svc.next_token()
        source = "http" if len(mirrors) == 1 else f"http {len(mirrors)} mirrors"
        if self.svc.batches.start(row, request, options, token=token, event=event, source=source):
            return  # a small file: fetched with many others on the small-file runner
        # The last error stays shown while the file is tried again (and tells a repeated
        # checksum mismatch from a new one).
        if self.svc.move(row.id, event, source="http", error=row.error) is None:
            return
        download, future = self.svc.http_runner.start(row.id, token, request, options)
        self.svc.active[row.id] = self.svc.track(row, token, future, source=source, handle=download)
        if not is_small(row.size):  # small files are summed up per job (flush_bulk)
            self.svc.event("info", f"fetching from {source}", job_id=row.job_id, row=row)

    def limiters(self, job_id: str, job_limit: int | None) -> tuple[RateLimiter, ...]:
        """The rate limiters of a transfer: the daemon's, and the job's if it sets one."""
        if not job_limit:
            return (self.svc.limiter,)
        limiter = self.job_limiters.get(job_id)
        if limiter is None:
            limiter = self.job_limiters[job_id] = RateLimiter(job_limit)
        else:
            limiter.set_rate(job_limit)
        return (self.svc.limiter, limiter)

    def on_source_event(self, message: SourceEvent) -> None:
        """Progress, checkpoints, retries and dropped mirrors of an HTTP transfer."""
        act = self.svc.active.get(message.file_id)
        ev = message.event
        if act is None or act.token != message.token:
            if isinstance(ev, http_events.Checkpoint):
                # A stopped transfer's last word still counts: it proves data on disk.
                with contextlib.suppress(KeyError):
                    done = self.svc.store.get_file(message.file_id).bytes_done
                    self.svc.store.save_checkpoint(message.file_id, ev.state, done)
            return
        if isinstance(ev, http_events.Progress):
            self.svc.metrics.observe_bytes("http", ev.done - act.bytes_done)
            act.bytes_done = ev.done
            act.rate = ev.rate
            used = [m for m in ev.mirrors if m.connections]
            act.detail = f"{ev.connections} conn" + (
                f", {len(used)} mirrors" if len(used) > 1 else ""
            )
        elif isinstance(ev, http_events.Checkpoint):
            self.svc.store.save_checkpoint(act.file_id, ev.state, act.bytes_done)
        elif isinstance(ev, http_events.Retrying):
            # The host only: a URL may carry a token.
            host = urlsplit(ev.url).hostname or "the mirror"
            act.detail = (
                f"retrying {host} in {ev.delay:.0f} s: {ev.reason} ({ordinal(ev.attempt)} try)"
            )
            self.svc.event("warning", act.detail, job_id=act.job_id, file_id=act.file_id)
        elif isinstance(ev, http_events.MirrorDropped):
            self.svc.event(
                "warning",
                f"dropped mirror {ev.url}: {ev.reason}",
                job_id=act.job_id,
                file_id=act.file_id,
                code=ev.code,
            )
        elif isinstance(ev, http_events.Restarted):
            act.bytes_done = 0
            self.svc.event(
                "warning", f"starting over: {ev.reason}", job_id=act.job_id, file_id=act.file_id
            )

    def start_choosing(self, row: FileRow, spec: FileSpec, mirrors: list[str]) -> None:
        """Probe the swarm and the mirrors of a file that has both."""
        engine, tspec = self.svc.torrents, spec.sources.torrent
        assert engine is not None and tspec is not None
        token = self.svc.next_token()
        window = self.svc.config.torrent.probe_window

        if self.svc.move(row.id, Event.PROBE, source="choosing") is None:
            return
        thread = self.svc.torrent_runner.probe(
            engine, row.id, token, tspec, mirrors=mirrors, window=window
        )
        self.svc.active[row.id] = self.svc.track(
            row,
            token,
            thread,
            source="choosing",
            kind="choosing",
            detail=f"watching the swarm for {window:.0f}s, measuring mirrors",
        )

    def on_source_chosen(self, message: SourceChosen) -> None:
        """The probe chose a source: record the plan and start the transfer."""
        act = self.svc.active.get(message.file_id)
        if act is None or act.token != message.token:
            return
        del self.svc.active[message.file_id]
        row = self.svc.store.get_file(message.file_id)
        if act.stop_reason is not None:
            self.svc.outcomes.stopped(row, act.stop_reason)
            return
        decision: Decision = message.decision
        self.svc.store.set_plan(row.id, {"source": decision.source, "reason": decision.reason})
        self.svc.event("info", f"source: {decision.reason}", job_id=row.job_id, row=row)
        self.start(self.svc.store.get_file(row.id), Event.CHOSEN)

    def fetched(self, row: FileRow, digests: dict[str, str] | None, *, size: int) -> None:
        """A source delivered a verified file: run its unpack steps, or it is done."""
        spec = self.svc.spec(row)
        fields: dict[str, Any] = {"digests": digests or {}, "bytes_done": size}
        if spec.unpack:
            self.start_steps(row, spec, Event.FETCHED_UNPACK, **fields)
            return
        if is_small(row.size):
            counts = self.bulk.setdefault(row.job_id, [0, 0, time.monotonic()])
            counts[0] += 1
            counts[1] += size
            self.svc.move(row.id, Event.FETCHED, **fields)
            return
        note = f"done ({format_bytes(size)}, verified)"
        self.svc.move(row.id, Event.FETCHED, say=("info", note), **fields)

    def start_steps(
        self,
        row: FileRow,
        spec: FileSpec,
        event: Event,
        *,
        place_from: Path | None = None,
        **fields: Any,
    ) -> None:
        """Run the file's unpack steps on a worker (first placing a watched copy of it);
        ``event`` is what moves the file into unpacking, ``fields`` go with the move."""
        job = self.svc.store.get_job(row.job_id)
        assert job is not None
        token = self.svc.next_token()
        unpack = self.svc.config.unpack
        steps = []
        for s in spec.unpack:
            own = s.limits
            limits = Limits(
                max_bytes=own.max_bytes if own and own.max_bytes else unpack.max_bytes,
                max_ratio=own.max_ratio if own and own.max_ratio else unpack.max_ratio,
                max_entries=own.max_entries if own and own.max_entries else unpack.max_entries,
                reserve=self.svc.scheduler.disk.reserve,
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
        path, job_root = self.svc.target(row), self.svc.config.data_root / job.destination

        if self.svc.move(row.id, event, **fields) is None:
            return
        handle, thread = self.svc.steps_runner.unpack(
            row.id,
            token,
            path,
            job_root=job_root,
            data_root=self.svc.config.data_root,
            digests=spec.digests,
            steps=steps,
            workers=unpack.workers or None,
            place_from=place_from,
        )
        self.svc.active[row.id] = self.svc.track(
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
        self.svc.event("info", f"unpacking ({len(steps)} step(s))", job_id=row.job_id, row=row)

    def on_step_progress(self, message: StepProgress) -> None:
        """Record what a file's unpack steps are doing, for status."""
        act = self.svc.active.get(message.file_id)
        if act is None or act.token != message.token:
            return
        act.step = message.label
        act.bytes_done, act.size = message.done, message.total
        pct = f" {100 * message.done / message.total:.0f}%" if message.total else ""
        act.detail = f"{message.label}{pct}"

    def place_watched(self, row: FileRow, path: Path) -> None:
        """Use a completed copy found in a watched folder instead of fetching."""
        spec = self.svc.spec(row)
        size = path.stat().st_size
        self.svc.event("info", f"found a completed copy: {path}", job_id=row.job_id, row=row)
        self.start_steps(
            row,
            spec,
            Event.WATCHED,
            place_from=path,
            digests=spec.digests,
            source="watched",
            bytes_done=size,
        )

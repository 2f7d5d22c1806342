"""Torrents on the state thread: files of one torrent start and end together; events of
the engine move them; finished torrents seed."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acquired.daemon.errors import DaemonError, describe
from acquired.daemon.lifecycle import Event, FileState
from acquired.daemon.manifest import FileSpec
from acquired.daemon.messages import Active, TorrentAdded, TransferEnded
from acquired.daemon.store import FileRow
from acquired.daemon.torrents import peer_hints, same_torrent, torrent_key, torrent_source
from acquired.sources.choice import MirrorEvidence, RunningState, SwarmEvidence, reevaluate
from acquired.sources.torrent import TorrentRequest
from acquired.sources.torrent import events as tev

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")


class StoppedByDaemon(DaemonError):
    """A transfer the daemon itself stopped (pause, cancel, disk, shutdown)."""

    code = "transfer.stopped"
    hint = "Nothing to do: the daemon stopped this transfer on purpose."


class TorrentFlow:
    """The state thread's record of torrents: which files each fetches, which seed."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.groups: dict[str, list[int]] = {}
        self.seeding: dict[str, dict[str, Any]] = {}
        self.dht_nodes: int | None = None

    def start_torrent(
        self, row: FileRow, spec: FileSpec, event: Event, web_seeds: list[str]
    ) -> None:
        """Fetch ``row`` and every queued file of its job from the same torrent, as one
        torrent request."""
        engine, tspec = self.svc.torrents, spec.sources.torrent
        assert engine is not None and tspec is not None
        key = torrent_key(row.job_id, tspec)
        if key in self.groups:
            return  # its torrent is already running for other files; it waits for them
        rows = [row]
        for other in self.svc.store.files_in_state(FileState.QUEUED, job_id=row.job_id):
            ospec = self.svc.spec(other).sources.torrent
            free = other.id != row.id and other.id not in self.svc.active
            if free and ospec is not None and same_torrent(ospec, tspec):
                rows.append(other)
        files: dict[str, Path] = {}
        digests: dict[str, dict[str, str]] = {}
        inner_of: dict[int, str] = {}
        for r in rows:
            s = self.svc.spec(r)
            inner = (s.sources.torrent.file if s.sources.torrent else None) or s.path
            inner_of[r.id] = inner
            files[inner] = self.svc.target(r)
            files[inner].parent.mkdir(parents=True, exist_ok=True)
            if s.digests:
                digests[inner] = s.digests
        single = len(rows) == 1 and tspec.file is None
        request = TorrentRequest(
            key=key,
            source=torrent_source(tspec),
            save_dir=self.svc.target(row).parent,
            files=files,
            web_seeds=tuple(web_seeds) if single else (),
            peers=peer_hints(tspec),
            digests=digests,
        )
        token = self.svc.next_token()
        label = "torrent+web seed" if request.web_seeds else "torrent"

        moved = [
            r
            for r in rows
            if self.svc.move(r.id, event if r.id == row.id else Event.START, source="torrent")
        ]
        if not moved:
            return
        thread = self.svc.torrent_runner.add(engine, request, token, [r.id for r in moved])
        for r in moved:
            self.svc.active[r.id] = self.svc.track(
                r,
                token,
                thread,
                source=label,
                kind="torrent",
                torrent_key=key,
                inner=inner_of[r.id],
                detail="starting",
            )
        self.groups[key] = [r.id for r in moved]
        self.svc.event("info", f"fetching from {label} ({len(moved)} file(s))", job_id=row.job_id)

    def on_torrent_added(self, message: TorrentAdded) -> None:
        """The engine took a torrent: pause it there if it was stopped meanwhile."""
        acts = [
            self.svc.active[f] for f in self.groups.get(message.key, []) if f in self.svc.active
        ]
        if acts and (acts[0].token != message.token or acts[0].stop_reason is None):
            return  # running as asked, or a newer start owns the torrent now
        # Stopped while the engine was still adding it: stop it there too.
        if self.svc.torrents is not None:
            with contextlib.suppress(Exception):
                self.svc.torrents.pause(message.key)

    def stop_torrent(self, key: str, reason: str) -> None:
        """Stop every file of a torrent: pause keeps it in the session, cancel removes it;
        the data stays either way."""
        fids = self.groups.pop(key, [])
        if self.svc.torrents is not None:
            with contextlib.suppress(Exception):
                if reason == "cancel":
                    self.svc.torrents.remove(key)
                elif reason != "shutdown":
                    self.svc.torrents.pause(key)
        for fid in fids:
            act = self.svc.active.get(fid)
            if act is not None:
                act.stop_reason = act.stop_reason or reason
                self.svc.post(
                    TransferEnded(fid, act.token, None, StoppedByDaemon(f"stopped: {reason}"))
                )

    def on_torrent_event(self, ev: object) -> None:
        """An engine event: DHT, listen failures, progress, finish, failure, stall."""
        if isinstance(ev, tev.DhtStatus):
            self.dht_nodes = ev.nodes
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
        if key in self.seeding:
            self.on_seeding_event(key, ev)
            return
        acts = [self.svc.active[f] for f in self.groups.get(key, []) if f in self.svc.active]
        if not acts:
            return
        if isinstance(ev, tev.TorrentProgress):
            sizes = [a.size or 0 for a in acts]
            whole = sum(sizes)
            for a, size in zip(acts, sizes, strict=True):
                share = size / whole if whole else 1 / len(acts)
                self.svc.metrics.observe_bytes("torrent", int(ev.done * share) - a.bytes_done)
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
            del self.groups[key]
            self.seeding[key] = {"job": acts[0].job_id, "ratio": 0.0, "peers": 0, "upload": 0.0}
            for a in acts:
                del self.svc.active[a.file_id]
                row = self.svc.store.get_file(a.file_id)
                digests = ev.digests.get(a.inner or "", {}) or None
                self.svc.files.fetched(row, digests, size=row.size or a.bytes_done)
        elif isinstance(ev, tev.TorrentFailed):
            info = describe(ev.error)
            del self.groups[key]
            if self.svc.torrents is not None:
                with contextlib.suppress(Exception):
                    self.svc.torrents.remove(key, delete_data=info.code == "verify.digest_mismatch")
            for a in acts:
                del self.svc.active[a.file_id]
                self.svc.outcomes.attempt_failed(
                    self.svc.store.get_file(a.file_id), info, "torrent"
                )
        elif isinstance(ev, tev.TorrentStalled):
            self.maybe_leave_torrent(key, acts, ev)

    def maybe_leave_torrent(self, key: str, acts: list[Active], ev: tev.TorrentStalled) -> None:
        """A torrent with no data for the stall window falls back to the mirrors."""
        first = self.svc.store.get_file(acts[0].file_id)
        mirrors = self.svc.spec(first).sources.mirrors
        decision = reevaluate(
            RunningState(
                current="torrent",
                torrent_available=True,
                mirrors=tuple(MirrorEvidence(url=m) for m in mirrors),
                swarm=SwarmEvidence(seeds=ev.seeds, peers=ev.peers),
                seconds_without_data=ev.seconds_without_data,
                stall_window=self.svc.config.torrent.stall_window,
            )
        )
        if decision is None:
            self.svc.event(
                "warning",
                f"torrent: no data for {ev.seconds_without_data:.0f}s ({ev.peers} peers,"
                f" {ev.seeds} seeds) and no mirror to fall back to; still waiting",
                job_id=acts[0].job_id,
            )
            return
        self.groups.pop(key, None)
        if self.svc.torrents is not None:
            with contextlib.suppress(Exception):
                self.svc.torrents.remove(key)
        for a in acts:
            del self.svc.active[a.file_id]
            row = self.svc.store.get_file(a.file_id)
            self.svc.outcomes.switch(row, decision)

    def on_seeding_event(self, key: str, ev: object) -> None:
        """Progress and end of a torrent that seeds after its files are done."""
        info = self.seeding[key]
        if isinstance(ev, tev.TorrentProgress):
            info.update(ratio=ev.ratio, peers=ev.peers, upload=ev.upload_rate)
        elif isinstance(ev, (tev.SeedingDone, tev.TorrentFailed)):
            del self.seeding[key]
            if self.svc.torrents is not None:
                with contextlib.suppress(Exception):
                    self.svc.torrents.remove(key)
            self.svc.event(
                "info", f"stopped seeding {key} (ratio {info['ratio']:.2f})", job_id=info["job"]
            )

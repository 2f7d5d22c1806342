"""The fleet as this node sees it: a background thread that talks to the cluster's Redis
so that the state thread and the control socket never do.

Once a second (``EVERY``) the thread, on a connection of its own with short socket
timeouts, says this node is alive (a heartbeat key with a TTL carrying its last report),
reads the nodes alive and every published job's counts, and posts the result to the
state thread as a :class:`FleetUpdate` (status, show, top and ``nodes`` are answered
from the last one, with its age). A published job this node has not offered yet is read
once (its manifest and digest) and posted as a :class:`FleetJobFound`: job discovery.
The state thread hands it requests that need Redis (``retry --failed``, ``failures``, a
forgotten job's removal, a finished job's index, a shard's figures) through
:meth:`FleetView.submit`; each is run here, in order, between two reads.

Redis down or slow costs this thread a connection attempt a cycle (``TIMEOUT`` each), and
the others nothing: the snapshot says since when Redis is unreachable and keeps the
last figures read, with their time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from acquired.daemon.cluster_config import ClusterSettings
from acquired.daemon.errors import describe

LOG = logging.getLogger("acquired.fleet")

EVERY = 1.0  # seconds between two reads of the fleet
TIMEOUT = 1.0  # socket timeout (connect and each call) of the fleet thread's connection
HEARTBEAT_TTL = 10.0  # seconds a node counts as alive after its last heartbeat
RETRY_CAP = 5.0  # the longest wait between two connection attempts while Redis is down

__all__ = [
    "EVERY",
    "FleetJobFound",
    "FleetRequest",
    "FleetUpdate",
    "FleetView",
    "node_rows",
    "to_offer",
]


@dataclass(frozen=True)
class FleetJob:
    """One published job as Redis counts it: the whole job, every node together."""

    digest: str
    shards: dict[str, int]
    samples: dict[str, int]
    bytes: int
    dead: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class FleetUpdate:
    """The fleet's last snapshot. ``at`` is when its figures were read (wall clock),
    ``down_since`` when Redis stopped answering (None while it answers)."""

    at: float | None
    nodes: list[dict[str, Any]]
    jobs: dict[str, FleetJob]
    down_since: float | None = None
    error: str = ""


@dataclass(frozen=True)
class FleetJobFound:
    """A job published in Redis that this node was never offered: its manifest as JSON
    data (what :class:`~acquired.daemon.workqueue.QueueJob` published) and digest."""

    job: str
    digest: str
    manifest: dict[str, Any]


@dataclass
class FleetRequest:
    """Work for the fleet thread: ``run(queue)`` with the thread's RedisWorkQueue;
    ``failed(error_info)`` if Redis cannot be reached or ``run`` raises."""

    what: str
    run: Callable[[Any], object]
    failed: Callable[[dict[str, Any]], None] = lambda info: None


def to_offer(
    published: Mapping[str, str], offered: set[str], forgotten: Mapping[str, str]
) -> list[str]:
    """The published jobs (name -> digest) to read and offer to the state thread: never
    offered yet, and not forgotten here with that same manifest. Pure."""
    return sorted(
        name
        for name, digest in published.items()
        if name not in offered and forgotten.get(name) != digest
    )


def node_rows(
    alive: list[dict[str, Any]], seen: dict[str, dict[str, Any]], now: float
) -> list[dict[str, Any]]:
    """Every node seen since this daemon started: alive (heartbeat not expired) or not,
    its last report and that report's age. Pure."""
    live = {n["node"]: n for n in alive if n.get("node")}
    rows = []
    for name in sorted(set(live) | set(seen)):
        report = live.get(name) or seen[name]
        ts = report.get("ts")
        rows.append(
            {
                "node": name,
                "alive": name in live,
                "age": max(0.0, now - float(ts)) if ts is not None else None,
                "samples_per_s": float(report.get("samples_per_s") or 0.0),
                "bytes_per_s": float(report.get("bytes_per_s") or 0.0),
                "shards_held": int(report.get("shards_held") or 0),
                "jobs": dict(report.get("jobs") or {}),
                "version": report.get("version"),
            }
        )
    return rows


class FleetView:
    """The fleet thread (see the module's docstring)."""

    def __init__(
        self,
        settings: ClusterSettings,
        post: Callable[[object], None],
        *,
        connect: Callable[..., Any] | None = None,
        forgotten: Mapping[str, str] | None = None,
        every: float = EVERY,
    ) -> None:
        self.settings = settings
        self.node = settings.node_name
        self._post = post
        self._connect = connect
        self._every = every
        self._requests: queue.Queue[FleetRequest | None] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._report: dict[str, Any] = {}
        self._forgotten = dict(forgotten or {})
        self._offered: set[str] = set()
        self._seen: dict[str, dict[str, Any]] = {}
        self._last: FleetUpdate = FleetUpdate(None, [], {})
        self.thread: threading.Thread | None = None

    # -- any thread ---------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Start the fleet thread."""
        self.thread = threading.Thread(target=self._main, name="fleet", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """Stop after the current step (heartbeats end; the key expires by itself)."""
        self._stop.set()
        self._requests.put(None)

    def submit(self, request: FleetRequest) -> None:
        """Run ``request`` on the fleet thread, after those before it."""
        self._requests.put(request)

    def set_report(self, report: Mapping[str, Any]) -> None:
        """This node's figures for its next heartbeat (from the state thread)."""
        with self._lock:
            self._report = dict(report)

    def forget(self, job: str, digest: str) -> None:
        """Never offer ``job`` with this manifest again (it was forgotten here)."""
        with self._lock:
            self._forgotten[job] = digest
            self._offered.discard(job)

    def unforget(self, job: str) -> None:
        """``job`` was submitted here again: offer it like any other."""
        with self._lock:
            self._forgotten.pop(job, None)

    def offered(self, job: str) -> None:
        """``job`` is known here (submitted on this node): no need to offer it."""
        with self._lock:
            self._offered.add(job)

    # -- the fleet thread ---------------------------------------------------------------

    def _open(self) -> Any:
        if self._connect is not None:
            return self._connect(self.settings, timeout=TIMEOUT)
        from acquired.daemon.redisqueue import connect_cluster

        return connect_cluster(self.settings, timeout=TIMEOUT)

    def _main(self) -> None:
        q: Any = None
        wait = 0.0
        failures = 0
        while not self._stop.is_set():
            request = self._next_request(wait)
            if self._stop.is_set():
                break
            try:
                if q is None:
                    q = self._open()
                if request is not None:
                    self._serve(q, request)
                    wait = 0.0
                    continue
                self._cycle(q)
                failures = 0
                wait = self._every
            except Exception as exc:
                if request is not None:
                    request.failed(describe(exc).as_dict())
                failures += 1
                wait = min(self._every * failures, RETRY_CAP)
                self._down(exc)
                if q is not None:
                    close = getattr(q, "close", None)
                    if close is not None:
                        try:
                            close()
                        except Exception:
                            LOG.debug("closing the fleet connection failed", exc_info=True)
                    q = None
        if q is not None:
            q.close()

    def _next_request(self, wait: float) -> FleetRequest | None:
        try:
            return self._requests.get(timeout=wait) if wait > 0 else self._requests.get_nowait()
        except queue.Empty:
            return None

    def _serve(self, q: Any, request: FleetRequest) -> None:
        try:
            request.run(q)
        except Exception as exc:
            info = describe(exc)
            if info.code == "cluster.unreachable":
                raise
            LOG.warning("fleet: %s failed: %s", request.what, info.message)
            request.failed(info.as_dict())

    def _down(self, exc: BaseException) -> None:
        info = describe(exc)
        last = self._last
        if last.down_since is None:
            LOG.warning("the fleet's Redis is unreachable: %s", info.message)
        down = FleetUpdate(
            last.at, last.nodes, last.jobs, last.down_since or time.time(), info.message
        )
        self._last = down
        self._post(down)

    def _cycle(self, q: Any) -> None:
        with self._lock:
            report = dict(self._report)
        q.heartbeat(report, HEARTBEAT_TTL)
        now = time.time()
        alive = q.nodes()
        for n in alive:
            if n.get("node"):
                self._seen[n["node"]] = n
        published = q.published()
        jobs: dict[str, FleetJob] = {}
        for name, digest in published.items():
            counts = q.counts(name)
            dead = []
            if counts.shards.get("dead"):
                dead = [
                    {"shard": d.shard_id, "deliveries": d.deliveries, "error": d.last_error}
                    for d in q.dead(name)
                ]
            jobs[name] = FleetJob(
                digest, dict(counts.shards), dict(counts.samples), counts.bytes, dead
            )
        if self._last.down_since is not None:
            LOG.info("the fleet's Redis answers again")
        self._last = FleetUpdate(now, node_rows(alive, self._seen, now), jobs)
        self._post(self._last)
        with self._lock:
            fresh = to_offer(published, self._offered, self._forgotten)
        for name in fresh:
            found = q.manifest(name)
            with self._lock:
                self._offered.add(name)
            # None: removed since; {}: published without its manifest (an older version).
            if found is not None and found[1]:
                self._post(FleetJobFound(name, found[0], found[1]))

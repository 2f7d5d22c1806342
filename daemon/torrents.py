"""Glue between the state thread and the torrent engine.

The state thread decides; this module turns manifest values into the engine's plain
values (sources, keys, peer hints) and runs the probes that feed the source choice, which
block and so run on worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acquired.daemon.config import Config
from acquired.daemon.errors import describe
from acquired.daemon.manifest import TorrentSpec
from acquired.sources.choice import (
    Decision,
    Evidence,
    MirrorEvidence,
    SwarmEvidence,
    choose_source,
)
from acquired.sources.http.probe import probe_all
from acquired.sources.torrent import (
    InfoHash,
    Magnet,
    TorrentEngine,
    TorrentFile,
    TorrentSettings,
    TorrentSource,
    TorrentUrl,
)

if TYPE_CHECKING:
    from acquired.daemon.store import Store

PROBE_KEEP = 60.0
"""Seconds a probed torrent waits in the session for the transfer that adopts it."""


def engine_settings(config: Config) -> TorrentSettings:
    """The engine's settings from the daemon's ``[torrent]`` section."""
    return TorrentSettings(**config.torrent.engine_options())


def torrent_source(spec: TorrentSpec) -> TorrentSource:
    """The engine's source for a manifest's ``sources.torrent``."""
    value = spec.value
    if spec.kind == "academic_torrents":
        return InfoHash(value)
    if spec.kind == "magnet":
        return Magnet(value)
    if spec.kind == "url":
        return TorrentUrl(value)
    return TorrentFile(Path(value))


def same_torrent(a: TorrentSpec, b: TorrentSpec) -> bool:
    """Whether two manifest torrent sources name the same torrent."""
    return (a.kind, a.value) == (b.kind, b.value)


def torrent_key(job_id: str, spec: TorrentSpec) -> str:
    """A stable key for one torrent of one job: the engine's resume data is found by it
    after a restart, and all files a job wants from that torrent share it."""
    digest = hashlib.sha1(f"{spec.kind}:{spec.value}".encode(), usedforsecurity=False)
    return f"{job_id}/{digest.hexdigest()[:16]}"


def peer_hints(spec: TorrentSpec) -> tuple[tuple[str, int], ...]:
    """The ``host:port`` peers of a torrent source as (host, port) pairs."""
    hints = []
    for peer in spec.peers:
        host, _, port = peer.rpartition(":")
        hints.append((host.strip("[]"), int(port)))
    return tuple(hints)


def probe_and_choose(
    engine: TorrentEngine,
    spec: TorrentSpec,
    mirrors: list[str],
    *,
    window: float,
    single_file: bool,
) -> Decision:
    """Watch the swarm and measure the mirrors at once, then choose (blocks for ``window``).

    The swarm probe fetches the wanted file meanwhile; when the choice includes the
    torrent, the transfer that follows adopts what it fetched, otherwise it is dropped."""
    source = torrent_source(spec)
    files = (spec.file,) if spec.file else None
    with ThreadPoolExecutor(1, thread_name_prefix="probe-mirrors") as pool:
        measured = pool.submit(probe_all, mirrors)
        try:
            swarm = engine.probe(
                source, window=window, peers=peer_hints(spec), files=files, keep=PROBE_KEEP
            )
        except Exception as exc:
            swarm = SwarmEvidence(seeds=0, peers=0, error=describe(exc).message)
        samples = measured.result()
    evidence = Evidence(
        swarm=swarm,
        mirrors=tuple(
            MirrorEvidence(url=s.url, rate=s.throughput, ok=s.reachable) for s in samples
        ),
        web_seed_capable=single_file,
    )
    decision = choose_source(evidence)
    if decision.source == "http":
        # Should this fail, the probe expires by itself; the choice stands.
        with contextlib.suppress(Exception):
            engine.drop_probe(source)
    return decision


def restore_seeding(engine: TorrentEngine | None, store: Store) -> dict[str, dict[str, Any]]:
    """Seed again what was seeding before the last stop, for jobs the store still has.

    Returns what the status shows of each (torrent key -> job, ratio, peers, upload)."""
    if engine is None:
        return {}
    keys = engine.restore_seeding(accept=lambda key: store.get_job(job_of(key)) is not None)
    return {k: {"job": job_of(k), "ratio": 0.0, "peers": 0, "upload": 0.0} for k in keys}


def job_of(key: str) -> str:
    """The job of a torrent key (``torrent_key``'s inverse)."""
    return key.rpartition("/")[0]

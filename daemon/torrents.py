"""Glue between the state thread and the torrent engine.

The state thread decides; this module turns manifest values into the engine's plain
values (sources, keys, peer hints) and runs the probes that feed the source choice, which
block and so run on worker threads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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
    """Watch the swarm and measure the mirrors, then choose (blocks for ``window``)."""
    try:
        swarm = engine.probe(torrent_source(spec), window=window, peers=peer_hints(spec))
    except Exception as exc:
        swarm = SwarmEvidence(seeds=0, peers=0, error=describe(exc).message)
    samples = probe_all(mirrors)
    evidence = Evidence(
        swarm=swarm,
        mirrors=tuple(
            MirrorEvidence(url=s.url, rate=s.throughput, ok=s.reachable) for s in samples
        ),
        web_seed_capable=single_file,
    )
    return choose_source(evidence)

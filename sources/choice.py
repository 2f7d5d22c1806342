"""Which source fetches a file: a BitTorrent swarm, HTTP mirrors, or both at once.

Pure functions over measured evidence; the daemon gathers the evidence (the torrent
engine's ``probe``, the HTTP engine's mirror ranking and running rates), calls
``choose_source`` before a transfer and ``reevaluate`` while it runs, logs the decision's
``reason`` and shows it in ``acquirectl show``.

"both" means the torrent with the mirrors added as BEP 19 web seeds: libtorrent then pulls
pieces from the swarm and the mirrors at the same time. That only works for a single-file
torrent (a mirror serves one file), so the evidence says whether it is possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

SourceKind = Literal["torrent", "http", "both"]


@dataclass(frozen=True)
class SwarmEvidence:
    """What a short probe (or the running transfer) saw of the swarm."""

    seeds: int
    """Largest of: seeds reported by tracker scrapes, seeds connected."""
    peers: int
    """Downloaders (not seeds) known from trackers, the DHT or connections."""
    rate: float | None = None
    """Payload bytes/s measured once the torrent ran; None when only probed."""
    connected: int = 0
    metadata: bool = True
    """False when a magnet's metadata never arrived during the probe."""
    dht_nodes: int = 0
    window: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class MirrorEvidence:
    """One HTTP mirror, as the HTTP engine's ranking or a running transfer measured it."""

    url: str
    rate: float | None = None
    """Bytes/s; None when not measured yet."""
    ok: bool = True
    """False when the mirror failed (dropped, 404, refused)."""
    label: str = ""

    def name(self) -> str:
        """How the mirror is named in a decision's reason."""
        return self.label or f"mirror {urlsplit(self.url).hostname or self.url}"


@dataclass(frozen=True)
class Evidence:
    """What is known about one file's sources when a choice is made."""

    swarm: SwarmEvidence | None
    """None when the file has no torrent source."""
    mirrors: tuple[MirrorEvidence, ...] = ()
    web_seed_capable: bool = True
    """The mirrors can serve as web seeds (single-file torrent)."""


@dataclass(frozen=True)
class Policy:
    """Assumptions used where nothing was measured, and the margin for "both"."""

    assumed_seed_rate: float = 2_000_000.0
    """Bytes/s expected from one seed before any rate is measured."""
    assumed_peer_rate: float = 250_000.0
    """Bytes/s expected from one partial peer."""
    assumed_mirror_rate: float = 5_000_000.0
    web_seed_efficiency: float = 0.8
    """Share of a mirror's HTTP-engine rate that libtorrent's web-seed client gets."""
    both_gain: float = 1.1
    """Use both only when expected at least this much faster than the best single source."""


@dataclass(frozen=True)
class Decision:
    """The source chosen for a file, and why, in figures."""

    source: SourceKind
    reason: str
    """One line with the figures, e.g. "torrent: 14 seeds, 38 MB/s; mirror A 9 MB/s;
    chose torrent+web seed"."""
    expected_rate: float = 0.0
    web_seeds: tuple[str, ...] = ()
    """Mirrors to add to the torrent as web seeds ("both")."""


@dataclass(frozen=True)
class RunningState:
    """A transfer in progress, as the daemon sees it, for ``reevaluate``."""

    current: SourceKind
    torrent_available: bool
    mirrors: tuple[MirrorEvidence, ...] = ()
    swarm: SwarmEvidence | None = None
    seconds_without_data: float = 0.0
    """Torrent side: seconds since the last payload byte (0 while data flows)."""
    stall_window: float = 120.0
    torrent_error: str | None = None
    """Code of the torrent's failure (torrent.metadata_timeout, ...), if it failed."""
    mirrors_failed: bool = False
    """The HTTP transfer failed as a whole (every mirror dropped)."""


def format_rate(rate: float) -> str:
    """Bytes/s in decimal megabytes, as people read download speeds."""
    mb = rate / 1_000_000
    if mb >= 10:
        return f"{mb:.0f} MB/s"
    if mb >= 0.1:
        return f"{mb:.1f} MB/s"
    return f"{rate / 1000:.0f} kB/s"


def _swarm_estimate(swarm: SwarmEvidence, policy: Policy) -> float:
    if swarm.error or not swarm.metadata:
        return 0.0
    if swarm.rate is not None:
        return swarm.rate
    return swarm.seeds * policy.assumed_seed_rate + swarm.peers * policy.assumed_peer_rate


def _swarm_text(swarm: SwarmEvidence, estimate: float) -> str:
    if swarm.error:
        return f"torrent: {swarm.error}"
    if not swarm.metadata:
        return f"torrent: no metadata after {swarm.window:.0f} s"
    counts = f"{swarm.seeds} seeds, {swarm.peers} peers"
    if swarm.rate is not None:
        return f"torrent: {counts}, {format_rate(swarm.rate)}"
    if estimate > 0:
        return f"torrent: {counts} (~{format_rate(estimate)} expected)"
    return f"torrent: {counts}"


def _mirror_text(mirror: MirrorEvidence) -> str:
    if not mirror.ok:
        return f"{mirror.name()} failed"
    if mirror.rate is None:
        return f"{mirror.name()} not measured"
    return f"{mirror.name()} {format_rate(mirror.rate)}"


def _mirror_total(mirrors: tuple[MirrorEvidence, ...], policy: Policy) -> float:
    # The HTTP engine spreads segments over all good mirrors, so their rates add up.
    return sum(policy.assumed_mirror_rate if m.rate is None else m.rate for m in mirrors if m.ok)


def choose_source(evidence: Evidence, policy: Policy | None = None) -> Decision:
    """Pick the source expected to finish sooner, or both when that is clearly faster."""
    policy = policy or Policy()
    good = tuple(m for m in evidence.mirrors if m.ok)
    mirror_parts = [_mirror_text(m) for m in evidence.mirrors]
    swarm = evidence.swarm
    if swarm is None:
        total = _mirror_total(good, policy)
        text = "; ".join([*mirror_parts, "no torrent; chose http"])
        return Decision("http", text, total)
    swarm_rate = _swarm_estimate(swarm, policy)
    parts = [_swarm_text(swarm, swarm_rate), *mirror_parts]
    if not evidence.mirrors:
        return Decision("torrent", "; ".join([*parts, "no mirrors; chose torrent"]), swarm_rate)
    if not good:
        return Decision(
            "torrent", "; ".join([*parts, "no working mirror; chose torrent"]), swarm_rate
        )
    http_rate = _mirror_total(good, policy)
    if swarm_rate <= 0:
        return Decision("http", "; ".join([*parts, "chose http"]), http_rate)
    options: list[tuple[float, SourceKind, str]] = [
        (http_rate, "http", "chose http"),
        (swarm_rate, "torrent", "chose torrent"),
    ]
    best_single = max(http_rate, swarm_rate)
    if evidence.web_seed_capable:
        both_rate = swarm_rate + policy.web_seed_efficiency * http_rate
        if both_rate >= best_single * policy.both_gain:
            options.append((both_rate, "both", "chose torrent+web seed"))
    # Ties go to the earlier option: plain HTTP leaves no seeding behind.
    rate, kind, verdict = max(options, key=lambda o: o[0])
    seeds = tuple(m.url for m in good) if kind == "both" else ()
    return Decision(kind, "; ".join([*parts, verdict]), rate, seeds)


def reevaluate(state: RunningState, policy: Policy | None = None) -> Decision | None:
    """Switch a running transfer when its source stalls or fails; None means keep going.

    * torrent (or both) with no data for ``stall_window`` seconds, or failed -> mirrors;
    * mirrors all failed -> torrent, when the file has one.
    """
    policy = policy or Policy()
    good = tuple(m for m in state.mirrors if m.ok)
    if state.current in ("torrent", "both"):
        if state.torrent_error is not None:
            trigger = f"torrent failed ({state.torrent_error})"
        elif state.seconds_without_data >= state.stall_window:
            trigger = f"torrent: no data for {state.seconds_without_data:.0f} s"
            if state.swarm is not None:
                trigger += f" ({state.swarm.seeds} seeds, {state.swarm.peers} peers)"
        else:
            return None
        if not good:
            return None
        parts = [trigger, *(_mirror_text(m) for m in state.mirrors), "falling back to http"]
        return Decision("http", "; ".join(parts), _mirror_total(good, policy))
    # current == "http"
    if state.mirrors_failed and state.torrent_available and state.torrent_error is None:
        parts = ["all mirrors failed"]
        if state.swarm is not None:
            parts.append(_swarm_text(state.swarm, _swarm_estimate(state.swarm, policy)))
        parts.append("falling back to torrent")
        rate = 0.0 if state.swarm is None else _swarm_estimate(state.swarm, policy)
        return Decision("torrent", "; ".join(parts), rate)
    return None

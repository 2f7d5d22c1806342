"""Plain-words diagnostics of the torrent session: facts in, findings out (pure).

The engine collects ``SessionFacts`` from alerts; ``diagnose`` turns them into findings
with a fix each, which ``acquirectl doctor`` prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from acquired.sources.torrent.events import Finding, Severity

DHT_GRACE = 30.0
"""Seconds after start before an empty DHT routing table counts as a problem."""
NAT_GRACE = 300.0
"""Seconds with peers but no incoming connection before NAT/firewall is suspected."""


@dataclass(frozen=True)
class Socket:
    """A socket the session listens on."""

    address: str
    port: int
    transport: str
    """TCP, uTP (the UDP socket also carries the DHT), ..."""


@dataclass(frozen=True)
class SocketFailure:
    """A socket the session could not open, and who holds the port."""

    address: str
    port: int
    transport: str
    error: str
    holder: str | None = None


@dataclass(frozen=True)
class TrackerFact:
    """The last announce to one tracker of one torrent."""

    key: str
    url: str
    ok: bool
    message: str
    peers: int = 0
    times_in_row: int = 0


@dataclass(frozen=True)
class SessionFacts:
    """Everything the doctor looks at; built by the engine, JSON-able via asdict."""

    uptime: float
    listen_port: int
    listening: list[Socket] = field(default_factory=list)
    listen_failures: list[SocketFailure] = field(default_factory=list)
    upnp: bool = False
    natpmp: bool = False
    port_mappings: list[str] = field(default_factory=list)
    port_mapping_errors: list[str] = field(default_factory=list)
    dht: bool = True
    dht_nodes: int = 0
    dht_history: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since start, nodes) samples."""
    dht_bootstrap: list[str] = field(default_factory=list)
    dht_bootstrap_answered: list[str] = field(default_factory=list)
    dht_bootstrap_unresolved: list[str] = field(default_factory=list)
    dht_bootstrap_complete: bool = False
    trackers: list[TrackerFact] = field(default_factory=list)
    incoming_connections: int = 0
    peers_seen: int = 0
    """Most peers connected at once, over the session's life."""
    peers_since: float | None = None
    """Seconds since start when the first peer was connected."""
    external_address: str | None = None
    udp_errors: list[str] = field(default_factory=list)
    torrents: int = 0


def dht_ready(facts: SessionFacts) -> bool:
    """Whether the DHT is on and knows at least one node."""
    return facts.dht and facts.dht_nodes > 0


def _history_text(history: list[tuple[float, int]]) -> str:
    if not history:
        return ""
    picks = (
        history if len(history) <= 5 else [history[i * (len(history) - 1) // 4] for i in range(5)]
    )
    return "nodes over time: " + ", ".join(f"{n} at {t:.0f} s" for t, n in picks)


def diagnose(facts: SessionFacts) -> list[Finding]:
    """Findings in plain words, most important first."""
    findings: list[Finding] = []
    port = facts.listen_port
    udp_bound = any(s.transport in ("uTP", "UDP") for s in facts.listening)
    tcp_bound = any(s.transport in ("TCP", "SSL/TCP") for s in facts.listening)

    # Listening sockets.
    for fail in facts.listen_failures:
        taken = "in use" in fail.error.lower()
        reason = fail.error + (f"; held by {fail.holder}" if fail.holder else "")
        family_missing = "family" in fail.error.lower() or "not available" in fail.error.lower()
        severity: Severity = (
            "info" if family_missing and tcp_bound else "error" if not tcp_bound else "warning"
        )
        if taken:
            fix = (
                f"Stop the program holding port {fail.port}"
                + (f" ({fail.holder})" if fail.holder else "")
                + ", or set torrent.listen_port to a free port (and forward that port, TCP and "
                "UDP, on your router); then restart acquired."
            )
        elif family_missing:
            fix = (
                "Nothing to do unless you need that address family; otherwise remove it "
                "from torrent.listen_interfaces."
            )
        else:
            fix = "Check torrent.listen_interfaces and torrent.listen_port, then restart acquired."
        findings.append(
            Finding(
                severity,
                f"Cannot listen on {fail.transport} {fail.address}:{fail.port}",
                f"Binding failed: {reason}.",
                fix,
            )
        )
    if facts.listening:
        bound = ", ".join(f"{s.transport} {s.address}:{s.port}" for s in facts.listening)
        findings.append(Finding("ok", f"Listening on port {port}", f"Bound sockets: {bound}.", ""))
    elif not facts.listen_failures:
        findings.append(
            Finding(
                "warning",
                "No listening socket yet",
                "The session has not reported any bound socket.",
                "Wait a few seconds; if it stays so, check torrent.listen_interfaces.",
            )
        )

    # Port mapping.
    if not facts.upnp and not facts.natpmp:
        findings.append(
            Finding(
                "info",
                "UPnP and NAT-PMP are off",
                "No port is opened on your router automatically (the default).",
                f"If this machine is behind a NAT router, forward TCP and UDP port {port} to it, "
                "or set torrent.upnp = true.",
            )
        )
    else:
        on = " and ".join(n for n, v in (("UPnP", facts.upnp), ("NAT-PMP", facts.natpmp)) if v)
        for text in facts.port_mappings:
            findings.append(Finding("ok", f"{on}: port mapped", text, ""))
        for text in facts.port_mapping_errors:
            findings.append(
                Finding(
                    "warning",
                    f"{on}: mapping failed",
                    text,
                    f"Forward TCP and UDP port {port} on the router by hand, or enable UPnP on it.",
                )
            )
        if not facts.port_mappings and not facts.port_mapping_errors:
            findings.append(
                Finding("info", f"{on}: no answer from a router yet", "Still waiting.", "")
            )

    # DHT.
    if not facts.dht:
        findings.append(
            Finding(
                "info",
                "DHT is off",
                "Peers are found only through trackers and peer hints.",
                "Set torrent.dht = true to find peers for magnets and trackerless torrents.",
            )
        )
    else:
        history = _history_text(facts.dht_history)
        answered = (
            "bootstrap nodes that answered: " + ", ".join(facts.dht_bootstrap_answered)
            if facts.dht_bootstrap_answered
            else "no bootstrap node answered"
            + (
                f" ({', '.join(facts.dht_bootstrap)})"
                if facts.dht_bootstrap
                else " (none configured)"
            )
        )
        unresolved = (
            "; could not resolve: " + ", ".join(facts.dht_bootstrap_unresolved)
            if facts.dht_bootstrap_unresolved
            else ""
        )
        detail = "; ".join(x for x in (history, answered + unresolved) if x) + "."
        if facts.dht_nodes > 0:
            findings.append(Finding("ok", f"DHT ready: {facts.dht_nodes} nodes", detail, ""))
        elif facts.uptime < DHT_GRACE:
            findings.append(
                Finding(
                    "info",
                    f"DHT starting: 0 nodes after {facts.uptime:.0f} s",
                    detail,
                    "Wait a minute and run acquirectl doctor again.",
                )
            )
        else:
            udp = f"UDP {port} is bound" if udp_bound else f"UDP {port} is NOT bound"
            if not udp_bound:
                fix = f"Free UDP port {port} or choose another torrent.listen_port."
            elif not facts.dht_bootstrap:
                fix = "Set torrent.dht_bootstrap to DHT nodes you can reach."
            elif facts.dht_bootstrap_answered:
                fix = (
                    "Bootstrap nodes answer but no other node does: inbound UDP is likely "
                    f"filtered; open UDP {port} in the firewall and forward it on the router."
                )
            elif facts.dht_bootstrap_unresolved and len(facts.dht_bootstrap_unresolved) == len(
                facts.dht_bootstrap
            ):
                fix = (
                    "DNS does not resolve the bootstrap nodes: check name resolution, or set "
                    "torrent.dht_bootstrap to IP:port entries."
                )
            else:
                fix = (
                    f"Outbound UDP is likely blocked: open UDP {port} (in and out) in the "
                    "firewall, or set torrent.dht_bootstrap to nodes you can reach."
                )
            findings.append(
                Finding(
                    "error",
                    f"DHT not ready: 0 nodes after {facts.uptime:.0f} s",
                    f"{udp}; {detail}",
                    fix,
                )
            )

    # Trackers.
    for t in facts.trackers:
        if t.ok:
            findings.append(
                Finding("ok", f"Tracker {t.url} answered", f"{t.peers} peers for {t.key}.", "")
            )
        else:
            findings.append(
                Finding(
                    "warning",
                    f"Tracker {t.url} failed",
                    f"For {t.key}: {t.message} ({t.times_in_row} times in a row).",
                    "Check the tracker URL and that it is reachable; the swarm can still be "
                    "found through the DHT and peer hints.",
                )
            )

    # Incoming connections.
    if facts.incoming_connections > 0:
        findings.append(
            Finding(
                "ok",
                f"{facts.incoming_connections} incoming connections",
                "Peers can reach this machine.",
                "",
            )
        )
    elif (
        facts.peers_seen > 0
        and facts.peers_since is not None
        and facts.uptime - facts.peers_since >= NAT_GRACE
    ):
        findings.append(
            Finding(
                "warning",
                "No incoming connections",
                f"Up to {facts.peers_seen} peers were connected, but none connected to us in "
                f"{(facts.uptime - facts.peers_since) / 60:.0f} min.",
                f"Likely a NAT or firewall: forward TCP and UDP port {port} to this machine, "
                "or set torrent.upnp = true.",
            )
        )

    if facts.external_address:
        findings.append(
            Finding(
                "info",
                f"Peers see this machine as {facts.external_address}",
                "The external address as peers and trackers report it.",
                "",
            )
        )
    for text in facts.udp_errors[-3:]:
        findings.append(
            Finding(
                "warning",
                "UDP error",
                text,
                "Outbound UDP may be filtered; the DHT and uTP need it.",
            )
        )
    return findings


def port_holder(port: int, transport: str) -> str | None:
    """Which process holds a local port ("pid 123 (name)"), from /proc; None if unknown."""
    tables = ("tcp", "tcp6") if transport.upper() in ("TCP", "SSL/TCP") else ("udp", "udp6")
    inodes: set[str] = set()
    for table in tables:
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10:
                continue
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            listening = cols[3] == "0A" or table.startswith("udp")
            if local_port == port and listening:
                inodes.add(cols[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    pid = int(proc.name)
                    name = (proc / "comm").read_text().strip()
                    return f"pid {pid} ({name})" + (" — this process" if pid == me else "")
        except OSError:
            continue
    return None


def session_status(f: SessionFacts) -> dict[str, object]:
    """Session facts as JSON-able values (what ``acquirectl doctor`` shows as facts)."""
    return {
        "uptime": round(f.uptime, 1),
        "listen_port": f.listen_port,
        "listening": [f"{s.transport} {s.address}:{s.port}" for s in f.listening],
        "listen_failures": [
            f"{s.transport} {s.address}:{s.port}: {s.error}"
            + (f" (held by {s.holder})" if s.holder else "")
            for s in f.listen_failures
        ],
        "upnp": f.upnp,
        "natpmp": f.natpmp,
        "dht": f.dht,
        "dht_nodes": f.dht_nodes,
        "dht_ready": dht_ready(f),
        "dht_history": [[round(t, 1), n] for t, n in f.dht_history[-20:]],
        "dht_bootstrap_answered": f.dht_bootstrap_answered,
        "incoming_connections": f.incoming_connections,
        "peers_seen": f.peers_seen,
        "external_address": f.external_address,
        "torrents": f.torrents,
    }

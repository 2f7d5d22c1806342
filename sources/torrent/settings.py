"""Settings of the daemon's single libtorrent session, and their translation to libtorrent.

Defaults (documented for operators):

* ``listen_port`` 6881 on every IPv4 and IPv6 address, TCP and UDP (uTP and DHT share the
  UDP socket). The port is fixed: when it is taken the session does not silently move to a
  random port (which breaks port forwarding); ``acquirectl doctor`` says who holds it.
* UPnP, NAT-PMP and local peer discovery are off: a fixed port forwarded by the operator is
  what makes a swarm reachable, and LSD multicasts on the local network.
* DHT on, bootstrapped from the well-known routers.
* Outgoing connections use TCP only; incoming uTP is accepted. On loopback and fast links
  libtorrent's TCP moves data about three times faster than its uTP (1 GiB: 2.8 s vs 8 s).
* Seeding after completion: until a share ratio of 1.0 or one hour, whichever comes first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_BOOTSTRAP: tuple[str, ...] = (
    "router.bittorrent.com:6881",
    "router.utorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
)


@dataclass(frozen=True)
class TorrentSettings:
    """Options of the torrent engine (the ``[torrent]`` table of the daemon's config)."""

    listen_port: int = 6881
    """Fixed TCP and UDP port; 0 lets the system choose (tests only)."""
    listen_interfaces: tuple[str, ...] = ("0.0.0.0", "[::]")
    """Addresses to listen on, without port; IPv6 in brackets."""
    upnp: bool = False
    natpmp: bool = False
    lsd: bool = False
    dht: bool = True
    dht_bootstrap: tuple[str, ...] = DEFAULT_BOOTSTRAP
    """``host:port`` of DHT routers."""
    download_rate_limit: int = 0
    """Bytes/s for the whole session, 0 = unlimited (the daemon passes its global limit)."""
    upload_rate_limit: int = 0
    connections_limit: int = 200
    academic_torrents_url: str = "https://academictorrents.com"
    metadata_timeout: float = 600.0
    """Seconds a magnet may wait for metadata before it fails (torrent.metadata_timeout)."""
    stall_window: float = 120.0
    """Seconds without payload data before TorrentStalled (the daemon falls back to mirrors)."""
    seed_ratio: float | None = 1.0
    """Stop seeding at this upload/size ratio; None = no ratio limit, 0 = do not seed."""
    seed_time: float | None = 3600.0
    """Stop seeding after this many seconds; None = no time limit, 0 = do not seed."""
    resume_interval: float = 60.0
    """Seconds between periodic saves of resume data."""
    enable_outgoing_utp: bool = False
    enable_incoming_utp: bool = True
    enable_outgoing_tcp: bool = True
    enable_incoming_tcp: bool = True
    web_seed_request_bytes: int = 2 * 1024 * 1024
    """Largest HTTP request to a web seed. libtorrent's 16 MiB default leaves a long tail
    on a slow mirror: the last request holds pieces the swarm could have sent meanwhile."""
    fetch_timeout: float = 30.0
    """Timeout of HTTP requests for .torrent files."""
    tick_interval: float = 0.5
    """Seconds between progress updates (TorrentProgress events)."""
    dht_diagnostics_window: float = 600.0
    """Seconds after start during which DHT packets are inspected to see which bootstrap
    nodes answer (the packet log is switched off afterwards: it is chatty)."""
    extra: Mapping[str, object] = field(default_factory=dict)
    """Raw libtorrent settings_pack entries applied last (advanced; tests use it for
    loopback DHT: ``dht_restrict_routing_ips`` etc.)."""

    def interfaces_string(self) -> str:
        """libtorrent's ``listen_interfaces`` value: ``0.0.0.0:6881,[::]:6881``."""
        return ",".join(f"{host}:{self.listen_port}" for host in self.listen_interfaces)


def bootstrap_endpoints(entries: tuple[str, ...]) -> list[tuple[str, int]]:
    """Split ``host:port`` entries (IPv6 as ``[addr]:port``) into pairs; bad entries raise."""
    out: list[tuple[str, int]] = []
    for entry in entries:
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"DHT bootstrap node {entry!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


def settings_pack(settings: TorrentSettings, alert_mask: int) -> dict[str, object]:
    """The libtorrent settings_pack (as a dict) for ``settings``; a pure function."""
    bootstrap_endpoints(settings.dht_bootstrap)  # validate early, with the entry named
    pack: dict[str, object] = {
        "listen_interfaces": settings.interfaces_string(),
        # A fixed port must stay fixed: falling back to a random port hides the problem.
        "listen_system_port_fallback": False,
        "max_retry_port_bind": 0,
        "enable_upnp": settings.upnp,
        "enable_natpmp": settings.natpmp,
        "enable_lsd": settings.lsd,
        "enable_dht": settings.dht,
        "dht_bootstrap_nodes": ",".join(settings.dht_bootstrap),
        "download_rate_limit": settings.download_rate_limit,
        "upload_rate_limit": settings.upload_rate_limit,
        "connections_limit": settings.connections_limit,
        "enable_outgoing_utp": settings.enable_outgoing_utp,
        "enable_incoming_utp": settings.enable_incoming_utp,
        "enable_outgoing_tcp": settings.enable_outgoing_tcp,
        "enable_incoming_tcp": settings.enable_incoming_tcp,
        "urlseed_max_request_bytes": settings.web_seed_request_bytes,
        "alert_mask": alert_mask,
        "alert_queue_size": 10000,
        "user_agent": "acquired/0.1.0",
        "peer_fingerprint": "-AQ0100-",
        # The daemon schedules transfers itself; libtorrent's queue would hold some back.
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
    }
    pack.update(settings.extra)
    return pack

"""Prometheus metrics: a text endpoint on a loopback address, off by default.

The daemon owns one ``Metrics``; it serves only when ``[metrics] listen`` is set::

    metrics = Metrics()
    metrics.start(config.metrics.listen)          # None: off; "127.0.0.1:9469": on
    metrics.observe_bytes("http", 65536)          # as bytes arrive (delta, not total)
    metrics.failure("verify.digest_mismatch")     # a file failed with this code
    metrics.observe_verify(12.5)                  # seconds one verification took
    metrics.observe_extract(40.0)                 # seconds one extraction took
    metrics.update_from_snapshot(snapshot)        # active transfers, files, disk, DHT
    metrics.stop()

Exposed (all prefixed ``acquired_``): ``bytes_total{source}``, ``active_transfers{source}``,
``files{state}``, ``failures_total{code}``, ``verify_seconds`` and ``extract_seconds``
(histograms), ``disk_free_bytes``, ``disk_reserve_bytes``, ``dht_nodes``. Recording is
cheap and thread-safe, and works whether or not the endpoint is serving.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from acquired.daemon.errors import DaemonError
from acquired.daemon.units import parse_host_port

#: Seconds: verification and extraction of datasets take from a blink to hours.
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))
#: Labels of bytes/active transfers: the kind of source, the first word of its description.
SOURCE_KINDS = ("http", "torrent", "pip")


class MetricsError(DaemonError):
    """Base of the metrics endpoint's errors."""

    code = "metrics.error"
    hint = "Check [metrics] listen in the configuration."


class MetricsNotLoopback(MetricsError):
    """The endpoint has no authentication, so it may listen on loopback only."""

    code = "metrics.not_loopback"
    hint = (
        "Set [metrics] listen to a loopback address such as '127.0.0.1:9469' or "
        "'[::1]:9469'; to scrape from another host, put a proxy with authentication in front."
    )


class MetricsListenFailed(MetricsError):
    """The endpoint could not bind its address (port in use, ...)."""

    code = "metrics.listen_failed"
    hint = "Pick a free port in [metrics] listen, or stop what uses it (ss -ltnp)."


def loopback_address(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9469"`` -> ``("127.0.0.1", 9469)``; refuses a non-loopback host.

    ``localhost`` is accepted and means 127.0.0.1. Raises ``MetricsNotLoopback`` or
    ``MetricsError`` (for a malformed value).
    """
    try:
        host, port = parse_host_port(listen, allow_port_zero=True)
    except ValueError as exc:
        raise MetricsError(f"[metrics] listen: {exc}", listen=listen) from None
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise MetricsNotLoopback(
            f"[metrics] listen: '{host}' is a host name; write a loopback address",
            listen=listen,
        ) from None
    if not address.is_loopback:
        raise MetricsNotLoopback(
            f"[metrics] listen: {host} is not a loopback address", listen=listen
        )
    return host, port


def source_kind(description: str | None) -> str:
    """``"http 2 mirrors"`` -> ``"http"``; anything unknown -> ``"other"``."""
    word = (description or "").split(" ", 1)[0].lower()
    return word if word in SOURCE_KINDS else "other"


class Metrics:
    """The daemon's metrics and, once started, the HTTP endpoint that exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.bytes = Counter(
            "acquired_bytes", "Payload bytes received, by source kind", ["source"], registry=r
        )
        self.active = Gauge(
            "acquired_active_transfers",
            "Files being transferred, by source",
            ["source"],
            registry=r,
        )
        self.files = Gauge(
            "acquired_files", "Files known to the daemon, by state", ["state"], registry=r
        )
        self.failures = Counter(
            "acquired_failures", "Files that failed, by error code", ["code"], registry=r
        )
        self.verify_seconds = Histogram(
            "acquired_verify_seconds",
            "Duration of a checksum verification",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.extract_seconds = Histogram(
            "acquired_extract_seconds",
            "Duration of an archive extraction",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.disk_free = Gauge(
            "acquired_disk_free_bytes", "Free bytes on the data root's filesystem", registry=r
        )
        self.disk_reserve = Gauge(
            "acquired_disk_reserve_bytes",
            "Bytes kept free on the data root's filesystem",
            registry=r,
        )
        self.dht_nodes = Gauge("acquired_dht_nodes", "Nodes in the DHT routing table", registry=r)
        for kind in SOURCE_KINDS:
            # present from the start, so rate() has a zero to begin with
            self.bytes.labels(kind)
            self.active.labels(kind).set(0)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------ endpoint
    def start(self, listen: str | None) -> tuple[str, int] | None:
        """Serve ``/metrics`` on ``listen`` (``host:port``, loopback only; port 0 picks
        one). ``None`` leaves the endpoint off. Returns the address bound, or None."""
        if listen is None:
            return None
        host, port = loopback_address(listen)
        self.stop()
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsListenFailed(
                f"[metrics] listen: cannot listen on {listen}: {exc.strerror or exc}",
                listen=listen,
            ) from None
        self._server, self._thread = server, thread
        bound = server.socket.getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    def stop(self) -> None:
        """Stop serving (recording goes on)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
        self.address = None

    def restart(self, listen: str | None) -> tuple[str, int] | None:
        """Apply a changed ``[metrics] listen`` (on reload): stop, then start if set."""
        if listen is not None and self.address is not None:
            host, port = loopback_address(listen)
            if (host, port) == self.address:
                return self.address
        self.stop()
        return self.start(listen)

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:9469/metrics`` while serving."""
        if self.address is None:
            return None
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/metrics"

    def render(self) -> bytes:
        """The exposition text, as the endpoint would serve it."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------ recording
    def observe_bytes(self, source: str, n: int) -> None:
        """``n`` more payload bytes arrived from a source (``"http"``, ``"torrent"`` ...)."""
        if n > 0:
            self.bytes.labels(source_kind(source)).inc(n)

    def failure(self, code: str) -> None:
        """A file failed with error ``code`` (``verify.digest_mismatch`` ...)."""
        self.failures.labels(code or "unknown").inc()

    def observe_verify(self, seconds: float) -> None:
        """One verification took ``seconds``."""
        self.verify_seconds.observe(max(0.0, seconds))

    def observe_extract(self, seconds: float) -> None:
        """One extraction took ``seconds``."""
        self.extract_seconds.observe(max(0.0, seconds))

    def update_from_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        """Set the gauges from a status snapshot (docs/architecture.md)."""
        kinds = dict.fromkeys(SOURCE_KINDS, 0)
        for item in snapshot.get("active") or []:
            kind = source_kind(item.get("source"))
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in kinds.items():
            self.active.labels(kind).set(n)
        for state, n in (snapshot.get("counts") or {}).items():
            if state != "active":
                self.files.labels(state).set(int(n or 0))
        daemon = snapshot.get("daemon") or {}
        if daemon.get("disk_free") is not None:
            self.disk_free.set(int(daemon["disk_free"]))
        if daemon.get("disk_reserve") is not None:
            self.disk_reserve.set(int(daemon["disk_reserve"]))
        if daemon.get("dht_nodes") is not None:
            self.dht_nodes.set(int(daemon["dht_nodes"]))

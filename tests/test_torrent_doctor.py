"""acquirectl doctor's facts: DHT between local sessions, a taken port, and the pure rules."""

from __future__ import annotations

import socket
from pathlib import Path

from support.torrent_swarm import (
    LOOPBACK_DHT,
    dht_node,
    loopback_settings,
    running_engine,
    wait_until,
)

from acquired.sources.torrent import DhtStatus, ListenFailed
from acquired.sources.torrent.doctor import (
    SessionFacts,
    Socket,
    SocketFailure,
    TrackerFact,
    diagnose,
    port_holder,
)


def by_title(findings: list, word: str) -> list:
    return [f for f in findings if word in f.title]


def test_dht_between_local_sessions_reports_nodes_and_answering_bootstrap(tmp_path: Path) -> None:
    router = dht_node()
    try:
        wait_until(lambda: router.listen_port() > 0)
        boot = f"127.0.0.1:{router.listen_port()}"
        settings = loopback_settings(dht=True, dht_bootstrap=(boot,), extra=dict(LOOPBACK_DHT))
        with running_engine(settings, tmp_path / "state") as (engine, events):
            # A second node that knows only us: it joins our routing table when it asks.
            other = dht_node(bootstrap=f"127.0.0.1:{engine.listen_port()}")
            try:
                status = events.wait_for(DhtStatus, lambda e: e.nodes > 0, timeout=30)
                assert status.ready
                wait_until(lambda: engine.session_status()["dht_bootstrap_answered"] == [boot])
                facts = engine.session_status()
                assert facts["dht_ready"] is True and facts["dht_nodes"] >= 1
                [dht] = by_title(engine.doctor(), "DHT")
                assert dht.severity == "ok"
                assert dht.title.startswith("DHT ready:")
                assert boot in dht.detail
            finally:
                other.pause()
    finally:
        router.pause()


def test_taken_port_is_explained(tmp_path: Path) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        settings = loopback_settings(listen_port=port)
        with running_engine(settings, tmp_path / "state") as (engine, events):
            failed = events.wait_for(ListenFailed, lambda e: e.transport == "TCP")
            assert failed.port == port
            assert failed.holder is not None and "this process" in failed.holder
            findings = engine.doctor()
            [bad] = by_title(findings, f"TCP 127.0.0.1:{port}")
            assert bad.severity == "error"
            assert "in use" in bad.detail
            assert f"port {port}" in bad.fix and "torrent.listen_port" in bad.fix
            assert engine.session_status()["listen_failures"]
    finally:
        blocker.close()


def test_port_holder_finds_the_listening_process() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        holder = port_holder(s.getsockname()[1], "TCP")
        assert holder is not None and holder.startswith("pid ")
    finally:
        s.close()
    assert port_holder(1, "TCP") is None


def test_dht_not_ready_says_why_and_what_to_do() -> None:
    facts = SessionFacts(
        uptime=120.0,
        listen_port=6881,
        listening=[Socket("0.0.0.0", 6881, "TCP"), Socket("0.0.0.0", 6881, "UDP")],
        dht_nodes=0,
        dht_history=[(2.0, 0), (60.0, 0), (120.0, 0)],
        dht_bootstrap=["router.bittorrent.com:6881"],
    )
    [dht] = by_title(diagnose(facts), "DHT")
    assert dht.severity == "error"
    assert dht.title == "DHT not ready: 0 nodes after 120 s"
    assert "UDP 6881 is bound" in dht.detail
    assert "no bootstrap node answered" in dht.detail
    assert "outbound UDP is likely blocked" in dht.fix.lower() or "Outbound UDP" in dht.fix
    assert "6881" in dht.fix


def test_dht_grace_period_is_not_an_error() -> None:
    facts = SessionFacts(uptime=5.0, listen_port=6881, dht_bootstrap=["a:1"])
    [dht] = by_title(diagnose(facts), "DHT")
    assert dht.severity == "info"


def test_no_incoming_connections_while_peers_exist_points_at_nat() -> None:
    facts = SessionFacts(
        uptime=900.0,
        listen_port=6881,
        listening=[Socket("0.0.0.0", 6881, "TCP")],
        peers_seen=12,
        peers_since=100.0,
        incoming_connections=0,
        dht=False,
    )
    [nat] = by_title(diagnose(facts), "No incoming")
    assert nat.severity == "warning"
    assert "NAT" in nat.fix and "6881" in nat.fix


def test_tracker_results_and_port_mapping_state() -> None:
    facts = SessionFacts(
        uptime=50.0,
        listen_port=6881,
        trackers=[
            TrackerFact("job/a", "http://t.example/announce", False, "HTTP 503", 0, 3),
            TrackerFact("job/a", "http://u.example/announce", True, "ok", 14, 0),
        ],
        upnp=True,
        port_mapping_errors=["UPnP: no router found"],
        dht=False,
    )
    findings = diagnose(facts)
    [bad] = by_title(findings, "t.example")
    assert bad.severity == "warning" and "HTTP 503" in bad.detail and "3 times" in bad.detail
    [good] = by_title(findings, "u.example")
    assert good.severity == "ok" and "14 peers" in good.detail
    [upnp] = by_title(findings, "mapping failed")
    assert "6881" in upnp.fix


def test_upnp_off_is_explained_with_the_port_to_forward() -> None:
    facts = SessionFacts(uptime=1.0, listen_port=51413, listening=[Socket("0.0.0.0", 51413, "TCP")])
    [off] = by_title(diagnose(facts), "UPnP and NAT-PMP are off")
    assert "51413" in off.fix


def test_taken_port_without_any_socket_is_an_error() -> None:
    facts = SessionFacts(
        uptime=3.0,
        listen_port=6881,
        listen_failures=[
            SocketFailure("0.0.0.0", 6881, "TCP", "Address already in use", "pid 7 (qbittorrent)")
        ],
        dht=False,
    )
    [bad] = by_title(diagnose(facts), "Cannot listen")
    assert bad.severity == "error"
    assert "qbittorrent" in bad.detail and "qbittorrent" in bad.fix

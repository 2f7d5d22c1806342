"""acquirectl doctor: rendering of the daemon's answer, and the round trip over a socket."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from pathlib import Path

import pytest

from acquired.daemon.commands.doctor import exit_status, render
from acquired.sources.torrent.doctor import SessionFacts, Socket, diagnose

SAMPLE = {
    "findings": [
        dataclasses.asdict(f)
        for f in diagnose(
            SessionFacts(
                uptime=120.0,
                listen_port=6881,
                listening=[Socket("0.0.0.0", 6881, "TCP"), Socket("0.0.0.0", 6881, "UDP")],
                dht_bootstrap=["router.bittorrent.com:6881"],
            )
        )
    ],
    "session": {
        "uptime": 120.0,
        "listen_port": 6881,
        "dht": True,
        "dht_nodes": 0,
        "dht_ready": False,
        "incoming_connections": 0,
        "external_address": None,
        "torrents": 2,
    },
}


def test_render_prints_each_finding_with_its_fix() -> None:
    text = render(SAMPLE)
    assert text.splitlines()[0].startswith(
        "BitTorrent session: port 6881 · DHT 0 nodes (not ready)"
    )
    assert "[ERROR] DHT not ready: 0 nodes after 120 s" in text
    assert "UDP 6881 is bound" in text
    assert "fix: Outbound UDP is likely blocked" in text
    assert "[info ] UPnP and NAT-PMP are off" in text
    assert exit_status(SAMPLE) == 1


def test_render_without_engine_and_healthy_exit_status() -> None:
    text = render({"findings": [], "session": None})
    assert "torrent engine is not running" in text
    ok = {"findings": [{"severity": "ok", "title": "DHT ready: 40 nodes", "detail": "", "fix": ""}]}
    assert exit_status(ok) == 0
    assert "[ok   ] DHT ready: 40 nodes" in render(ok)


def _fake_daemon(path: Path, reply: dict) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as r:
            assert json.loads(r.readline()) == {"cmd": "doctor"}
            conn.sendall(json.dumps({"ok": True, "result": reply}).encode() + b"\n")
        server.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("as_json", [False, True])
def test_acquirectl_doctor_asks_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    cli = pytest.importorskip("acquired.daemon.cli")
    sock = tmp_path / "acquired.sock"
    t = _fake_daemon(sock, SAMPLE)
    argv = ["--socket", str(sock), "doctor"] + (["--json"] if as_json else [])
    code = cli.main(argv)
    t.join(timeout=10)
    out = capsys.readouterr().out
    assert code == 1
    if as_json:
        assert json.loads(out) == SAMPLE
    else:
        assert "DHT not ready" in out and "fix:" in out

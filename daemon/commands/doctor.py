"""``acquirectl doctor [--json]``: why a swarm is slow or unreachable, in plain words.

The command asks the running daemon ``{"cmd": "doctor"}`` over the control socket. The
daemon answers with this result (JSON)::

    {
      "findings": [                      # engine.doctor(), as dataclasses.asdict(f)
        {"severity": "ok" | "info" | "warning" | "error",
         "title": "DHT not ready: 0 nodes after 120 s",
         "detail": "UDP 6881 is bound; no bootstrap node answered (...)",
         "fix": "Outbound UDP is likely blocked: open UDP 6881 ..."}
      ],
      "session": {                       # engine.session_status(); null without a torrent engine
        "uptime": 120.0, "listen_port": 6881,
        "listening": ["TCP 0.0.0.0:6881", "UDP 0.0.0.0:6881"],
        "listen_failures": ["TCP [::]:6881: Address already in use (held by pid 7 (x))"],
        "upnp": false, "natpmp": false,
        "dht": true, "dht_nodes": 0, "dht_ready": false,
        "dht_history": [[2.0, 0], [60.0, 0]], "dht_bootstrap_answered": [],
        "incoming_connections": 0, "peers_seen": 0,
        "external_address": null, "torrents": 1
      }
    }

Each finding is printed with its detail and fix; the exit status is 1 when any finding
is an error, else 0. ``--json`` prints the daemon's result unchanged.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

MARKS = {"ok": "ok   ", "info": "info ", "warning": "WARN ", "error": "ERROR"}


def render(result: dict[str, Any]) -> str:
    """The doctor's result as text for a terminal (pure; tests call it directly)."""
    lines: list[str] = []
    session = result.get("session")
    findings = result.get("findings") or []
    if session is None:
        lines.append("BitTorrent: the torrent engine is not running (torrent sources disabled).")
    else:
        dht = (
            f"DHT {session.get('dht_nodes', 0)} nodes"
            + (" (ready)" if session.get("dht_ready") else " (not ready)")
            if session.get("dht")
            else "DHT off"
        )
        facts = [
            f"port {session.get('listen_port')}",
            dht,
            f"{session.get('incoming_connections', 0)} incoming connections",
            f"external address {session.get('external_address') or 'not reported yet'}",
            f"{session.get('torrents', 0)} torrents",
            f"up {float(session.get('uptime') or 0):.0f} s",
        ]
        lines.append("BitTorrent session: " + " · ".join(facts))
    for f in findings:
        mark = MARKS.get(str(f.get("severity")), str(f.get("severity")))
        lines.append(f"[{mark}] {f.get('title', '')}")
        if f.get("detail"):
            lines.append(f"        {f['detail']}")
        if f.get("fix"):
            lines.append(f"        fix: {f['fix']}")
    if not findings and session is not None:
        lines.append("No findings.")
    return "\n".join(lines)


def exit_status(result: dict[str, Any]) -> int:
    """1 when any finding is an error, else 0."""
    return int(any(f.get("severity") == "error" for f in result.get("findings") or []))


def cmd_doctor(args: argparse.Namespace) -> int:
    """Ask the daemon for its torrent diagnostics and print them."""
    from acquired.daemon.cli import call

    result = call(args, {"cmd": "doctor"})
    if not isinstance(result, dict):
        result = {"findings": result or [], "session": None}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return exit_status(result)


def register(subparsers: Any) -> None:
    """Add ``doctor`` to acquirectl's parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="diagnose the BitTorrent session: ports, UPnP/NAT-PMP, DHT, trackers, NAT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.set_defaults(func=cmd_doctor)

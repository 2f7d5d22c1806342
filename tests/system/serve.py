"""HTTP mirror for the system tests, run *inside* the container (``systemd-run``).

    serve.py --port 8080 --dir /srv/www [--rate /big.bin=262144]

Serves every file under ``--dir`` with the tests' own server (ranges, validators) and
drips the paths named with ``--rate`` at that many bytes per second per request. Each
request is printed as one JSON line on stdout (so it lands in the journal of the
transient unit), and so are the bytes served per path, after every change.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.http_server import Fault, HttpTestServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--rate", action="append", default=[], metavar="PATH=BYTES_PER_S")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with HttpTestServer(port=args.port) as server:
        server.add_tree("", args.dir)
        for item in args.rate:
            path, _, rate = item.partition("=")
            server.fault(path, Fault(rate=float(rate)), times=None)
        print(json.dumps({"listening": server.base_url}), flush=True)
        seen = 0
        served: dict[str, int] = {}
        while not stop.wait(0.2):
            requests = server.requests
            for record in requests[seen:]:
                line = {"method": record.method, "path": record.path, "range": record.range}
                print(json.dumps({"request": line}), flush=True)
            seen = len(requests)
            now = {r.path: server.bytes_served(r.path) for r in requests}
            if now != served:
                served = now
                print(json.dumps({"served": served}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

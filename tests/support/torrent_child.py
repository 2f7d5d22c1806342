"""Runs a TorrentEngine in its own process (to be killed with SIGKILL by a test).

usage: python torrent_child.py STATE_DIR TORRENT SAVE_DIR PEER_PORT
Prints one line per event: ``progress DONE TOTAL``, ``resume``, ``finished``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acquired.sources.torrent import (
    ResumeSaved,
    TorrentEngine,
    TorrentFile,
    TorrentFinished,
    TorrentProgress,
    TorrentRequest,
)
from support.torrent_swarm import loopback_settings


def on_event(event: object) -> None:
    if isinstance(event, TorrentProgress):
        print(f"progress {event.done} {event.total}", flush=True)
    elif isinstance(event, ResumeSaved):
        print("resume", flush=True)
    elif isinstance(event, TorrentFinished):
        print("finished", flush=True)


def main() -> None:
    state, torrent, save, port = sys.argv[1:5]
    engine = TorrentEngine(loopback_settings(resume_interval=0.3), Path(state), on_event)
    engine.start()
    engine.add(
        TorrentRequest(
            "job/kill", TorrentFile(Path(torrent)), Path(save), peers=(("127.0.0.1", int(port)),)
        )
    )
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()

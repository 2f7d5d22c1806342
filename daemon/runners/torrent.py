"""The torrent runner: adds torrents to the engine and probes swarms, off the state thread."""

from __future__ import annotations

import threading

from acquired.daemon.errors import describe
from acquired.daemon.manifest import TorrentSpec
from acquired.daemon.messages import SourceChosen, TorrentAdded, TransferEnded
from acquired.daemon.runners import Post, spawn
from acquired.daemon.torrents import probe_and_choose
from acquired.sources.choice import Decision
from acquired.sources.torrent import TorrentEngine, TorrentRequest


class TorrentRunner:
    """Talks to the engine for the state thread; the engine's own events arrive through
    its alert pump (``TorrentEvent``)."""

    def __init__(self, post: Post) -> None:
        self._post = post

    def add(
        self, engine: TorrentEngine, request: TorrentRequest, token: int, file_ids: list[int]
    ) -> threading.Thread:
        """Add (or resume) ``request`` in the engine; ``TorrentAdded`` when it is in, else
        ``TransferEnded`` with the error for each file."""

        def work() -> None:
            try:
                in_session = engine.keys()
                if request.key in in_session:
                    engine.resume(request.key)  # paused earlier: the session still has it
                else:
                    engine.add(request)
            except Exception as exc:
                for file_id in file_ids:
                    self._post(TransferEnded(file_id, token, None, exc))
            else:
                self._post(TorrentAdded(request.key, token))

        return spawn(f"torrent-add-{request.key}", work)

    def probe(
        self,
        engine: TorrentEngine,
        file_id: int,
        token: int,
        tspec: TorrentSpec,
        *,
        mirrors: list[str],
        window: float,
    ) -> threading.Thread:
        """Watch the swarm and measure the mirrors; ``SourceChosen`` says which source."""

        def work() -> None:
            try:
                decision = probe_and_choose(
                    engine, tspec, mirrors, window=window, single_file=tspec.file is None
                )
            except Exception as exc:
                decision = Decision("http", f"probing failed ({describe(exc).message}); chose http")
            self._post(SourceChosen(file_id, token, decision))

        return spawn(f"choose-{file_id}", work)

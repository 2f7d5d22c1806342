"""The HTTP runner: one ``HttpDownload`` per file, on the shared worker pool."""

from __future__ import annotations

from concurrent.futures import Future

from acquired.daemon.messages import SourceEvent, TransferEnded
from acquired.daemon.runners import Post, WorkerPool
from acquired.sources.http import FileRequest, HttpDownload, HttpOptions


class HttpRunner:
    """Starts downloads; their events and their end come back as messages."""

    def __init__(self, post: Post, pool: WorkerPool) -> None:
        self._post = post
        self._pool = pool

    def start(
        self, file_id: int, token: int, request: FileRequest, options: HttpOptions
    ) -> tuple[HttpDownload, Future[None]]:
        """Fetch ``request`` on a worker; returns the download (to cancel) and its future."""
        post = self._post

        def on_event(event: object) -> None:
            post(SourceEvent(file_id, token, event))

        download = HttpDownload(request, options, on_event)
        return download, self._pool.submit(self._run, download, file_id, token)

    def _run(self, download: HttpDownload, file_id: int, token: int) -> None:
        try:
            result = download.run()
        except BaseException as exc:
            self._post(TransferEnded(file_id, token, None, exc))
        else:
            self._post(TransferEnded(file_id, token, result, None))

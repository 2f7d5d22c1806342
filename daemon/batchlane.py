"""The small-file lane, on the state thread: which files go to the small-file runner
(``runners/batch.py``) instead of one ``HttpDownload`` each, how they start, and how a
flush of their ends is applied — in one pass, one store transaction, the job's end
checked once.

A file goes there when a whole-file GET is all it needs: its size is known and small
(``BATCH_FILE``), it comes from HTTP mirrors only (no torrent, no probe), and it has no
checkpoint to resume from (a file interrupted in the segmented path keeps its resume).
Everything else — large files, resumes, torrents — keeps the one-download-per-file path
with its mirror ranking, segments and stall switching.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from acquired.daemon.lifecycle import STRICT, Event, InvalidTransition
from acquired.daemon.manifest import FileSpec
from acquired.daemon.messages import BatchEnded, TransferEnded
from acquired.daemon.store import FileRow
from acquired.sources.http import FileRequest, HttpOptions
from acquired.sources.http.batch import BatchItem

if TYPE_CHECKING:
    from acquired.daemon.service import Service

LOG = logging.getLogger("acquired.service")


# Files of a known size up to BATCH_FILE go to the small-file runner. It reports a file
# only once it is in place (no progress, no checkpoint on the way): below this size a
# file takes a round trip or two, so neither would ever be seen; larger small files keep
# their progress and resume on the one-download path.
BATCH_FILE = 256 << 10


def batchable(size: int | None, mirrors: int, resume: dict[str, Any] | None) -> bool:
    """Whether a file fetched over HTTP goes to the small-file runner."""
    return size is not None and size <= BATCH_FILE and mirrors > 0 and resume is None


class SmallLane:
    """Starts small files on the small-file runner and applies their ends."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def wanted(self, row: FileRow, spec: FileSpec) -> bool:
        """Whether a queued small file will likely start on the small-file runner (its
        lane is counted before it starts; ``start`` decides for good)."""
        torrent = spec.sources.torrent is not None and self.svc.torrents is not None
        return (
            batchable(row.size, len(spec.sources.mirrors), None)
            and row.digests is None
            and not torrent
        )

    def start(
        self,
        row: FileRow,
        request: FileRequest,
        options: HttpOptions,
        *,
        token: int,
        event: Event,
        source: str,
    ) -> bool:
        """Start ``row`` on the small-file runner if it belongs there (True: it did, or
        the move refused it); False: the caller starts a download of its own."""
        if not batchable(request.size, len(request.urls), request.resume):
            return False
        # The last error stays shown while the file is tried again.
        if self.svc.move(row.id, event, source="http", error=row.error) is None:
            return True
        item = BatchItem(
            key=token,
            urls=tuple(request.urls),
            dest=request.dest,
            root=request.root,
            size=request.size,
            digests=dict(request.digests),
            limiters=options.limiters,
        )
        ticket = self.svc.batch_runner.start(row.id, token, item, options)
        self.svc.active[row.id] = self.svc.track(
            row, token, ticket.future, source=source, handle=ticket
        )
        return True

    def on_batch_ended(self, message: BatchEnded) -> None:
        """Apply every end of a flush; one file's trouble is that file's alone."""
        with self.svc.deferred_checks():
            for file_id, token, result, error in message.ends:
                try:
                    self.svc.outcomes.on_transfer_ended(
                        TransferEnded(file_id, token, result, error)
                    )
                except Exception as exc:
                    if STRICT and isinstance(exc, InvalidTransition):
                        raise
                    LOG.exception("internal error while ending file %s", file_id)

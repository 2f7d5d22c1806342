"""The store's resume checkpoints: a source's resume state per file, saved with the
progress it proves. A part of ``Store``: it uses the store's one connection."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any


class CheckpointQueries:
    """Save, load and clear resume checkpoints (mixed into ``Store``)."""

    _db: Any  # the store's connection

    def _tx(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # the store's transaction

    def save_checkpoint(self, file_id: int, state: dict[str, Any], bytes_done: int) -> None:
        """Record a source's resume state and the progress it proves, atomically."""
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?) ON CONFLICT (file_id)"
                " DO UPDATE SET state = excluded.state, updated = excluded.updated",
                (file_id, json.dumps(state), now),
            )
            self._db.execute(
                "UPDATE files SET bytes_done = ?, updated = ? WHERE id = ?",
                (bytes_done, now, file_id),
            )

    def load_checkpoint(self, file_id: int) -> dict[str, Any] | None:
        """A file's resume state, if any."""
        r = self._db.execute("SELECT state FROM checkpoints WHERE file_id = ?", (file_id,))
        row = r.fetchone()
        return json.loads(row[0]) if row else None

    def clear_checkpoint(self, file_id: int) -> None:
        """Forget a file's resume state."""
        self._db.execute("DELETE FROM checkpoints WHERE file_id = ?", (file_id,))

    def clear_checkpoints(self, file_ids: Sequence[int]) -> None:
        """Forget many files' resume state."""
        self._db.executemany("DELETE FROM checkpoints WHERE file_id = ?", [(i,) for i in file_ids])

"""Parsed manifests, one per job, kept in memory: read from the state dir off the state
thread once, never re-validated per file start."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from acquired.daemon.errors import ErrorInfo, describe
from acquired.daemon.manifest import FileSpec, Manifest, load_manifest
from acquired.daemon.messages import ManifestLoaded, Message
from acquired.daemon.store import JobRow

LOG = logging.getLogger("acquired.service")


class ManifestNotLoaded(RuntimeError):
    """A file's spec was asked for before its job's manifest was loaded (a bug)."""


class ManifestCache:
    """Job id -> its parsed manifest. Used by the state thread only; loads run on
    worker threads that post ``ManifestLoaded``."""

    def __init__(self, post: Callable[[Message], None]) -> None:
        self._post = post
        self._models: dict[str, tuple[str, Manifest]] = {}
        self._loading: set[str] = set()
        self._broken: dict[str, ErrorInfo] = {}

    def put(self, job_id: str, digest: str, manifest: Manifest) -> None:
        """Keep a manifest the intake has just parsed."""
        self._models[job_id] = (digest, manifest)
        self._broken.pop(job_id, None)

    def drop(self, job_id: str) -> None:
        """Forget a job's manifest (the job was replaced or removed)."""
        self._models.pop(job_id, None)
        self._broken.pop(job_id, None)

    def get(self, job: JobRow) -> Manifest | None:
        """The job's manifest, or None while it is being loaded (a load starts if none
        runs). A manifest that cannot be loaded raises its error each time it is asked."""
        cached = self._models.get(job.id)
        if cached is not None and cached[0] == job.manifest_digest:
            return cached[1]
        broken = self._broken.get(job.id)
        if broken is not None:
            raise ManifestUnusable(broken)
        if job.id not in self._loading:
            self._loading.add(job.id)
            path, job_id, digest = Path(job.manifest_path), job.id, job.manifest_digest
            threading.Thread(
                target=self._load, args=(path, job_id, digest), name=f"load-{job_id}", daemon=True
            ).start()
        return None

    def spec(self, job: JobRow, idx: int) -> FileSpec:
        """One file's spec from its job's manifest (which must be loaded)."""
        manifest = self.get(job)
        if manifest is None:
            raise ManifestNotLoaded(f"the manifest of job '{job.id}' is not loaded yet")
        return manifest.files[idx]

    def _load(self, path: Path, job_id: str, digest: str) -> None:
        try:
            manifest = load_manifest(path)
        except BaseException as exc:
            self._post(ManifestLoaded(job_id, digest, None, exc))
        else:
            self._post(ManifestLoaded(job_id, digest, manifest, None))

    def loaded(self, message: ManifestLoaded) -> None:
        """Take a finished load (on the state thread)."""
        self._loading.discard(message.job_id)
        if message.error is not None:
            info = describe(message.error)
            LOG.error("job %s: cannot load its manifest: %s", message.job_id, info.message)
            self._broken[message.job_id] = info
            return
        self._models[message.job_id] = (message.digest, message.manifest)


class ManifestUnusable(Exception):
    """The stored manifest of a job can no longer be read or parsed."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.code = info.code
        self.hint = info.hint
        self.details = info.details

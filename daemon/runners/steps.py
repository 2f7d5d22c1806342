"""The steps runner: a file's unpack steps, and a job's own steps once every file is done."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from acquired.common import safepath
from acquired.daemon.messages import JobStepProgress, JobStepsEnded, StepProgress, TransferEnded
from acquired.daemon.runners import Post, StepHandle, spawn
from acquired.sources.http.pip_mirrors import prefetch_wheels
from acquired.unpack import finish_job, process_file


class StepsRunner:
    """Runs steps on threads of their own; progress and the end come back as messages."""

    def __init__(self, post: Post) -> None:
        self._post = post

    def unpack(
        self,
        file_id: int,
        token: int,
        path: Path,
        *,
        job_root: Path,
        data_root: Path,
        digests: dict[str, str],
        steps: list[Any],
        workers: int | None,
        place_from: Path | None = None,
    ) -> tuple[StepHandle, threading.Thread]:
        """Place a watched copy at ``path`` (if given) and run the file's unpack steps."""
        handle = StepHandle()
        post = self._post

        def progress(label: str, done: int, total: int) -> None:
            post(StepProgress(file_id, token, label, done, total))

        def work() -> None:
            try:
                if place_from is not None:
                    progress("place", 0, 1)
                    place(place_from, path, data_root)
                outcome = process_file(
                    path,
                    job_root=job_root,
                    data_root=data_root,
                    digests=digests,
                    steps=steps,
                    verified=True,
                    workers=workers,
                    progress=progress,
                    cancel=handle.event,
                )
            except BaseException as exc:
                post(TransferEnded(file_id, token, None, exc))
            else:
                post(TransferEnded(file_id, token, outcome, None))

        return handle, spawn(f"unpack-{file_id}", work)

    def finish(
        self,
        job_id: str,
        token: int,
        job_root: Path,
        *,
        pip: Any,
        checksums: list[Any],
        layouts: list[Any],
        listings: list[Any],
        workers: int | None,
    ) -> tuple[StepHandle, threading.Thread]:
        """The job's own steps: the pip prefetch, checksum files, layouts, listings."""
        handle = StepHandle()
        post = self._post

        def progress(label: str, done: int, total: int) -> None:
            post(JobStepProgress(job_id, token, label, done, total))

        def work() -> None:
            try:
                if pip is not None:
                    progress(f"pip download into {pip.target}", 0, 1)
                    # Rank the indexes on a project the job needs: a private index may
                    # not carry pip itself.
                    project = re.split(r"[^A-Za-z0-9._-]", pip.requirements[0], maxsplit=1)[0]
                    prefetch_wheels(
                        pip.requirements, job_root / pip.target, pip.index_urls, project=project
                    )
                finish_job(
                    job_root,
                    checksums=checksums,
                    layouts=layouts,
                    listings=listings,
                    workers=workers,
                    progress=progress,
                    cancel=handle.event,
                )
            except BaseException as exc:
                post(JobStepsEnded(job_id, token, exc))
            else:
                post(JobStepsEnded(job_id, token, None))

        return handle, spawn(f"finish-{job_id}", work)


def place(source: Path, target: Path, root: Path) -> None:
    """Put a watched copy at ``target`` atomically: a hard link where the filesystem
    allows it (no bytes copied), else a copy flushed to disk first; never through a link
    below ``root``."""
    safepath.place_copy(source, root, safepath.relative_to(root, target))

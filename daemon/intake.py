"""Taking in a manifest without holding the state thread.

A worker thread reads, parses and validates the manifest, resolves its paths, computes
its digest and what each file expects, and saves the text into the state dir under a
temporary name; it posts one ``IntakeParsed`` message. The state thread then decides in
a few milliseconds (known, conflicting, new, replacing), creates the job row, and puts
the file rows into the store in chunks between ticks (``IntakeDesk.tick``), so a
manifest of 100,000 files never holds the loop for long. A job whose rows were not all
in when the daemon stopped is taken in again from its saved manifest at the next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acquired.common.safepath import UnsafePath
from acquired.daemon.errors import DaemonError, describe
from acquired.daemon.inbox import read_manifest, reject_file
from acquired.daemon.lifecycle import FileState, job_is_active
from acquired.daemon.manifest import Manifest, parse_manifest, resolve_under
from acquired.daemon.messages import IntakeParsed, Message, Reply
from acquired.daemon.store import CHUNK, NewFile, Store, expect_key

DEFAULT_MAX_MANIFEST = 64 * 1024**2
"""What is read of a manifest file when the configuration names no cap."""

LOG = logging.getLogger("acquired.service")

# How long one tick may spend putting file rows into the store.
TICK_BUDGET = 0.02


class JobConflict(DaemonError):
    """A different manifest under the name of an active job, without ``--replace``."""

    code = "manifest.conflict"
    hint = "Use `acquirectl add --replace FILE` to replace the active job, or rename the job."


def prepare(
    data: bytes | Path | None,
    source_name: str,
    *,
    data_root: Path,
    manifests_dir: Path,
    inbox_path: Path | None = None,
    replace: bool = False,
    reply: Reply | None = None,
    max_size: int = DEFAULT_MAX_MANIFEST,
) -> IntakeParsed:
    """Everything about a manifest that needs no store: run on the intake worker."""
    base = IntakeParsed(source_name, replace, inbox_path, reply)
    try:
        if data is None:
            assert inbox_path is not None
            data = inbox_path
        if isinstance(data, Path):
            data = read_manifest(data, max_size)
        manifest = parse_manifest(data, source_name)
        dest = resolve_under(data_root, manifest.destination, "destination", source_name)
        check_paths(manifest, dest, source_name)
        suffix = ".json" if data.lstrip()[:1] == b"{" else ".toml"
        saved = manifests_dir / f".{manifest.name}{suffix}.incoming"
        saved.write_bytes(data)
        files = [(f.path, f.size, expect_key(f.size, f.digests)) for f in manifest.files]
        return IntakeParsed(
            source_name,
            replace,
            inbox_path,
            reply,
            manifest=manifest,
            digest=digest_in_pieces(manifest),
            destination=str(dest.relative_to(data_root.resolve())),
            saved=saved,
            suffix=suffix,
            files=files,
            warnings=manifest.warnings(),
        )
    except BaseException as exc:
        return IntakeParsed(**{**base.__dict__, "error": exc})


def check_paths(manifest: Manifest, dest: Path, source_name: str) -> None:
    """``resolve_under`` for every path the job writes or reads, resolving each folder
    once: a job of 100,000 files in 100 folders resolves 100 folders, and looks at a
    file itself only if it already exists as a link."""
    folders: set[str] = set()
    for field_path, relative in manifest.relative_paths():
        parent = relative.rpartition("/")[0] or "."
        if parent not in folders:
            resolve_under(dest, parent, field_path, source_name)
            folders.add(parent)
        if (dest / relative).is_symlink():
            resolve_under(dest, relative, field_path, source_name)


_FILES = "\x00files\x00"


def digest_in_pieces(manifest: Manifest) -> str:
    """``manifest_digest``, computed one file at a time: the same canonical JSON, but no
    single call that holds the interpreter for the whole manifest (the state thread
    must get its turn while a manifest of 100,000 files is taken in)."""
    top = manifest.model_dump(mode="json", exclude={"files"})
    top["files"] = _FILES
    head, sep, tail = _canonical(top).partition(_canonical(_FILES))
    assert sep, "the placeholder for the files is in the canonical text"
    h = hashlib.sha256(head.encode("utf-8"))
    h.update(b"[")
    for i, f in enumerate(manifest.files):
        if i:
            h.update(b",")
        h.update(_canonical(f.model_dump(mode="json")).encode("utf-8"))
    h.update(b"]")
    h.update(tail.encode("utf-8"))
    return h.hexdigest()


def _canonical(value: object) -> str:
    # As manifest_digest writes it.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class IntakeWorker:
    """One thread that prepares manifests in the order they arrive."""

    def __init__(
        self,
        data_root: Path,
        manifests_dir: Path,
        post: Callable[[Message], None],
        max_size: int = DEFAULT_MAX_MANIFEST,
    ) -> None:
        self._data_root = data_root
        self._max_size = max_size
        self._manifests_dir = manifests_dir
        self._post = post
        self._jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(
        self,
        data: bytes | Path | None,
        source_name: str,
        *,
        inbox_path: Path | None = None,
        replace: bool = False,
        reply: Reply | None = None,
    ) -> None:
        """Queue a manifest: its bytes, a file to read them from, or None to read
        ``inbox_path`` (which is removed once the manifest is taken)."""
        self._jobs.put(
            {
                "data": data,
                "source_name": source_name,
                "inbox_path": inbox_path,
                "replace": replace,
                "reply": reply,
            }
        )
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="intake", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            self._post(
                prepare(
                    job.pop("data"),
                    job.pop("source_name"),
                    data_root=self._data_root,
                    manifests_dir=self._manifests_dir,
                    max_size=self._max_size,
                    **job,
                )
            )


@dataclass
class _Filling:
    job_id: str
    rows: Iterator[NewFile]
    count: int
    started: float = field(default_factory=time.monotonic)


class IntakeDesk:
    """The state thread's side of intake: decide, create the job, fill in its files."""

    def __init__(
        self,
        store: Store,
        manifests_dir: Path,
        *,
        drop_job: Callable[[str], dict[tuple[str, str], Any]],
        accepted: Callable[[str, str, Manifest], None],
        complete: Callable[[str], None],
        event: Callable[..., None],
    ) -> None:
        self.store = store
        self.manifests_dir = manifests_dir
        self._drop_job = drop_job
        self._accepted = accepted
        self._complete = complete
        self._event = event
        self._filling: list[_Filling] = []

    @property
    def filling(self) -> bool:
        """Whether file rows are waiting to go into the store."""
        return bool(self._filling)

    def busy(self, job_id: str) -> bool:
        """Whether the job's files are still being put into the store."""
        return any(f.job_id == job_id for f in self._filling)

    def accept(self, p: IntakeParsed) -> dict[str, Any]:
        """Turn a prepared manifest into a job (or recognise it as known); raises what
        the parse raised, or JobConflict."""
        if p.error is not None:
            raise p.error
        manifest = p.manifest
        assert manifest is not None and p.saved is not None
        existing = self.store.get_job(manifest.name)
        carried: dict[tuple[str, str], Any] = {}
        if existing is not None:
            known = existing.manifest_digest == p.digest and existing.complete
            if known and not self.busy(manifest.name):
                p.saved.unlink(missing_ok=True)
                return {"job": manifest.name, "created": False, "message": "already known"}
            totals = self.store.job_totals(manifest.name)
            active = job_is_active(totals.counts, existing.finish) or not existing.complete
            if active and not p.replace:
                p.saved.unlink(missing_ok=True)
                raise JobConflict(
                    f"{p.source_name}: a different manifest for job '{manifest.name}' is"
                    " active; it was not replaced",
                    job=manifest.name,
                )
            self._filling = [f for f in self._filling if f.job_id != manifest.name]
            carried = self._drop_job(manifest.name)
        saved = self.manifests_dir / f"{manifest.name}{p.suffix}"
        for old in self.manifests_dir.glob(f"{manifest.name}.*"):
            if old.suffix in (".toml", ".json") and old != saved:
                old.unlink(missing_ok=True)
        os.replace(p.saved, saved)
        warnings = p.warnings
        self.store.add_job(
            manifest.name,
            manifest_digest=p.digest,
            manifest_path=str(saved),
            destination=p.destination,
            warnings=warnings,
            finish="pending" if manifest.has_job_steps or manifest.kind == "urllist" else None,
            kind=manifest.kind,
            connections=manifest.connections,
            bandwidth_limit=manifest.bandwidth_limit,
            complete=False,
        )
        self._accepted(manifest.name, p.digest, manifest)
        self._filling.append(_Filling(manifest.name, _rows(p.files, carried), len(p.files)))
        verb = "replaced" if existing is not None else "added"
        self._event("info", f"job {verb}: {len(p.files)} file(s)", job_id=manifest.name)
        for w in warnings:
            self._event("warning", w, job_id=manifest.name)
        return {"job": manifest.name, "created": True, "message": f"job {verb}"}

    def tick(self, budget: float = TICK_BUDGET) -> None:
        """Put file rows into the store, a chunk at a time, for at most ``budget`` s."""
        until = time.monotonic() + budget
        while self._filling and time.monotonic() < until:
            current = self._filling[0]
            chunk = [row for _, row in zip(range(CHUNK), current.rows, strict=False)]
            if chunk:
                self.store.add_files(current.job_id, chunk)
                continue
            self._filling.pop(0)
            self.store.set_complete(current.job_id)
            LOG.info(
                "job %s: %d file(s) in the store in %.1f s",
                current.job_id,
                current.count,
                time.monotonic() - current.started,
                extra={"job": current.job_id},
            )
            self._complete(current.job_id)

    def reject(self, path: Path, exc: BaseException, inbox: Path) -> None:
        """Move a manifest that was not accepted to ``inbox/rejected`` with the reason."""
        info = describe(exc)
        text = f"{info.message}\n\nWhat to do: {info.hint}\n(error code: {info.code})\n"
        try:
            # Never through a link planted in rejected/ (a group member can write there).
            reject_file(inbox, path.name, text)
        except (OSError, UnsafePath) as err:
            LOG.error("cannot move rejected manifest %s: %s", path, err)
            return
        LOG.error("rejected manifest %s: %s", path.name, info.message, extra={"code": info.code})
        self.store.add_event(
            "error", f"rejected manifest {path.name}: {info.message}", code=info.code
        )


def _rows(
    files: list[tuple[str, int | None, str]], carried: dict[tuple[str, str], Any]
) -> Iterator[NewFile]:
    """The new job's file rows; a file whose path, size and checksums did not change
    keeps its progress (done stays done, the rest resumes from its checkpoint)."""
    for i, (path, size, expect) in enumerate(files):
        old = carried.get((path, expect))
        if old is None:
            yield NewFile(i, path, size, expect)
            continue
        state, bytes_done, checkpoint = old
        if state == FileState.DONE:
            yield NewFile(i, path, size, expect, "done", bytes_done)
        else:
            yield NewFile(i, path, size, expect, "queued", bytes_done, checkpoint)

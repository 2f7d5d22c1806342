"""Safe, atomic, resumable extraction of one archive into a target folder.

What a call does, in order:

1. takes the step's lock (two calls for the same archive and target never overlap);
2. if the step's marker says it was finished from an archive with the same digest and
   everything it put in place is still there, returns at once (``skipped``);
3. cleans up what an interrupted earlier run left (staging folders, half-done moves);
4. extracts into a fresh *staging* folder on the target's filesystem, under the rules and
   limits of :mod:`acquired.unpack.safety` — nested archives in parallel worker processes;
5. moves the result *into place* (below), flushes the filesystem, writes the marker;
6. deletes the archive if asked (only now, never before the marker exists).

**Into place.** The staged tree is merged into the target without overwriting anything:
each staged entry whose name is free in the target is renamed there whole (one rename
for a whole folder); a staged folder whose name is an existing folder is merged entry by
entry, recursively; a staged entry whose name is taken by a file, or by a folder where the
archive has a file, is a :class:`TargetConflict` and nothing is moved. So several archives
may fill one folder (``part1.tar`` and ``part2.tar`` both holding ``images/``), but no
step ever replaces another step's or the user's files. What was moved is recorded (first
in a journal, then in the marker): a rerun after a crash removes exactly those paths, and
a new archive (another digest) replaces exactly the previous extraction's.

**Bookkeeping** lives outside the target so that a dataset folder holds only the dataset
(``ImageFolder`` treats every sub-folder as a class): by default in
``<target's parent>/.acquired/<target's name>/`` — the marker ``<archive name>.json``,
the lock, the journal, and the staging folders. When that folder is on another
filesystem than the target, staging moves to ``<target>/.acquired-staging-*`` instead.

**Crashes.** A SIGKILL at any point leaves either no marker (the next call removes the
staging folder — after waiting for any orphaned worker to die — and extracts again) or
the marker (the step is done). Worker processes die with the process that started them
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from acquired.common import safepath

from . import _engine, _readers, formats, placement
from ._engine import Budget, Shared, Throttle, Writer
from ._nested import Nested, remove, writers_lock
from .errors import (
    ArchiveMissing,
    CorruptArchive,
    ReservedName,
    TargetConflict,
    WriteFailed,
)
from .safety import Limits, check_symlinks_resolve_inside

__all__ = ["ExtractResult", "Limits", "default_meta_dir", "extract", "read_marker"]

MARKER_VERSION = 1

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction put in place.

    ``outputs`` are the paths (relative to ``target``) the step created: whole entries
    renamed into place, or, inside merged folders, the entries moved into them.
    ``entries``/``files``/``bytes`` count what was written (all processes together).
    """

    archive: Path
    target: Path
    format: str
    entries: int
    files: int
    bytes: int
    outputs: tuple[str, ...]
    skipped: bool
    marker: Path


def default_meta_dir(target: Path) -> Path:
    """Where the bookkeeping of extractions into ``target`` lives by default."""
    target = Path(os.path.abspath(target))
    if target.parent == target:
        return target / ".acquired"
    return target.parent / ".acquired" / target.name


def read_marker(marker: Path) -> dict[str, Any] | None:
    """The marker's content, or ``None`` if absent or unreadable."""
    try:
        data = json.loads(marker.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == MARKER_VERSION else None


def _below(anchor: Path | None, path: Path) -> str | None:
    """``path`` relative to ``anchor`` when it lies below it (then it is opened beneath
    it, without following links), else ``None``."""
    if anchor is None or not str(path).startswith(str(anchor).rstrip("/") + "/"):
        return None
    return safepath.relative_to(anchor, path)


def _write_json_atomic(path: Path, data: dict[str, Any], anchor: Path | None = None) -> None:
    rel = _below(anchor, path)
    if anchor is not None and rel is not None:
        safepath.write_beneath(anchor, rel, json.dumps(data, indent=1).encode(), sync_dir=True)
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (one call instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(
    path: Path, how: int, timeout: float | None = None, anchor: Path | None = None
) -> Iterator[int]:
    rel = _below(anchor, path)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    if anchor is not None and rel is not None:
        fd = safepath.open_beneath(anchor, rel, flags, 0o644)
    else:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, how)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, how | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise WriteFailed(
                            f"{path.parent} is still being written by another process",
                            path=str(path),
                        ) from None
                    time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)


_remove = remove


def _key(archive: Path) -> str:
    """The archive's name in bookkeeping names (``staging-KEY-TOKEN``, ``KEY.moving.json``):
    a long name is shortened with a hash of it, so these stay within NAME_MAX whatever
    the archive is called."""
    name = archive.name.replace(os.sep, "_")
    if len(name.encode("utf-8")) <= 96:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    head = name.encode("utf-8", "surrogateescape")[:64].decode("utf-8", "ignore")
    return f"{head}-{digest}"


class _Paths:
    """The bookkeeping paths of one (archive, target) step."""

    def __init__(
        self, archive: Path, target: Path, meta_dir: Path, anchor: Path | None = None
    ) -> None:
        self.anchor = anchor
        self.key = _key(archive)
        self.meta = meta_dir
        self.marker = meta_dir / f"{self.key}.json"
        self.journal = meta_dir / f"{self.key}.moving.json"
        self.lock = meta_dir / f"{self.key}.lock"
        # Shared by every step that places into this target.
        self.placement = meta_dir / "placement.lock"
        self.target = target

    def staging_prefixes(self) -> list[tuple[Path, str]]:
        return [
            (self.meta, f"staging-{self.key}-"),
            (self.target, f".acquired-staging-{self.key}-"),
        ]

    def new_staging(self) -> Path:
        token = secrets.token_hex(6)
        if os.stat(self.meta).st_dev == os.stat(self.target).st_dev:
            return self.meta / f"staging-{self.key}-{token}"
        return self.target / f".acquired-staging-{self.key}-{token}"


_writers_lock = writers_lock


def _clean_stale(paths: _Paths) -> None:
    """Remove staging folders of interrupted runs, once no process writes into them."""
    for folder, prefix in paths.staging_prefixes():
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith(prefix) or name.endswith(".lock"):
                continue
            stale = folder / name
            lock = _writers_lock(stale)
            with _flock(lock, fcntl.LOCK_EX, timeout=120, anchor=paths.anchor):
                _remove(stale)
                _remove(stale.with_name(stale.name + ".inner"))
            _remove(lock)


def _undo(target_fd: int, outputs: list[str]) -> None:
    for rel in sorted(outputs, key=lambda r: r.count("/"), reverse=True):
        placement.remove_beneath(target_fd, rel)


def _identity(archive: Path, digest: str | None) -> str | None:
    if digest:
        return digest
    try:
        st = archive.stat()
    except FileNotFoundError:
        return None
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def _marker_valid(
    data: dict[str, Any] | None, identity: str | None, nested: bool, target: Path
) -> bool:
    if data is None:
        return False
    if identity is not None and data.get("identity") != identity:
        return False
    if bool(data.get("nested")) != nested:
        return False
    outputs = data.get("outputs")
    if not isinstance(outputs, list):
        return False
    return all(os.path.lexists(target / str(rel)) for rel in outputs)


def _plan_moves(staging: Path, target: Path) -> list[str]:
    moves: list[str] = []
    conflicts: list[str] = []

    def walk(rel: str) -> None:
        with os.scandir(staging / rel if rel else staging) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            r = f"{rel}/{entry.name}" if rel else entry.name
            dest = target / r
            if not os.path.lexists(dest):
                moves.append(r)
            elif entry.is_dir(follow_symlinks=False) and dest.is_dir() and not dest.is_symlink():
                walk(r)
            else:
                conflicts.append(r)

    walk("")
    if conflicts:
        raise TargetConflict(
            f"{len(conflicts)} extracted path(s) already exist in {target}, e.g. {conflicts[0]}",
            target=str(target),
            paths=conflicts[:100],
            count=len(conflicts),
        )
    return moves


def extract(  # noqa: PLR0917 - the documented contract takes these positionally
    archive: Path,
    target: Path,
    fmt: str | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass, safe as a default
    workers: int | None = None,
    progress: Progress | None = None,
    *,
    nested: bool = False,
    digest: str | None = None,
    delete_archive: bool = False,
    cancel: threading.Event | None = None,
    meta_dir: Path | None = None,
    before_place: Callable[[], object] | None = None,
    root: Path | None = None,
    base: Path | None = None,
) -> ExtractResult:
    """Extract ``archive`` into ``target`` safely, atomically and resumably.

    ``fmt``: a format name (:data:`acquired.unpack.formats.FORMATS`) or ``None``/``auto``
    to decide from the content. ``nested``: members that are archives themselves
    (``n01440764.tar``) are extracted into a folder named after them (``n01440764/``)
    instead of being written, by ``workers`` processes (default: one per CPU).
    ``digest``: the archive's verified digest (e.g. ``"sha256:<hex>"``), recorded in the
    marker; without it the archive's size and mtime stand in. ``progress(done, total)``:
    bytes of the archive processed. ``cancel``: set it to stop (raises
    :class:`ExtractCancelled`; the step starts over next time). ``meta_dir``: where the
    marker and staging live (default :func:`default_meta_dir`). ``before_place``: called
    once the staging folder is complete and before anything is placed; if it raises, the
    staging folder is removed and the error propagates (the pipeline verifies the
    archive's digest concurrently and gates placement on it). ``root``: the folder
    nothing may leave (the job's destination; default ``target``): ``target`` and the
    bookkeeping are created below it without following any link (a link there is refused
    with :class:`~acquired.common.safepath.PathEscapes`), the bookkeeping of ``into="."``
    lives in ``root/.acquired``, entries are moved into place through descriptors of
    folders checked to be still the ones opened, and no symlink placed — with the ones
    placed before — may resolve outside ``root`` (:mod:`acquired.unpack.placement`).
    ``base``: a trusted folder above ``root`` (the data root): ``root`` itself is then
    opened beneath it, so a destination swapped for a link is refused too.

    Raises the :mod:`acquired.unpack.errors` classes; on any error nothing is left in
    ``target`` (the staging folder is removed).
    """
    archive = Path(os.path.abspath(archive))
    target = Path(os.path.abspath(target))
    top = Path(os.path.abspath(root)) if root is not None else None
    anchor = Path(os.path.abspath(base)) if base is not None and top is not None else top
    try:
        meta, target_fd, links_meta = _open_target(target, top, anchor, meta_dir)
    except OSError as exc:
        raise WriteFailed(f"cannot create {target}: {exc.strerror}", path=str(target)) from None
    try:
        return _extract_locked(
            archive,
            target,
            fmt,
            limits,
            workers,
            progress,
            _Paths(archive, target, Path(os.path.abspath(meta)), anchor),
            _Place(top or target, anchor or target, target_fd, links_meta),
            nested=nested,
            digest=digest,
            delete_archive=delete_archive,
            cancel=cancel,
            before_place=before_place,
        )
    finally:
        os.close(target_fd)


@dataclass(frozen=True)
class _Place:
    """Where placement happens: the folder nothing may leave, a descriptor of the target
    opened beneath it, and where the index of placed links lives."""

    root: Path
    anchor: Path
    target_fd: int
    links_meta: Path

    def open(self, folder: Path) -> int:
        """A descriptor of ``folder`` (staging), opened beneath the anchor when it lies
        there, so everything written into it stays in the folder that was created."""
        if str(folder).startswith(str(self.anchor).rstrip("/") + "/"):
            return safepath.open_dir_beneath(self.anchor, safepath.relative_to(self.anchor, folder))
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def check(self, target: Path) -> None:
        """Refuse to place when the target is no longer the folder opened at the start."""
        placement.same_folder(
            self.target_fd, self.anchor, safepath.relative_to(self.anchor, target)
        )


def _open_target(
    target: Path, top: Path | None, anchor: Path | None, meta_dir: Path | None
) -> tuple[Path, int, Path]:
    """Create the target and the bookkeeping folder; return the bookkeeping folder, a
    descriptor of the target, and the folder of the placed-links index."""
    if top is None or anchor is None:
        target.mkdir(parents=True, exist_ok=True)
        meta = meta_dir if meta_dir is not None else default_meta_dir(target)
        meta.mkdir(parents=True, exist_ok=True)
        return meta, os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), meta
    rel = safepath.relative_to(top, target)
    if anchor == top:
        top.mkdir(parents=True, exist_ok=True)  # trusted as given: nothing above to check
    fd = safepath.open_dir_beneath(anchor, safepath.relative_to(anchor, target), create=True)
    try:
        own = top / ".acquired"
        meta = meta_dir if meta_dir is not None else (default_meta_dir(target) if rel else own)
        for folder in (meta, own):
            below = os.path.abspath(folder).startswith(str(anchor).rstrip("/") + "/")
            if below:
                safepath.mkdirs_beneath(anchor, safepath.relative_to(anchor, folder))
            else:
                folder.mkdir(parents=True, exist_ok=True)  # an explicit meta_dir elsewhere
    except BaseException:
        os.close(fd)
        raise
    return meta, fd, own


def _extract_locked(  # noqa: PLR0917
    archive: Path,
    target: Path,
    fmt: str | None,
    limits: Limits,
    workers: int | None,
    progress: Progress | None,
    paths: _Paths,
    place: _Place,
    *,
    nested: bool,
    digest: str | None,
    delete_archive: bool,
    cancel: threading.Event | None,
    before_place: Callable[[], object] | None,
) -> ExtractResult:
    identity = _identity(archive, digest)
    with _flock(paths.lock, fcntl.LOCK_EX, anchor=paths.anchor):
        data = read_marker(paths.marker)
        if _marker_valid(data, identity, nested, target):
            assert data is not None
            if delete_archive:
                _remove(archive)
            return ExtractResult(
                archive,
                target,
                str(data.get("format")),
                int(data.get("entries", 0)),
                int(data.get("files", 0)),
                int(data.get("bytes", 0)),
                tuple(str(o) for o in data["outputs"]),
                True,
                paths.marker,
            )
        with _flock(paths.placement, fcntl.LOCK_EX, anchor=paths.anchor):
            journal = read_marker(paths.journal)
            if journal is not None:
                _undo(place.target_fd, [str(o) for o in journal.get("outputs", [])])
            _remove(paths.journal)
            if data is not None:
                _undo(place.target_fd, [str(o) for o in data.get("outputs", [])])
        _remove(paths.marker)
        _clean_stale(paths)
        if not archive.is_file():
            raise ArchiveMissing(f"{archive} does not exist", path=str(archive))
        resolved = formats.resolve_format(archive, fmt)
        staging = paths.new_staging()
        staging.mkdir()
        staging_fd = place.open(staging)
        writers_lock = _writers_lock(staging)
        try:
            with _flock(writers_lock, fcntl.LOCK_SH, anchor=paths.anchor):
                counts, links = _extract_into(
                    archive=archive,
                    staging=staging,
                    staging_fd=staging_fd,
                    fmt=resolved,
                    limits=limits,
                    workers=workers,
                    progress=progress,
                    nested=nested,
                    cancel=cancel,
                )
                if before_place is not None:
                    before_place()
                # Steps of other archives may be placing into the same target right now
                # (two files of a job, both into "."): one placement at a time.
                with _flock(paths.placement, fcntl.LOCK_EX, anchor=paths.anchor):
                    place.check(target)
                    moves = _plan_moves(staging, target)
                    _write_json_atomic(
                        paths.journal, {"version": MARKER_VERSION, "outputs": moves}, paths.anchor
                    )
                    _move_all(staging_fd, target, place.target_fd, moves)
                    _syncfs(target)
                    base = safepath.relative_to(place.root, target)
                    try:
                        placement.check_links(
                            place.root,
                            place.links_meta,
                            ("/".join(p for p in (base, rel) if p) for rel in links),
                            paths.anchor,
                        )
                    except BaseException:
                        _undo(place.target_fd, moves)
                        _remove(paths.journal)
                        raise
                    record = {
                        "version": MARKER_VERSION,
                        "archive": archive.name,
                        "identity": identity,
                        "format": resolved,
                        "nested": nested,
                        "entries": counts[0],
                        "files": counts[1],
                        "bytes": counts[2],
                        "outputs": moves,
                        "finished": time.time(),
                    }
                    _write_json_atomic(paths.marker, record, paths.anchor)
                    _remove(paths.journal)
        except BaseException:
            os.close(staging_fd)
            _remove(staging)
            _remove(writers_lock)
            raise
        os.close(staging_fd)
        _remove(staging)
        _remove(writers_lock)
        if delete_archive:
            _remove(archive)
    return ExtractResult(
        archive,
        target,
        resolved,
        counts[0],
        counts[1],
        counts[2],
        tuple(moves),
        False,
        paths.marker,
    )


def _move_all(staging_fd: int, target: Path, target_fd: int, moves: list[str]) -> None:
    try:
        placement.move_into_place(staging_fd, target_fd, moves)
    except OSError as exc:
        rel = str(exc.filename)
        raise WriteFailed(
            f"cannot move {rel} into {target}: {exc.strerror}",
            path=str(target / rel),
        ) from None


def _extract_into(
    *,
    archive: Path,
    staging: Path,
    staging_fd: int,
    fmt: str,
    limits: Limits,
    workers: int | None,
    progress: Progress | None,
    nested: bool,
    cancel: threading.Event | None,
) -> tuple[tuple[int, int, int], list[str]]:
    """Extract into ``staging``; returns (entries, files, bytes) and the symlinks made
    (relative to ``staging``)."""
    size = archive.stat().st_size
    throttle = Throttle(progress, size)
    throttle(0, force=True)
    n_workers = workers if workers is not None else len(os.sched_getaffinity(0))
    use_pool = nested and n_workers > 1 and fmt in formats.CONTAINERS
    mp: tuple[Any, Any, Any] | None = None
    if use_pool:
        ctx = multiprocessing.get_context("spawn")
        array = ctx.RawArray("q", 4)
        lock = ctx.Lock()
        shared = Shared(array, lock)
        mp = (ctx, array, lock)
    else:
        shared = _engine.local_shared()
    if limits.reserve:
        usage = os.statvfs(staging)
        limits = dataclasses.replace(
            limits, room=max(usage.f_bavail * usage.f_frsize - limits.reserve, 0)
        )
    budget = Budget(limits, size, archive.name, shared, cancel)
    writer = Writer(str(staging), budget, top=True, fd=os.dup(staging_fd))
    runner: Nested | None = None
    raw_count: list[Callable[[], int]] = []

    def report() -> None:
        if nested and fmt == "tar":
            throttle(shared.consumed())
        elif raw_count:
            throttle(raw_count[0]())

    if nested and fmt in formats.CONTAINERS:
        runner = Nested(
            archive=archive,
            staging=staging,
            writer=writer,
            limits=limits,
            archive_size=size,
            workers=n_workers,
            shared=shared,
            mp=mp,
            cancel=cancel,
            on_wait=report,
        )
    hook = runner.hook if runner is not None else None
    failed = True
    try:
        with open(archive, "rb", buffering=0) as raw:
            fd = raw.fileno()
            if fmt == "tar":

                def on_pos(pos: int) -> None:
                    if nested:
                        throttle(shared.consumed())
                    else:
                        throttle(pos)

                _readers.extract_tar_seekable(fd, 0, size, writer, on_pos=on_pos, inner=hook)
            elif fmt == "zip":
                raw_count.append(raw.tell)
                budget.input_pos = raw.tell
                buffered = io.BufferedReader(cast(Any, raw), 1 << 16)
                _readers.extract_zip(
                    cast(IO[bytes], buffered), writer, lambda _i: throttle(raw.tell()), hook
                )
            else:
                counting = _engine.Counting(cast(IO[bytes], raw))
                raw_count.append(lambda: counting.count)
                budget.input_pos = raw_count[0]
                writer.on_data = report
                # Small reads: the ratio check compares output with the input consumed.
                buffered = io.BufferedReader(counting, 1 << 16)
                if fmt.startswith("tar."):
                    stream = formats.open_decompressed(cast(IO[bytes], buffered), fmt[4:])
                    _readers.extract_tar_stream(stream, writer, report, hook)
                else:
                    name = formats.output_name(archive.name, fmt)
                    if name.startswith(".acquired"):
                        raise ReservedName(f"{name!r} is a name the pipeline keeps for itself")
                    _readers.extract_single(cast(IO[bytes], buffered), fmt, name, writer)
            if runner is not None:
                runner.finish()
            writer.finish()
            budget.flush()
        failed = False
    finally:
        writer.close()
        if runner is not None:
            runner.close(failed)
    links = list(writer.symlink_paths)
    entries, files, nbytes = budget.entries, budget.files, budget.bytes
    if runner is not None:
        for r in runner.results:
            links.extend(r.symlinks)
            entries += r.entries
            files += r.files
            nbytes += r.bytes
    if entries == 0:
        # An archive that yields nothing is never what a dataset meant; saying so beats
        # reporting success with nothing there.
        raise CorruptArchive(f"{archive.name}: the archive holds no entries", path=str(archive))
    check_symlinks_resolve_inside(str(staging), links)
    throttle(size, force=True)
    return (entries, files, nbytes), [os.path.relpath(link, staging) for link in links]

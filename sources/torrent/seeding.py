"""Seeding that outlives a restart.

When a torrent's files are in place the engine writes ``<key>.seeding.json`` beside the
torrent's ``.fastresume``: the seeding policy it finishes under (ratio, time), the seconds
seeded so far, and each final file with its size and mtime. At start-up ``restore`` puts
every torrent whose policy is not met back into the session from its resume data. A file
whose size or mtime changed since is not trusted: the resume data's pieces are dropped so
libtorrent checks the file, and a torrent that is not complete after the check is not
seeded (it never downloads: it comes back in upload mode until the check passes).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import libtorrent as lt

from acquired.sources.torrent.entries import _Entry
from acquired.sources.torrent.errors import SeedDataChanged
from acquired.sources.torrent.events import TorrentFailed
from acquired.sources.torrent.resolve import _write_atomic

if TYPE_CHECKING:
    from collections.abc import Callable

    from acquired.sources.torrent.engine import TorrentEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedFile:
    """One finished file as it was when seeding began."""

    index: int
    name: str
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SeedRecord:
    """What ``<key>.seeding.json`` holds."""

    key: str
    save_dir: str
    seed_ratio: float | None
    seed_time: float | None
    seeded: float
    """Seconds seeded so far, over every run."""
    files: tuple[SeedFile, ...] = field(default_factory=tuple)

    def size(self) -> int:
        """Bytes of the seeded files (what the share ratio is taken against)."""
        return sum(f.size for f in self.files)


def record_path(state_dir: Path, key: str) -> Path:
    """``<state>/resume/<key>.seeding.json``, beside the torrent's resume data."""
    return state_dir / "resume" / f"{quote(key, safe='')}.seeding.json"


def policy_met(
    ratio: float, seconds: float, seed_ratio: float | None, seed_time: float | None
) -> bool:
    """Seeding ends at the share ratio or after the time, whichever comes first."""
    ratio_met = seed_ratio is not None and ratio >= seed_ratio
    time_met = seed_time is not None and seconds >= seed_time
    return ratio_met or time_met


def files_unchanged(record: SeedRecord) -> bool:
    """Every file still has the size and mtime it had when seeding began."""
    for f in record.files:
        try:
            st = os.stat(f.path)
        except OSError:
            return False
        if st.st_size != f.size or st.st_mtime_ns != f.mtime_ns:
            return False
    return True


def read_record(path: Path) -> SeedRecord | None:
    """The record at ``path``; None when it is missing or unreadable."""
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        files = tuple(SeedFile(**f) for f in raw.pop("files"))
        return SeedRecord(files=files, **raw)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("seeding record %s unreadable (%s); ignored", path, exc)
        return None


def _write(state_dir: Path, record: SeedRecord) -> None:
    data = json.dumps(asdict(record), indent=1).encode()
    try:
        _write_atomic(record_path(state_dir, record.key), data)
    except OSError as exc:
        log.warning("cannot save the seeding record of %s: %s", record.key, exc)


def write_record(engine: TorrentEngine, entry: _Entry) -> None:
    """Record a torrent that starts seeding (its files just moved into place)."""
    files = []
    for index, (name, final) in sorted(entry.wanted.items()):
        try:
            st = os.stat(final)
        except OSError:
            continue
        files.append(SeedFile(index, name, str(final), st.st_size, st.st_mtime_ns))
    request = entry.request
    save_dir = str(request.save_dir) if request is not None else ""
    record = SeedRecord(
        entry.key, save_dir, entry.seed_ratio, entry.seed_time, entry.seeded_before, tuple(files)
    )
    _write(engine.state_dir, record)


def update_record(engine: TorrentEngine, entry: _Entry, now: float) -> None:
    """Bring the seconds seeded up to date (periodically and at stop)."""
    if entry.phase != "seeding" or entry.finished_at is None:
        return
    path = record_path(engine.state_dir, entry.key)
    record = read_record(path) if path.exists() else None
    if record is None:
        return
    seconds = entry.seeded_before + now - entry.finished_at
    _write(
        engine.state_dir,
        SeedRecord(
            record.key,
            record.save_dir,
            record.seed_ratio,
            record.seed_time,
            seconds,
            record.files,
        ),
    )


def resume_complete(atp: lt.add_torrent_params, record: SeedRecord) -> bool:
    """The resume data has every piece of the seeded files (else libtorrent must check)."""
    ti = atp.ti
    if ti is None:
        return False
    have = list(atp.have_pieces)
    for f in record.files:
        first = ti.map_file(f.index, 0, 0).piece
        last = ti.map_file(f.index, max(f.size - 1, 0), 0).piece
        if last >= len(have) or not all(have[first : last + 1]):
            return False
    return True


def _forget(engine: TorrentEngine, key: str) -> None:
    record_path(engine.state_dir, key).unlink(missing_ok=True)
    engine._resume_path(key).unlink(missing_ok=True)


def restore(engine: TorrentEngine, accept: Callable[[str], bool]) -> list[str]:
    """See ``TorrentEngine.restore_seeding``."""
    ses = engine.session
    restored: list[str] = []
    for path in sorted((engine.state_dir / "resume").glob("*.seeding.json")):
        record = read_record(path)
        if record is None:
            path.unlink(missing_ok=True)
            continue
        key = record.key
        with engine._lock:
            if key in engine._entries:
                continue
        resume = engine._resume_path(key)
        if not accept(key) or not resume.is_file():
            _forget(engine, key)
            continue
        try:
            atp = lt.read_resume_data(resume.read_bytes())
        except RuntimeError as exc:
            log.warning("resume data of %s unreadable (%s); not seeding it", key, exc)
            _forget(engine, key)
            continue
        ratio = atp.total_uploaded / record.size() if record.size() else 0.0
        if atp.ti is None or policy_met(ratio, record.seeded, record.seed_ratio, record.seed_time):
            _forget(engine, key)
            continue
        unchanged = files_unchanged(record) and resume_complete(atp, record)
        # The final names, whatever the resume data says (a kill may have come before the
        # resume data of the renamed files was saved).
        renamed = dict(atp.renamed_files)
        for f in record.files:
            renamed[f.index] = f.path
        atp.renamed_files = renamed
        if not unchanged:
            atp.have_pieces = []
            atp.verified_pieces = []
            atp.unfinished_pieces = {}
        if record.save_dir:
            atp.save_path = record.save_dir
        flags = atp.flags
        flags &= ~lt.torrent_flags.auto_managed
        flags &= ~lt.torrent_flags.paused
        # Never download into a file the user changed: upload only until checked.
        flags |= lt.torrent_flags.upload_mode
        atp.flags = flags
        ih = engine._ih_of(atp)
        with engine._lock:
            if ih in engine._by_ih:
                continue
            try:
                handle = ses.add_torrent(atp)
            except RuntimeError as exc:
                log.warning("cannot seed %s again: %s", key, exc)
                continue
            now = time.monotonic()
            entry = _Entry(
                key=key,
                request=None,
                handle=handle,
                ih=ih,
                added=now,
                phase="checking",
                wanted={f.index: (f.name, Path(f.path)) for f in record.files},
                last_data=now,
                wanted_size=record.size(),
                ratio=ratio,
                seed_ratio=record.seed_ratio,
                seed_time=record.seed_time,
                seeded_before=record.seeded,
            )
            engine._entries[key] = entry
            engine._by_ih[ih] = entry
        log.info("seeding %s again (%s)", key, "files unchanged" if unchanged else "checking files")
        restored.append(key)
    return restored


def on_checked(engine: TorrentEngine, entry: _Entry) -> None:
    """libtorrent checked a restored torrent: seed it, or drop it when incomplete."""
    st = entry.handle.status()
    complete = st.has_metadata and st.total_wanted > 0 and st.total_wanted_done >= st.total_wanted
    if complete:
        entry.handle.unset_flags(lt.torrent_flags.upload_mode)
        entry.finished_at = time.monotonic()
        entry.phase = "seeding"
        return
    entry.phase = "failed"
    names = ", ".join(str(p) for _, p in entry.wanted.values())
    err = SeedDataChanged(
        f"{entry.key}: not seeding {names}: changed on disk since it was fetched "
        f"({st.total_wanted_done} of {st.total_wanted} bytes match the torrent)",
        files=[str(p) for _, p in entry.wanted.values()],
    )
    entry.error = str(err)
    entry.handle.pause()
    _forget(engine, entry.key)
    log.warning("%s", err)
    engine._emit(TorrentFailed(entry.key, err))

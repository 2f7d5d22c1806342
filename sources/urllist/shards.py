"""Writing one shard: ``NNNNN.tar`` (or a folder ``NNNNN/``), ``NNNNN.parquet`` and
``NNNNN_stats.json``, each complete under its final name or not there at all.

Everything is written under a temporary name (``.NNNNN.tar.<host>.<pid>.tmp``...), fsynced, then
renamed into place: the tar (or folder) first, the parquet next, the stats file last, so
``NNNNN_stats.json`` marks a finished shard. A shard redone later replaces the same names
with the same keys. All files are opened relative to the output folder's descriptor with
``O_NOFOLLOW``: a link planted at a shard's name is replaced, never followed.

Keys are stable: ``sample_key(row_index, shard_size)`` is the shard id on five digits
followed by the row's offset within its shard on seven, so row 120,457 of a job with
10,000-row shards is ``000120000457`` whichever attempt or retry shard writes it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from acquired.sources.urllist import outcome

# Temporary names carry the host (dots would split the name) and the writer's pid, so a
# node clears only its own dead writers' leftovers in a folder a fleet shares.
HOST = os.uname().nodename.replace(".", "_") or "host"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def shard_name(shard_id: int) -> str:
    """The file stem of shard ``shard_id``: ``00012``."""
    return f"{shard_id:05d}"


def sample_key(row_index: int, shard_size: int) -> str:
    """The stable key of input row ``row_index``: shard id (5 digits) + offset (7 digits)."""
    shard, offset = divmod(row_index, shard_size)
    return f"{shard:05d}{offset:07d}"


@dataclass
class SampleRecord:
    """One parquet row: every input row gets one, whatever became of it."""

    key: str
    row_index: int
    url: str | None
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = outcome.OK
    error_class: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    attempts: int = 0
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None
    phash: str | None = None
    duplicate_of: str | None = None

    def meta(self) -> dict[str, Any]:
        """What ``KEY.json`` holds for a stored sample."""
        # vars(), not dataclasses.asdict: asdict deep-copies every field and cost
        # ~0.18 ms per sample, as much as writing the sample's tar headers.
        data = {k: v for k, v in vars(self).items() if k != "extra"}
        data.update(self.extra)
        return data


_FIXED_COLUMNS = [
    ("key", "string"),
    ("row_index", "int64"),
    ("url", "string"),
    ("caption", "string"),
    ("status", "string"),
    ("error_class", "string"),
    ("error_message", "string"),
    ("http_status", "int32"),
    ("attempts", "int32"),
    ("bytes", "int64"),
    ("width", "int32"),
    ("height", "int32"),
    ("original_width", "int32"),
    ("original_height", "int32"),
    ("sha256", "string"),
    ("phash", "string"),
    ("duplicate_of", "string"),
]


def _fsync_dir(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(fd)


class ShardWriter:
    """Writes one shard into ``out_dir`` (which must exist); ``commit`` makes it visible."""

    def __init__(
        self,
        out_dir: Path,
        shard_id: int,
        *,
        output: str = "webdataset",
        keep_columns: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.name = name or shard_name(shard_id)
        self.shard_id = shard_id
        self.output = output
        self.keep_columns = list(keep_columns)
        self.records: list[SampleRecord] = []
        self.stored = 0
        self._suffix = f".{HOST}.{os.getpid()}.tmp"
        self._dir_fd = os.open(self.out_dir, _DIR_FLAGS)
        self._mtime = int(time.time())
        self._tar: tarfile.TarFile | None = None
        self._tar_file: BinaryIO | None = None
        self._files_fd: int | None = None
        if output == "webdataset":
            fd = self._create(f".{self.name}.tar{self._suffix}")
            self._tar_file = os.fdopen(fd, "wb", buffering=1 << 20)
            # The writer lives until commit() or abort(), which close it.
            self._tar = tarfile.open(  # noqa: SIM115
                fileobj=self._tar_file, mode="w", format=tarfile.GNU_FORMAT
            )
        elif output == "files":
            tmp = f".{self.name}{self._suffix}"
            self._remove_tree(tmp)
            os.mkdir(tmp, 0o755, dir_fd=self._dir_fd)
            self._files_fd = os.open(tmp, _DIR_FLAGS, dir_fd=self._dir_fd)
        else:
            raise ValueError(f"unknown output {output!r}")

    def _create(self, name: str, dir_fd: int | None = None) -> int:
        return os.open(name, _NEW_FLAGS, 0o644, dir_fd=self._dir_fd if dir_fd is None else dir_fd)

    def add(self, record: SampleRecord, data: bytes | None = None, ext: str = "jpg") -> None:
        """Record one input row; ``data`` (with its extension) is stored beside its
        caption and metadata when given."""
        self.records.append(record)
        if data is None:
            return
        members = [(f"{record.key}.{ext}", data)]
        if record.caption is not None:
            members.append((f"{record.key}.txt", record.caption.encode("utf-8")))
        meta = json.dumps(record.meta(), ensure_ascii=False, default=str).encode("utf-8")
        members.append((f"{record.key}.json", meta))
        if self._tar is not None:
            for member, payload in members:
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                info.mtime = self._mtime
                info.mode = 0o644
                self._tar.addfile(info, io.BytesIO(payload))
        else:
            assert self._files_fd is not None
            for member, payload in members:
                fd = self._create(member, self._files_fd)
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
        self.stored += 1

    def commit(self, stats: dict[str, Any]) -> dict[str, str]:
        """Make the shard durable and visible; returns the final file names."""
        names: dict[str, str] = {}
        if self._tar is not None and self._tar_file is not None:
            self._tar.close()
            self._tar_file.flush()
            os.fsync(self._tar_file.fileno())
            self._tar_file.close()
            names["data"] = f"{self.name}.tar"
            os.replace(
                f".{self.name}.tar{self._suffix}",
                names["data"],
                src_dir_fd=self._dir_fd,
                dst_dir_fd=self._dir_fd,
            )
        elif self._files_fd is not None:
            for entry in os.listdir(self._files_fd):
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._files_fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(self._files_fd)
            os.close(self._files_fd)
            self._files_fd = None
            names["data"] = self.name
            self._replace_dir(f".{self.name}{self._suffix}", self.name)
        names["parquet"] = f"{self.name}.parquet"
        self._write_durably(names["parquet"], self._parquet_bytes())
        names["stats"] = f"{self.name}_stats.json"
        self._write_durably(names["stats"], json.dumps(stats, indent=1).encode())
        _fsync_dir(self._dir_fd)
        os.close(self._dir_fd)
        return names

    def abort(self) -> None:
        """Drop the temporary files; nothing appears under a final name."""
        with contextlib.suppress(Exception):
            if self._tar is not None:
                self._tar.close()
            if self._tar_file is not None:
                self._tar_file.close()
        with contextlib.suppress(OSError):
            os.unlink(f".{self.name}.tar{self._suffix}", dir_fd=self._dir_fd)
        if self._files_fd is not None:
            os.close(self._files_fd)
            self._files_fd = None
        self._remove_tree(f".{self.name}{self._suffix}")
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)

    def _write_durably(self, name: str, data: bytes) -> None:
        tmp = f".{name}{self._suffix}"
        fd = self._create(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)

    def _replace_dir(self, tmp: str, final: str) -> None:
        try:
            os.rename(tmp, final, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError:
            # A previous attempt's folder is there: move it aside, then drop it.
            old = f".{final}.old{self._suffix}"
            os.rename(final, old, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            os.rename(tmp, final, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._remove_tree(old)

    def _remove_tree(self, name: str) -> None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._dir_fd)
        except OSError:
            return
        try:
            for entry in os.listdir(fd):
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=self._dir_fd)

    def _parquet_bytes(self) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = sorted(self.records, key=lambda r: r.row_index)
        arrays = []
        fields = []
        for name, kind in _FIXED_COLUMNS:
            values = [getattr(r, name) for r in records]
            arrays.append(pa.array(values, type=pa.type_for_alias(kind)))
            fields.append(pa.field(name, pa.type_for_alias(kind)))
        for name in self.keep_columns:
            values = [r.extra.get(name) for r in records]
            try:
                array = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                array = pa.array([None if v is None else str(v) for v in values])
            arrays.append(array)
            fields.append(pa.field(name, array.type))
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()


def is_complete(out_dir: Path, shard_id: int, name: str | None = None) -> bool:
    """Whether the shard's stats file (written last) is there."""
    return (Path(out_dir) / f"{name or shard_name(shard_id)}_stats.json").is_file()


def left_behind(entry: str, host: str, alive: Callable[[int], bool]) -> bool:
    """Whether ``entry`` is a temporary of an interrupted shard of this host: its writer
    is gone. Another host's (a fleet sharing the folder) or a live process's (another
    daemon on this host) is still being written and is left alone. Pure but for
    ``alive``."""
    if not (entry.startswith(".") and entry.endswith(".tmp")):
        return False
    parts = entry[: -len(".tmp")].rsplit(".", 2)
    if len(parts) != 3 or parts[1] != host or not parts[2].isdigit():
        return False
    pid = int(parts[2])
    return pid == os.getpid() or not alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temporaries(out_dir: Path) -> int:
    """Delete the temporary files and folders left by interrupted shards of this host
    (see :func:`left_behind`; call before any worker starts); returns how many were
    removed."""
    removed = 0
    dir_fd = os.open(out_dir, _DIR_FLAGS)
    try:
        for entry in os.listdir(dir_fd):
            if not left_behind(entry, HOST, _alive):
                continue
            st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    for name in os.listdir(sub):
                        os.unlink(name, dir_fd=sub)
                finally:
                    os.close(sub)
                os.rmdir(entry, dir_fd=dir_fd)
            else:
                os.unlink(entry, dir_fd=dir_fd)
            removed += 1
    finally:
        os.close(dir_fd)
    return removed


def sample_record_fields() -> list[str]:
    """The fixed parquet columns, in order (kept columns follow)."""
    return [name for name, _ in _FIXED_COLUMNS]

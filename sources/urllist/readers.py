"""Streaming readers of URL lists: txt, csv, tsv, jsonl and parquet, ``.gz``/``.zst`` too.

Nothing here loads an input whole. ``plan_shards`` cuts the input into slices of
``shard_size`` rows: for parquet from the row-group metadata alone, for text formats in one
streaming pass that records the byte offset of every slice's first row (for compressed
input, the offset in the decompressed stream). ``read_rows`` then yields the rows of one
slice, seeking straight to it where the file allows.

A malformed row (no URL, a scheme other than http(s), a line over 64 KiB, bad UTF-8, a line
that is not a JSON object) is yielded as a ``Row`` with ``error`` set: one failed sample,
never a failed job. A column the caller names that the input lacks raises ``MissingColumn``
naming the column and the columns that exist.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from acquired.sources.urllist.errors import MissingColumn, UnknownInputFormat, UnreadableInput

FORMATS = ("txt", "csv", "tsv", "jsonl", "parquet")
MAX_LINE = 64 * 1024
_CHUNK = 1 << 20
# Replaces a too-long or undecodable line before the csv parser sees it, so the parser's
# record boundaries (and therefore row numbers) stay those of the file.
_TOO_LONG = "\x00too-long\x00"
_BAD_UTF8 = "\x00bad-utf8\x00"
_MARKS = {_TOO_LONG: "line over 64 KiB", _BAD_UTF8: "bad UTF-8"}


@dataclass(frozen=True)
class ShardSlice:
    """Rows ``[start, stop)`` of the input, shard ``shard_id``.

    ``offset`` is where row ``start`` begins in the (decompressed) byte stream of a text
    input; ``None`` for parquet, which seeks by row group."""

    shard_id: int
    start: int
    stop: int
    offset: int | None = None

    @property
    def rows(self) -> int:
        """How many input rows the slice holds."""
        return self.stop - self.start


class Row(NamedTuple):
    """One input row. ``error`` is set (and ``url`` may be ``None``) for a malformed row."""

    row_index: int
    url: str | None
    caption: str | None
    extra: dict[str, object]
    error: str | None = None


def detect_format(path: str | Path, fmt: str | None = None) -> tuple[str, str | None]:
    """``(format, compression)`` of ``path``: the format from ``fmt`` or the name, the
    compression (``"gz"``, ``"zst"`` or ``None``) from the name."""
    name = Path(path).name.lower()
    compression = None
    for suffix in ("gz", "zst"):
        if name.endswith("." + suffix):
            compression = suffix
            name = name[: -len(suffix) - 1]
    if fmt is None:
        ext = name.rsplit(".", 1)[-1] if "." in name else ""
        fmt = {"json": "jsonl", "ndjson": "jsonl"}.get(ext, ext)
    if fmt not in FORMATS:
        raise UnknownInputFormat(
            f"{path}: cannot tell the input format (got {fmt!r}; expected one of "
            f"{', '.join(FORMATS)})",
            path=str(path),
        )
    if fmt == "parquet" and compression:
        raise UnknownInputFormat(
            f"{path}: a parquet file is compressed inside; do not wrap it in .{compression}",
            path=str(path),
        )
    return fmt, compression


def _open(path: Path, compression: str | None) -> IO[bytes]:
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise UnreadableInput(f"{path}: {exc.strerror or exc}", path=str(path)) from exc
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "zst":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, _CHUNK)
    return raw


def _seek(f: IO[bytes], offset: int, compression: str | None) -> None:
    if compression is None:
        f.seek(offset)
        return
    # A compressed stream cannot seek: read and drop (zstd decompresses at ~1 GB/s).
    left = offset
    while left > 0:
        got = f.read(min(_CHUNK, left))
        if not got:
            break
        left -= len(got)


def _lines(f: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of ``f`` (with their newline), ``None`` for a line over ``MAX_LINE``, which
    is skipped in bounded memory."""
    readline = f.readline
    while True:
        line = readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while True:
                rest = readline(_CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


def _text_lines(f: IO[bytes], counter: list[int] | None = None) -> Iterator[str]:
    """Decoded lines for the csv parser; a bad line becomes a marker the row check sees.
    ``counter[0]`` grows by the bytes consumed, so a caller knows where a record ends."""
    readline = f.readline
    while True:
        line = readline(MAX_LINE + 1)
        if not line:
            return
        size = len(line)
        if size > MAX_LINE and not line.endswith(b"\n"):
            while True:
                rest = readline(_CHUNK)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            text = _TOO_LONG + "\n"
        else:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                text = _BAD_UTF8 + "\n"
        if counter is not None:
            counter[0] += size
        yield text


def _csv_reader(lines: Iterator[str], fmt: str) -> Iterator[list[str]]:
    dialect = "excel-tab" if fmt == "tsv" else "excel"
    return csv.reader(lines, dialect=dialect)


def _header(path: Path, fmt: str, compression: str | None) -> tuple[list[str], int]:
    """The column names of a csv/tsv input and the byte length of the header record."""
    counter = [0]
    with _open(path, compression) as f:
        reader = _csv_reader(_text_lines(f, counter), fmt)
        try:
            header = next(reader)
        except StopIteration:
            return [], counter[0]
        except csv.Error as exc:
            raise UnreadableInput(f"{path}: bad header: {exc}", path=str(path)) from exc
    return [h.strip() for h in header], counter[0]


def columns_of(path: str | Path, fmt: str | None = None) -> list[str]:
    """The columns an input offers (``["url"]`` for txt; the first object's keys for jsonl)."""
    path = Path(path)
    fmt, compression = detect_format(path, fmt)
    if fmt == "txt":
        return ["url"]
    if fmt == "parquet":
        return list(_parquet(path).schema_arrow.names)
    if fmt == "jsonl":
        with _open(path, compression) as f:
            for line in _lines(f):
                if line is None or not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    return list(obj)
        return []
    return _header(path, fmt, compression)[0]


def check_columns(path: str | Path, fmt: str | None, needed: Sequence[str]) -> None:
    """Raise ``MissingColumn`` if a column of ``needed`` is not in the input (txt: only
    its one URL column, whatever it is called, exists)."""
    fmt, _ = detect_format(path, fmt)
    if fmt == "txt":
        return
    have = columns_of(path, fmt)
    for name in needed:
        if name not in have:
            raise MissingColumn(
                f"{path}: no column {name!r}; the input has: {', '.join(map(repr, have))}",
                path=str(path),
                column=name,
                columns=have,
            )


# -- planning ----------------------------------------------------------------------------


def plan_shards(
    path: str | Path, fmt: str | None = None, shard_size: int = 10_000
) -> list[ShardSlice]:
    """Cut the input into slices of ``shard_size`` rows (the last may be shorter).

    Parquet: from metadata, no data read. Text: one streaming pass in bounded memory,
    recording the byte offset of every slice's first row."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    path = Path(path)
    fmt, compression = detect_format(path, fmt)
    if fmt == "parquet":
        total = _parquet(path).metadata.num_rows
        return [
            ShardSlice(i, start, min(start + shard_size, total))
            for i, start in enumerate(range(0, total, shard_size))
        ]
    if fmt in ("txt", "jsonl"):
        offsets, total = _plan_lines(path, compression, shard_size)
    else:
        offsets, total = _plan_csv(path, fmt, compression, shard_size)
    return [
        ShardSlice(i, i * shard_size, min((i + 1) * shard_size, total), offset)
        for i, offset in enumerate(offsets)
    ]


def _plan_lines(path: Path, compression: str | None, shard_size: int) -> tuple[list[int], int]:
    """Offsets of every ``shard_size``-th line start, counting newlines chunk by chunk.

    Row ``n`` starts right after the ``n``-th newline (row 0 at the start), so slice ``i``
    starts after newline number ``i * shard_size``."""
    offsets: list[int] = []
    newlines = 0  # newlines before the current chunk
    pos = 0  # bytes before the current chunk
    last = b"\n"
    with _open(path, compression) as f:
        while chunk := f.read(_CHUNK):
            if not offsets:
                offsets.append(0)
            count = chunk.count(b"\n")
            target = len(offsets) * shard_size  # the newline after which the next slice starts
            at = 0
            seen = newlines
            while target <= newlines + count:
                while seen < target:
                    at = chunk.index(b"\n", at) + 1
                    seen += 1
                offsets.append(pos + at)
                target += shard_size
            newlines += count
            pos += len(chunk)
            last = chunk[-1:]
    total = newlines + (0 if last == b"\n" else 1)
    # A slice that would start at the very end of the file holds no row.
    while offsets and offsets[-1] >= pos:
        offsets.pop()
    return offsets, total


def _plan_csv(
    path: Path, fmt: str, compression: str | None, shard_size: int
) -> tuple[list[int], int]:
    """Offsets of every ``shard_size``-th record start, parsing records (quoted fields may
    hold newlines, so lines are not rows)."""
    offsets: list[int] = []
    counter = [0]
    rows = 0
    with _open(path, compression) as f:
        reader = _csv_reader(_text_lines(f, counter), fmt)
        with contextlib.suppress(StopIteration):
            _next_record(reader)  # the header
        while True:
            start = counter[0]
            try:
                if _next_record(reader) is None:
                    break
            except StopIteration:
                break
            if rows % shard_size == 0:
                offsets.append(start)
            rows += 1
    return offsets, rows


def _next_record(reader: Iterator[list[str]]) -> list[str] | None:
    """The next record, ``[]`` for a record the parser refused, ``None`` at the end."""
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error:
        return []


# -- reading -----------------------------------------------------------------------------


def read_rows(
    path: str | Path,
    fmt: str | None,
    shard: ShardSlice,
    *,
    url_column: str = "url",
    caption_column: str | None = None,
    keep_columns: Sequence[str] = (),
) -> Iterator[Row]:
    """The rows of ``shard``, in order, each exactly once (malformed ones with ``error``)."""
    path = Path(path)
    fmt, compression = detect_format(path, fmt)
    if fmt == "parquet":
        yield from _read_parquet(path, shard, url_column, caption_column, keep_columns)
        return
    if shard.offset is None:
        raise ValueError("a text slice needs its byte offset (from plan_shards)")
    with _open(path, compression) as f:
        _seek(f, shard.offset, compression)
        if fmt == "txt":
            rows = _read_txt(f, shard)
        elif fmt == "jsonl":
            rows = _read_jsonl(f, shard, url_column, caption_column, keep_columns)
        else:
            header, _ = _header(path, fmt, compression)
            check_columns(path, fmt, [url_column, *filter(None, [caption_column]), *keep_columns])
            rows = _read_csv(
                f,
                fmt,
                shard,
                header=header,
                url_column=url_column,
                caption_column=caption_column,
                keep_columns=keep_columns,
            )
        yield from rows


def check_url(url: object) -> str | None:
    """Why ``url`` cannot be fetched, or ``None`` when it is a usable http(s) URL."""
    if not isinstance(url, str) or not url.strip():
        return "no URL"
    head = url.lstrip()[:8].lower()
    if not (head.startswith("http://") or head.startswith("https://")):
        scheme = url.split(":", 1)[0][:20] if ":" in url else ""
        return f"not an http(s) URL (scheme {scheme!r})" if scheme else "not an http(s) URL"
    if len(url.strip().split("/", 3)[2]) == 0:
        return "URL without a host"
    return None


def _row(
    index: int, url: object, caption: object, extra: dict[str, object], error: str | None = None
) -> Row:
    if error is None:
        error = check_url(url)
    url_s = url.strip() if isinstance(url, str) else None
    caption_s = None if caption is None else str(caption)
    return Row(index, url_s, caption_s, extra, error)


def _read_txt(f: IO[bytes], shard: ShardSlice) -> Iterator[Row]:
    index = shard.start
    for line in _lines(f):
        if index >= shard.stop:
            return
        if line is None:
            yield Row(index, None, None, {}, "line over 64 KiB")
        else:
            try:
                text = line.decode("utf-8").strip()
            except UnicodeDecodeError:
                yield Row(index, None, None, {}, "bad UTF-8")
            else:
                yield _row(index, text, None, {})
        index += 1


def _read_jsonl(
    f: IO[bytes],
    shard: ShardSlice,
    url_column: str,
    caption_column: str | None,
    keep_columns: Sequence[str],
) -> Iterator[Row]:
    index = shard.start
    for line in _lines(f):
        if index >= shard.stop:
            return
        error = None
        obj: object = None
        if line is None:
            error = "line over 64 KiB"
        else:
            try:
                obj = json.loads(line)
            except UnicodeDecodeError:
                error = "bad UTF-8"
            except ValueError:
                error = "not JSON"
            if error is None and not isinstance(obj, dict):
                error = "not a JSON object"
        if error is not None or not isinstance(obj, dict):
            yield Row(index, None, None, {}, error)
        else:
            extra = {name: obj.get(name) for name in keep_columns}
            caption = obj.get(caption_column) if caption_column else None
            yield _row(index, obj.get(url_column), caption, extra)
        index += 1


def _read_csv(
    f: IO[bytes],
    fmt: str,
    shard: ShardSlice,
    *,
    header: list[str],
    url_column: str,
    caption_column: str | None,
    keep_columns: Sequence[str],
) -> Iterator[Row]:
    reader = _csv_reader(_text_lines(f), fmt)
    where = {name: i for i, name in enumerate(header)}
    url_i = where[url_column]
    cap_i = where[caption_column] if caption_column else None
    keep_i = [(name, where[name]) for name in keep_columns]
    for index in range(shard.start, shard.stop):
        record = _next_record(reader)
        if record is None:
            return
        marks = [_MARKS[field] for field in record if field in _MARKS]
        if marks or not record:
            yield Row(index, None, None, {}, marks[0] if marks else "unparsable CSV record")
            continue

        def cell(i: int, record: list[str] = record) -> str | None:
            return record[i] if i < len(record) else None

        extra: dict[str, object] = {name: cell(i) for name, i in keep_i}
        yield _row(index, cell(url_i), cell(cap_i) if cap_i is not None else None, extra)


def _parquet(path: Path):  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except OSError as exc:
        raise UnreadableInput(
            f"{path}: not a readable parquet file: {exc}", path=str(path)
        ) from exc
    except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a bad footer
        raise UnreadableInput(
            f"{path}: not a readable parquet file: {exc}", path=str(path)
        ) from exc


def _read_parquet(
    path: Path,
    shard: ShardSlice,
    url_column: str,
    caption_column: str | None,
    keep_columns: Sequence[str],
) -> Iterator[Row]:
    needed = list(dict.fromkeys([url_column, *filter(None, [caption_column]), *keep_columns]))
    check_columns(path, "parquet", needed)
    pf = _parquet(path)
    meta = pf.metadata
    starts = []
    total = 0
    for i in range(meta.num_row_groups):
        starts.append(total)
        total += meta.row_group(i).num_rows
    groups = [
        i
        for i in range(meta.num_row_groups)
        if starts[i] < shard.stop and starts[i] + meta.row_group(i).num_rows > shard.start
    ]
    if not groups:
        return
    index = starts[groups[0]]
    for batch in pf.iter_batches(batch_size=8192, row_groups=groups, columns=needed):
        columns = {name: batch.column(name).to_pylist() for name in needed}
        n = batch.num_rows
        if index + n <= shard.start:
            index += n
            continue
        lo = max(0, shard.start - index)
        hi = min(n, shard.stop - index)
        urls = columns[url_column]
        caps = columns[caption_column] if caption_column else None
        for j in range(lo, hi):
            extra = {name: columns[name][j] for name in keep_columns}
            yield _row(index + j, urls[j], caps[j] if caps is not None else None, extra)
        index += n
        if index >= shard.stop:
            return

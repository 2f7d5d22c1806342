"""Archive formats: names, content sniffing (magic bytes, not the extension) and the
streams that decompress them.

Format names are the manifest's: ``tar``, ``tar.gz``, ``tar.bz2``, ``tar.xz``,
``tar.zst``, ``zip`` (containers) and ``gz``, ``bz2``, ``xz``, ``zst`` (one compressed
file). ``auto`` (or ``None``) means: decide from the content.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zipfile
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from .errors import CorruptArchive, FormatMismatch, UnknownFormat

CONTAINERS = ("tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst", "zip")
COMPRESSIONS = ("gz", "bz2", "xz", "zst")
FORMATS = CONTAINERS + COMPRESSIONS

# Suffixes a file name may carry for each format (longest first when matching).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "tar.gz": (".tar.gz", ".tgz", ".taz"),
    "tar.bz2": (".tar.bz2", ".tbz2", ".tbz", ".tb2"),
    "tar.xz": (".tar.xz", ".txz"),
    "tar.zst": (".tar.zst", ".tar.zstd", ".tzst"),
    "tar": (".tar",),
    "zip": (".zip",),
    "gz": (".gz", ".gzip"),
    "bz2": (".bz2",),
    "xz": (".xz",),
    "zst": (".zst", ".zstd"),
}

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gz"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

BLOCK = 512


def format_from_name(name: str) -> str | None:
    """The format a file name announces (``x.tar.gz`` -> ``tar.gz``), or ``None``."""
    lower = name.lower()
    best: tuple[int, str] | None = None
    for fmt, suffixes in SUFFIXES.items():
        for suffix in suffixes:
            longer = best is None or len(suffix) > best[0]
            if lower.endswith(suffix) and len(lower) > len(suffix) and longer:
                best = (len(suffix), fmt)
    return best[1] if best else None


def strip_suffix(name: str) -> str:
    """``name`` without its archive suffix (``n01440764.tar`` -> ``n01440764``); the name
    itself when it has none."""
    lower = name.lower()
    best = 0
    for suffixes in SUFFIXES.values():
        for suffix in suffixes:
            if lower.endswith(suffix) and len(lower) > len(suffix):
                best = max(best, len(suffix))
    return name[: len(name) - best] if best else name


def is_tar_header(block: bytes) -> bool:
    """Whether a 512-byte block is a tar header (POSIX/GNU magic, or a valid v7 checksum)."""
    if len(block) < BLOCK:
        return False
    if block[257:262] == b"ustar":
        return True
    if block[:BLOCK] == bytes(BLOCK):
        # Zeros are an empty tar only in theory; in practice they are a file of zeros
        # (a compressed disk image, a sparse array) and must not be "extracted" to nothing.
        return False
    field = block[148:156]
    try:
        stored = int(field.replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:BLOCK])
    return stored == computed


def compression_of(head: bytes) -> str | None:
    """The compression a stream starts with (``gz``, ``bz2``, ``xz``, ``zst``), or ``None``."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def open_decompressed(raw: IO[bytes], compression: str) -> IO[bytes]:
    """A readable stream of the decompressed data of ``raw`` (which stays open)."""
    if compression == "gz":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if compression == "bz2":
        return cast(IO[bytes], bz2.BZ2File(raw, mode="rb"))
    if compression == "xz":
        return cast(IO[bytes], lzma.LZMAFile(raw, mode="rb"))
    if compression == "zst":
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )
        return cast(IO[bytes], reader)
    raise ValueError(f"unknown compression {compression!r}")


def _read_up_to(stream: IO[bytes], n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def sniff_stream(raw: IO[bytes]) -> str:
    """The format of the data at the current position of a seekable binary stream;
    the position is restored. Raises :class:`UnknownFormat`."""
    start = raw.tell()
    try:
        head = _read_up_to(raw, BLOCK)
        if head.startswith(_ZIP_MAGIC):
            return "zip"
        compression = compression_of(head)
        if compression is not None:
            raw.seek(start)
            try:
                inner = _read_up_to(open_decompressed(raw, compression), BLOCK)
            except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as exc:
                raise CorruptArchive(
                    f"{compression} data cannot be decompressed: {exc}", compression=compression
                ) from None
            return f"tar.{compression}" if is_tar_header(inner) else compression
        if is_tar_header(head):
            return "tar"
        raw.seek(start)
        # A zip with data in front (self-extracting archives): found by its central directory.
        if zipfile.is_zipfile(cast(Any, raw)):
            return "zip"
        raise UnknownFormat(
            "not an archive this pipeline knows (no tar, zip, gzip, bzip2, xz or zstd header)"
        )
    finally:
        raw.seek(start)


def sniff(path: Path) -> str:
    """The format of a file, from its content. Raises :class:`UnknownFormat`."""
    with open(path, "rb") as f:
        try:
            return sniff_stream(f)
        except UnknownFormat as exc:
            raise UnknownFormat(f"{path.name}: {exc}", path=str(path)) from None
        except CorruptArchive as exc:
            raise CorruptArchive(f"{path.name}: {exc}", path=str(path)) from None


def resolve_format(path: Path, declared: str | None) -> str:
    """The format to extract ``path`` with: the sniffed one when ``declared`` is ``None``
    or ``auto``; else ``declared``, after checking the content agrees with it.

    A declared single-file compression (``gz``) of a compressed tar is honoured: the caller
    asked for the ``.tar`` itself. Raises :class:`FormatMismatch`, :class:`UnknownFormat`.
    """
    if declared in (None, "", "auto"):
        return sniff(path)
    assert declared is not None
    if declared not in FORMATS:
        raise UnknownFormat(
            f"{declared!r} is not an archive format; use one of {', '.join(FORMATS)}",
            declared=declared,
        )
    try:
        actual = sniff(path)
    except UnknownFormat:
        actual = "unknown"
    # gz declared for a tar.gz: the caller wants the .tar itself. tar.gz declared for
    # what sniffs as gz: the compression agrees and the tar inside is found (or found
    # broken) by the extraction; sniffing only looks at the first 512 bytes.
    compatible = (
        actual == declared
        or (declared in COMPRESSIONS and actual == f"tar.{declared}")
        or (declared.startswith("tar.") and actual == declared[4:])
        # Old or odd tars (and empty ones) have no magic: the extraction judges them.
        or (declared == "tar" and actual == "unknown")
    )
    if not compatible:
        raise FormatMismatch(
            f"{path.name}: the manifest says {declared} but the content is {actual}",
            path=str(path),
            declared=declared,
            actual=actual,
        )
    return declared


def output_name(archive_name: str, compression: str) -> str:
    """Name of the file a single-file compression decompresses to: the archive's name
    without its suffix (``train-images-idx3-ubyte.gz`` -> ``train-images-idx3-ubyte``),
    or with ``.out`` appended when it has no known suffix."""
    lower = archive_name.lower()
    for suffix in SUFFIXES[compression]:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return archive_name[: -len(suffix)]
    return archive_name + ".out"

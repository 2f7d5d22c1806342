"""Archive generators for the unpack tests and bench: honest archives of every format,
nested tar-of-tars, ImageNet-like inputs, and hostile archives (traversal, link escapes,
device nodes, zip bombs, lying sizes, a million empty entries).

Everything is written into a folder the caller gives (a ``tmp_path``); contents are
deterministic for a given seed.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import zstandard

MTIME = 1_700_000_000


def payload(seed: int, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def sample_tree(
    count: int = 20, min_size: int = 0, max_size: int = 4096, seed: int = 0
) -> dict[str, bytes]:
    """A small dataset: files in a few nested folders, sizes in [min_size, max_size]."""
    rng = random.Random(seed)
    folders = ["", "a", "a/b", "c"]
    files: dict[str, bytes] = {}
    for i in range(count):
        folder = folders[i % len(folders)]
        name = f"{folder}/f{i:04d}.bin" if folder else f"f{i:04d}.bin"
        files[name] = payload(seed * 100_003 + i, rng.randint(min_size, max_size))
    return files


def write_tree(root: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (relative name -> content) below ``root``."""
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (symlinks not followed), by relative name; the
    pipeline's own bookkeeping (``.acquired/`` of an extraction into the destination
    itself) is not part of the dataset and is left out."""
    out: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        if p.relative_to(root).parts[0] == ".acquired":
            continue
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def _compress_writer(raw: IO[bytes], compression: str | None) -> IO[bytes]:
    if compression is None:
        return raw
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)  # type: ignore[return-value]
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="wb")  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="wb")  # type: ignore[return-value]
    if compression == "zst":
        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)  # type: ignore[return-value]
    raise ValueError(compression)


def _file_info(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = MTIME
    return info


def write_tar_members(
    path: Path,
    members: Iterable[tuple[tarfile.TarInfo, bytes | None]],
    compression: str | None = None,
) -> Path:
    """A tar of explicit members (``TarInfo``, data or ``None``), optionally compressed."""
    with open(path, "wb") as raw:
        out = _compress_writer(raw, compression)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for info, data in members:
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        if out is not raw:
            out.close()
    return path


def make_tar(
    path: Path,
    files: Mapping[str, bytes],
    compression: str | None = None,
    *,
    dirs: bool = True,
) -> Path:
    """A tar (``compression``: None, gz, bz2, xz, zst) of ``files``, with folder entries."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    seen: set[str] = set()
    for name, data in files.items():
        if dirs:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = MTIME
                    members.append((info, None))
        members.append((_file_info(name, len(data)), data))
    return write_tar_members(path, members, compression)


def make_zip(
    path: Path, files: Mapping[str, bytes], compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    """A zip of ``files`` (Unix modes recorded)."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=time.localtime(MTIME)[:6])
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = compression
            zf.writestr(info, data)
    return path


def tar_gz_bytes(members: Mapping[str, bytes]) -> bytes:
    """A .tar.gz of regular files, in memory (for a loopback server to serve)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress_bytes(data: bytes, compression: str) -> bytes:
    """``data`` compressed as a single gz, bz2, xz or zst file."""
    buf = io.BytesIO()
    out = _compress_writer(buf, compression)
    out.write(data)
    out.close()
    return buf.getvalue()


def make_single(path: Path, data: bytes, compression: str) -> Path:
    """One compressed file (``x.gz``...)."""
    path.write_bytes(compress_bytes(data, compression))
    return path


def make_archive(path: Path, files: Mapping[str, bytes], fmt: str) -> Path:
    """An archive of ``files`` in any container format name (tar, tar.gz, ..., zip)."""
    if fmt == "zip":
        return make_zip(path, files)
    if fmt == "tar":
        return make_tar(path, files)
    assert fmt.startswith("tar.")
    return make_tar(path, files, fmt[4:])


def make_nested_tar(
    path: Path,
    inner: Mapping[str, Mapping[str, bytes]],
    *,
    inner_format: str = "tar",
    outer_compression: str | None = None,
    extra: Mapping[str, bytes] | None = None,
) -> Path:
    """An archive of archives: ``inner`` maps an inner archive's name (``n01.tar``) to
    its files. ``extra`` adds plain members next to the inner archives."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    scratch = path.parent / f".{path.name}.inner"
    scratch.mkdir(exist_ok=True)
    for name, files in inner.items():
        p = make_archive(scratch / Path(name).name, files, inner_format)
        data = p.read_bytes()
        p.unlink()
        members.append((_file_info(name, len(data)), data))
    for name, data in (extra or {}).items():
        members.append((_file_info(name, len(data)), data))
    scratch.rmdir()
    return write_tar_members(path, members, outer_compression)


# --- hostile archives -------------------------------------------------------------------


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mtime = MTIME
    return info


def hostile_tar(path: Path, kind: str) -> Path:
    """A tar that must be refused. ``kind``: traversal, absolute, symlink_escape,
    symlink_absolute, hardlink_escape, device, fifo, through_symlink, symlink_chain,
    hardlink_to_missing."""
    ok = b"harmless\n"
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(_file_info("ok.txt", len(ok)), ok)]
    evil = b"evil\n"
    if kind == "traversal":
        members.append((_file_info("../escaped.txt", len(evil)), evil))
    elif kind == "absolute":
        members.append((_file_info(str(path.parent / "absolute.txt"), len(evil)), evil))
    elif kind == "symlink_escape":
        members.append((_link("link", "../../outside", tarfile.SYMTYPE), None))
    elif kind == "symlink_absolute":
        members.append((_link("link", "/etc", tarfile.SYMTYPE), None))
    elif kind == "hardlink_escape":
        members.append((_link("hard", "../outside.txt", tarfile.LNKTYPE), None))
    elif kind == "device":
        dev = tarfile.TarInfo("null")
        dev.type = tarfile.CHRTYPE
        dev.devmajor, dev.devminor = 1, 3
        members.append((dev, None))
    elif kind == "fifo":
        fifo = tarfile.TarInfo("pipe")
        fifo.type = tarfile.FIFOTYPE
        members.append((fifo, None))
    elif kind == "through_symlink":
        # A symlink inside the folder, then a file written through it.
        members.append((_link("sub", ".", tarfile.SYMTYPE), None))
        members.append((_file_info("sub/via-link.txt", len(evil)), evil))
    elif kind == "symlink_chain":
        # Each link is inside when it is made (x does not exist yet when a is checked);
        # together they lead out: a -> x/.. -> ./.. -> the parent of the folder.
        members.append((_link("a", "x/..", tarfile.SYMTYPE), None))
        members.append((_link("x", ".", tarfile.SYMTYPE), None))
    elif kind == "hardlink_to_missing":
        members.append((_link("hard", "not-there.txt", tarfile.LNKTYPE), None))
    else:
        raise ValueError(kind)
    return write_tar_members(path, members)


def setuid_tar(path: Path) -> Path:
    """A tar whose file has setuid/setgid/sticky and group/other write bits."""
    data = b"#!/bin/sh\necho hi\n"
    return write_tar_members(path, [(_file_info("tool.sh", len(data), 0o7777), data)])


def zip_bomb(path: Path, members: int = 40, member_size: int = 64 << 20) -> Path:
    """A zip whose members each inflate to ``member_size`` zeros (declared honestly):
    ``members * member_size`` bytes from a few hundred KB. The deflate stream is made
    once and written for every member."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = [comp.compress(chunk) for _ in range(member_size >> 20)]
    parts.append(comp.flush())
    deflated = b"".join(parts)
    crc = 0
    for _ in range(member_size >> 20):
        crc = zlib.crc32(chunk, crc)
    return _raw_zip(
        path, [(f"zeros{i:03d}.bin", deflated, member_size, crc) for i in range(members)]
    )


def lying_zip(path: Path, real_size: int = 32 << 20, declared_size: int = 1000) -> Path:
    """A zip whose one member declares ``declared_size`` bytes but inflates to
    ``real_size`` (zeros)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = comp.compress(bytes(real_size)) + comp.flush()
    crc = zlib.crc32(bytes(declared_size))
    return _raw_zip(path, [("small.bin", deflated, declared_size, crc)])


def _raw_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> Path:
    """A zip written by hand: (name, deflated data, declared size, crc) per member."""
    out = io.BytesIO()
    central = io.BytesIO()
    for name, data, size, crc in members:
        offset = out.tell()
        raw_name = name.encode()
        local = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(raw_name), 0
        )
        out.write(local + raw_name + data)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                (3 << 8) | 20,
                20,
                0,
                8,
                0,
                0x21,
                crc,
                len(data),
                size,
                len(raw_name),
                0,
                0,
                0,
                0,
                (stat.S_IFREG | 0o644) << 16,
                offset,
            )
            + raw_name
        )
    cd = central.getvalue()
    start = out.tell()
    out.write(cd)
    out.write(
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(cd), start, 0)
    )
    path.write_bytes(out.getvalue())
    return path


def zip_with_entry(path: Path, name: str, mode: int, data: bytes = b"") -> Path:
    """A zip with one harmless file and one entry of Unix ``mode`` (a symlink's data is
    its target)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"harmless\n")
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


def many_empty_entries(path: Path, count: int) -> Path:
    """A tar.zst of ``count`` empty files (``e/0000000``...): ``count`` * 512 bytes of tar
    compressed to almost nothing. Headers are stamped from one template (tarfile would
    take minutes for a million)."""
    template = bytearray(_file_info("e/0000000", 0).tobuf(format=tarfile.USTAR_FORMAT))
    base = sum(template) - sum(template[148:156]) + 8 * 32 - sum(template[2:9])
    compressor = zstandard.ZstdCompressor(level=1)
    with open(path, "wb") as raw, compressor.stream_writer(raw, closefd=False) as out:
        batch = bytearray()
        for i in range(count):
            digits = b"%07d" % i
            template[2:9] = digits
            template[148:156] = b"%06o\x00 " % (base + sum(digits))
            batch += template
            if len(batch) >= 1 << 20:
                out.write(batch)
                batch.clear()
        batch += bytes(1024)
        out.write(batch)
    return path


# --- ImageNet-like inputs ------------------------------------------------------------------


def imagenet_val(folder: Path, images: int, classes: int, seed: int = 0) -> dict[str, Any]:
    """ImageNet-validation-like inputs in ``folder``: ``val/ILSVRC2012_val_%08d.JPEG``,
    the devkit's ground truth (class index 1..classes per image, in image order), a synset
    list in index order (``synsets.txt``: wnid per line), a per-image label file
    (``labels.txt``) and ``LOC_val_solution.csv``. Returns the expected wnid per image."""
    rng = random.Random(seed)
    wnids = [f"n{rng.randrange(10**7, 10**8):08d}" for _ in range(classes)]
    val = folder / "val"
    val.mkdir(parents=True)
    truth: list[int] = []
    expected: dict[str, str] = {}
    for i in range(1, images + 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        (val / name).write_bytes(payload(seed + i, 64))
        index = rng.randint(1, classes)
        truth.append(index)
        expected[name] = wnids[index - 1]
    (folder / "ground_truth.txt").write_text("".join(f"{t}\n" for t in truth))
    (folder / "synsets.txt").write_text("".join(f"{w} some words, more words\n" for w in wnids))
    (folder / "labels.txt").write_text("".join(f"{expected[n]}\n" for n in sorted(expected)))
    rows = ["ImageId,PredictionString"] + [
        f"{n[:-5]},{w} 1 2 3 4 {w} 5 6 7 8" for n, w in sorted(expected.items())
    ]
    (folder / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return {"val": val, "wnids": wnids, "expected": expected}


def links_tar(
    path: Path, links: Mapping[str, str], files: Mapping[str, bytes] | None = None
) -> Path:
    """A tar of symlinks (name -> target, in order) and then files."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_link(name, target, tarfile.SYMTYPE), None) for name, target in links.items()
    ]
    members += [(_file_info(name, len(data)), data) for name, data in (files or {}).items()]
    return write_tar_members(path, members)

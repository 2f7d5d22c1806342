"""Bombs are refused as the stream is read, long before their whole budget is written; and
an extraction never eats into the disk reserve (a full disk, which the daemon waits out)."""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from pathlib import Path

import pytest

from acquired.unpack.errors import DiskFull, TooLarge
from acquired.unpack.extract import extract
from acquired.unpack.safety import Limits

MiB = 1 << 20


def gzip_bomb(path: Path, members: int, member_size: int = 64 * MiB) -> Path:
    """Concatenated gzip members of zeros (gzip readers read them all as one stream):
    ``members * member_size`` bytes out of a few KB each. One member is made and
    repeated, so building it costs one compression."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(MiB)
    member = b"".join(comp.compress(chunk) for _ in range(member_size // MiB)) + comp.flush()
    with open(path, "wb") as out:
        for _ in range(members):
            out.write(member)
    return path


def test_a_gzip_bomb_stops_early_not_at_its_budget(tmp_path: Path) -> None:
    bomb = gzip_bomb(tmp_path / "zeros.bin.gz", members=40)  # 2.5 GiB of zeros
    size = bomb.stat().st_size
    limits = Limits(ratio_floor=16 * MiB)
    budget = limits.allowed_bytes(size)
    assert budget is not None and budget > 400 * MiB  # what used to be written first
    with pytest.raises(TooLarge) as info:
        extract(bomb, tmp_path / "out", "gz", limits, workers=1)
    written = int(info.value.details["written"])
    assert 16 * MiB < written < 64 * MiB, written
    assert written * 8 < budget
    assert info.value.details["kind"] == "ratio" and "stopped early" in str(info.value)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def tar_gz_bomb(path: Path, members: int, member_size: int = 16 * MiB) -> Path:
    """A tar.gz of ``members`` files of zeros, each below any per-file check: written as
    concatenated gzip members (a header, then one compressed run of zeros made once)."""
    zeros = gzip.compress(bytes(member_size), compresslevel=9)
    with open(path, "wb") as out:
        for i in range(members):
            info = tarfile.TarInfo(f"zeros{i:03d}.bin")
            info.size = member_size
            out.write(gzip.compress(info.tobuf(tarfile.PAX_FORMAT)))
            out.write(zeros)
        out.write(gzip.compress(bytes(2 * tarfile.BLOCKSIZE)))
    return path


def test_a_tar_gz_bomb_of_many_members_stops_early(tmp_path: Path) -> None:
    bomb = tar_gz_bomb(tmp_path / "zeros.tar.gz", members=64)  # 1 GiB of zeros
    limits = Limits(ratio_floor=16 * MiB)
    budget = limits.allowed_bytes(bomb.stat().st_size)
    assert budget is not None and budget > 128 * MiB
    with pytest.raises(TooLarge) as err:
        extract(bomb, tmp_path / "out", "tar.gz", limits, workers=1)
    assert 16 * MiB < int(err.value.details["written"]) < 64 * MiB


def test_an_honest_archive_past_the_floor_is_not_stopped(tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    archive = tmp_path / "rand.bin.gz"
    archive.write_bytes(gzip.compress(data))
    result = extract(archive, tmp_path / "out", "gz", Limits(ratio_floor=MiB), workers=1)
    assert result.bytes == len(data)
    assert (tmp_path / "out" / "rand.bin").read_bytes() == data


@pytest.mark.parametrize("known_size", [True, False])
def test_extraction_never_eats_into_the_disk_reserve(tmp_path: Path, known_size: bool) -> None:
    big = 64 * MiB
    if known_size:  # the tar header declares the size: refused before writing
        archive, fmt = tar_gz_bomb(tmp_path / "big.tar.gz", 1, big), "tar.gz"
    else:  # a bare .gz: refused once the written bytes reach the reserve
        archive, fmt = gzip_bomb(tmp_path / "big.bin.gz", members=1), "gz"
    usage = os.statvfs(tmp_path)
    free = usage.f_bavail * usage.f_frsize
    reserve = free - 8 * MiB  # leaves room for about 8 MiB
    with pytest.raises(DiskFull) as info:
        extract(archive, tmp_path / "out", fmt, Limits(reserve=reserve), workers=1)
    assert info.value.code == "disk.full"
    assert "reserve" in str(info.value)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))

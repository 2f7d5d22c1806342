"""Hostile archives are refused with their own error code and nothing is written outside
the target — nor inside it."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import archives as A

from acquired.unpack import safety
from acquired.unpack.errors import (
    CorruptArchive,
    LinkEscape,
    PathTraversal,
    SpecialFile,
    TooLarge,
    TooManyEntries,
    UnpackError,
)
from acquired.unpack.extract import extract
from acquired.unpack.safety import Limits


def snapshot(root: Path) -> set[str]:
    """Every path below root (links not followed) except the bookkeeping folder."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if ".acquired" not in p.relative_to(root).parts
    }


def refused(tmp_path: Path, archive: Path, error: type[UnpackError], **kw: object) -> UnpackError:
    before = snapshot(tmp_path)
    target = tmp_path / "target"
    with pytest.raises(error) as info:
        extract(archive, target, **kw)  # type: ignore[arg-type]
    # Nothing new anywhere: not outside the target, not in it, no staging left behind.
    assert snapshot(tmp_path) - before <= {"target"}
    assert not target.exists() or list(target.iterdir()) == []
    meta = tmp_path / ".acquired" / "target"
    assert not meta.exists() or all(p.suffix in (".lock",) for p in meta.iterdir())
    return info.value


@pytest.mark.parametrize(
    ("kind", "error", "code"),
    [
        ("traversal", PathTraversal, "unpack.path_traversal"),
        ("absolute", PathTraversal, "unpack.path_traversal"),
        ("symlink_escape", LinkEscape, "unpack.link_escape"),
        ("symlink_absolute", LinkEscape, "unpack.link_escape"),
        ("hardlink_escape", LinkEscape, "unpack.link_escape"),
        ("through_symlink", LinkEscape, "unpack.link_escape"),
        ("symlink_chain", LinkEscape, "unpack.link_escape"),
        ("device", SpecialFile, "unpack.special_file"),
        ("fifo", SpecialFile, "unpack.special_file"),
        ("hardlink_to_missing", CorruptArchive, "unpack.corrupt_archive"),
    ],
)
def test_hostile_tar(tmp_path: Path, kind: str, error: type[UnpackError], code: str) -> None:
    archive = A.hostile_tar(tmp_path / f"{kind}.tar", kind)
    err = refused(tmp_path, archive, error)
    assert err.code == code and err.hint
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "absolute.txt").exists()


def test_hostile_tar_compressed_and_nested(tmp_path: Path) -> None:
    evil = A.hostile_tar(tmp_path / "evil.tar", "traversal").read_bytes()
    (tmp_path / "evil.tar").unlink()
    ok = A.make_tar(tmp_path / "ok.tar", {"x.JPEG": b"x"}).read_bytes()
    (tmp_path / "ok.tar").unlink()
    members = [(A._file_info(f"n{i}.tar", len(ok)), ok) for i in range(6)] + [
        (A._file_info("n9.tar", len(evil)), evil)
    ]
    outer = A.write_tar_members(tmp_path / "train.tar", members)
    refused(tmp_path, outer, PathTraversal, nested=True, workers=2)
    outer_gz = A.write_tar_members(tmp_path / "train.tar.gz", members, "gz")
    refused(tmp_path, outer_gz, PathTraversal, nested=True, workers=2)


def test_symlinks_inside_are_fine(tmp_path: Path) -> None:
    data = b"data\n"
    members = [
        (A._file_info("real/file.txt", len(data)), data),
        (A._link("alias", "real/file.txt", tarfile.SYMTYPE), None),
        (A._link("dir-alias", "real", tarfile.SYMTYPE), None),
        (A._link("hard", "real/file.txt", tarfile.LNKTYPE), None),
    ]
    archive = A.write_tar_members(tmp_path / "ok.tar", members)
    extract(archive, tmp_path / "t")
    assert (tmp_path / "t" / "alias").read_bytes() == data
    assert os.readlink(tmp_path / "t" / "dir-alias") == "real"
    assert (tmp_path / "t" / "hard").stat().st_ino == (
        tmp_path / "t" / "real/file.txt"
    ).stat().st_ino


def test_setuid_bits_are_cleared(tmp_path: Path) -> None:
    extract(A.setuid_tar(tmp_path / "s.tar"), tmp_path / "t")
    mode = (tmp_path / "t" / "tool.sh").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)


# --- zip ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode", "data", "error"),
    [
        ("../evil.txt", stat.S_IFREG | 0o644, b"x", PathTraversal),
        ("/tmp/evil.txt", stat.S_IFREG | 0o644, b"x", PathTraversal),
        ("link", stat.S_IFLNK | 0o777, b"../../etc", LinkEscape),
        ("link", stat.S_IFLNK | 0o777, b"/etc/passwd", LinkEscape),
        ("dev", stat.S_IFCHR | 0o644, b"", SpecialFile),
        ("fifo", stat.S_IFIFO | 0o644, b"", SpecialFile),
        ("sock", stat.S_IFSOCK | 0o644, b"", SpecialFile),
    ],
)
def test_hostile_zip(
    tmp_path: Path, name: str, mode: int, data: bytes, error: type[UnpackError]
) -> None:
    archive = A.zip_with_entry(tmp_path / "h.zip", name, mode, data)
    refused(tmp_path, archive, error)


def test_zip_symlink_inside_is_made(tmp_path: Path) -> None:
    archive = A.zip_with_entry(tmp_path / "ok.zip", "alias", stat.S_IFLNK | 0o777, b"ok.txt")
    extract(archive, tmp_path / "t")
    assert os.readlink(tmp_path / "t" / "alias") == "ok.txt"
    assert (tmp_path / "t" / "alias").read_bytes() == b"harmless\n"


def test_zip_bomb_refused_before_writing(tmp_path: Path) -> None:
    bomb = A.zip_bomb(tmp_path / "bomb.zip", members=40, member_size=64 << 20)
    assert bomb.stat().st_size < 8 << 20
    err = refused(tmp_path, bomb, TooLarge)
    assert err.code == "unpack.too_large" and err.details["kind"] == "ratio"


def test_zip_member_lying_about_its_size(tmp_path: Path) -> None:
    liar = A.lying_zip(tmp_path / "liar.zip", real_size=32 << 20, declared_size=1000)
    refused(tmp_path, liar, CorruptArchive)


def test_bomb_through_a_compressed_stream(tmp_path: Path) -> None:
    # tar.zst of one 96 MB member of zeros: a few KB of archive. With a 1 MB floor the
    # ratio limit trips while writing; the declared size trips it even before.
    data_tar = A.write_tar_members(
        tmp_path / "zeros.tar.zst", [(A._file_info("zeros", 96 << 20), bytes(96 << 20))], "zst"
    )
    limits = Limits(ratio_floor=1 << 20)
    refused(tmp_path, data_tar, TooLarge, limits=limits)
    single = A.make_single(tmp_path / "zeros.zst", bytes(96 << 20), "zst")
    refused(tmp_path, single, TooLarge, limits=limits)


def test_absolute_size_limit(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", A.sample_tree(20, 1000, 2000))
    err = refused(tmp_path, archive, TooLarge, limits=Limits(max_bytes=10_000))
    assert err.details["kind"] == "absolute"


def test_entry_limit(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", A.sample_tree(200, 0, 10))
    refused(tmp_path, archive, TooManyEntries, limits=Limits(max_entries=150))


def test_limits_span_nested_archives(tmp_path: Path) -> None:
    # Each inner archive alone is under the limit; together they are not.
    inner = {f"n{i}.tar": A.sample_tree(30, 0, 10, seed=i) for i in range(10)}
    outer = A.make_nested_tar(tmp_path / "train.tar", inner)
    refused(tmp_path, outer, TooManyEntries, nested=True, workers=2, limits=Limits(max_entries=200))


@pytest.mark.slow
def test_a_million_empty_entries(tmp_path: Path) -> None:
    # About a megabyte of tar.zst; refused by the default limits (one entry per 32 bytes
    # of archive past 100,000 entries) long before a million files exist.
    archive = A.many_empty_entries(tmp_path / "million.tar.zst", 1_000_000)
    assert archive.stat().st_size < 4 << 20
    err = refused(tmp_path, archive, TooManyEntries)
    assert err.details["limit"] == 100_000


# --- the rules as functions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "normal"),
    [("a/b", "a/b"), ("./a//b/", "a/b"), ("./", ""), ("a/./b", "a/b")],
)
def test_check_name_normalises(name: str, normal: str) -> None:
    assert safety.check_name(name) == normal


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "x\x00y"])
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(PathTraversal):
        safety.check_name(name)


@given(st.integers(min_value=0, max_value=0o7777))
def test_file_mode_matches_tarfile_data_filter(mode: int) -> None:
    info = tarfile.TarInfo("f")
    info.mode = mode
    filtered = tarfile.data_filter(info, "/tmp")
    assert safety.filtered_file_mode(mode) == filtered.mode


def test_limits_math() -> None:
    lim = Limits()
    assert lim.allowed_bytes(10) == 1 << 30  # the floor
    assert lim.allowed_bytes(100 << 30) == 4 << 40  # the absolute cap
    assert lim.allowed_entries(1 << 20) == 100_000
    # ImageNet train: 147 GB, 1.28 million files.
    imagenet = lim.allowed_entries(147_000_000_000)
    assert imagenet is not None and imagenet > 1_281_167
    assert Limits(max_ratio=None, max_bytes=None).allowed_bytes(1) is None

"""The ``.part`` file never writes through a link: a planted ``.part`` symlink, a folder of
the destination swapped for a link before the open or before the final rename."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.fstree import snapshot
from support.http_engine import download, request_for
from support.http_server import payload, serving

from acquired.common.safepath import PathEscapes
from acquired.sources.http.partfile import PartFile, drop_empty_part

DATA = payload(256 * 1024)


def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """data/ds (the destination) and a sibling folder holding a victim file."""
    root = tmp_path / "data"
    (root / "ds").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    return root, outside, victim


@pytest.mark.parametrize("with_root", [True, False])
def test_a_planted_part_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path, with_root: bool
) -> None:
    root, outside, victim = layout(tmp_path)
    os.symlink(victim, root / "ds" / "big.bin.part")
    before = snapshot(outside)
    with pytest.raises(PathEscapes) as info:
        PartFile(root / "ds" / "big.bin.part", root if with_root else None)
    assert info.value.code == "path.escapes_destination"
    assert "big.bin.part" in str(info.value)
    assert snapshot(outside) == before


def test_the_http_engine_refuses_a_planted_part_symlink(tmp_path: Path) -> None:
    root, outside, victim = layout(tmp_path)
    dest = root / "ds" / "big.bin"
    os.symlink(victim, dest.with_name("big.bin.part"))
    before = snapshot(outside)
    with serving(("/f", DATA)) as server, pytest.raises(PathEscapes):
        download(request_for(server.url("/f"), dest, DATA))
    assert snapshot(outside) == before
    assert not dest.exists()


def test_a_folder_swapped_for_a_link_before_the_open_is_refused(tmp_path: Path) -> None:
    root, outside, _ = layout(tmp_path)
    shutil.rmtree(root / "ds")
    os.symlink(outside, root / "ds")
    before = snapshot(outside)
    with pytest.raises(PathEscapes) as info:
        PartFile(root / "ds" / "sub" / "f.bin.part", root)
    assert info.value.details["component"] == "ds"
    assert snapshot(outside) == before


def test_a_folder_swapped_before_the_rename_keeps_the_file_out_of_the_link(
    tmp_path: Path,
) -> None:
    root, outside, _ = layout(tmp_path)
    part = PartFile(root / "ds" / "sub" / "f.bin.part", root)
    part.pwrite(b"payload", 0)
    # The folder moves away and a link to a folder outside takes its place (the "retry
    # after a failed rename" and "while paused" cases both end here).
    os.rename(root / "ds", tmp_path / "moved")
    os.symlink(outside, root / "ds")
    before = snapshot(outside)
    with pytest.raises(PathEscapes):
        part.rename_to(root / "ds" / "sub" / "f.bin")
    assert snapshot(outside) == before
    assert (tmp_path / "moved" / "sub" / "f.bin.part").read_bytes() == b"payload"


def test_rename_into_place_and_remove(tmp_path: Path) -> None:
    root, _, _ = layout(tmp_path)
    part = PartFile(root / "ds" / "a" / "f.bin.part", root)
    part.pwrite(b"abc", 0)
    part.rename_to(root / "ds" / "a" / "f.bin")
    assert (root / "ds" / "a" / "f.bin").read_bytes() == b"abc"
    other = PartFile(root / "ds" / "g.part", root)
    other.pwrite(b"x", 0)
    other.remove()
    assert not (root / "ds" / "g.part").exists()


def test_drop_empty_part_only_removes_an_empty_regular_part(tmp_path: Path) -> None:
    root, outside, victim = layout(tmp_path)
    ds = root / "ds"
    (ds / "empty.bin.part").write_bytes(b"")
    (ds / "half.bin.part").write_bytes(b"half")
    empty_outside = outside / "empty"
    empty_outside.write_bytes(b"")
    os.symlink(empty_outside, ds / "link.bin.part")
    for name in ("empty.bin", "half.bin", "link.bin", "missing.bin"):
        drop_empty_part(root, ds / name)
    assert not (ds / "empty.bin.part").exists()
    assert (ds / "half.bin.part").read_bytes() == b"half"
    assert (ds / "link.bin.part").is_symlink() and empty_outside.exists()
    assert victim.read_bytes() == b"precious"

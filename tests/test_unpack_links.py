"""Nothing written outside the destination by archives whose links only escape together,
by a later write through a placed or planted link, or after the destination (or a folder
in it) was swapped for a link between two steps."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.archives import links_tar, make_tar
from support.fstree import snapshot

from acquired.common.safepath import PathEscapes
from acquired.unpack import UnpackStep, process_file
from acquired.unpack.errors import LinkEscape
from acquired.unpack.extract import extract
from acquired.unpack.pipeline import ListingStep, finish_job
from acquired.unpack.placement import link_problem


def world(tmp_path: Path) -> tuple[Path, Path]:
    """data/ds (the destination) beside data/neighbour (another dataset)."""
    data = tmp_path / "data"
    (data / "ds").mkdir(parents=True)
    (data / "neighbour").mkdir()
    (data / "neighbour" / "keep.txt").write_text("neighbour's")
    return data, data / "ds"


def outside_of(tmp_path: Path) -> dict[str, object]:
    """Everything except the destination itself."""
    snap = snapshot(tmp_path)
    return {k: v for k, v in snap.items() if not k.startswith(("data/ds/", "archives/"))}


def unpack(archive: Path, data: Path, ds: Path, into: str = ".") -> None:
    process_file(
        archive,
        job_root=ds,
        data_root=data,
        digests={},
        steps=[UnpackStep(format="tar", into=into)],
        verified=True,
        workers=1,
    )


def archives(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "archives"
    folder.mkdir()
    return {
        "A": links_tar(folder / "A.tar", {"s1": "s2/..", "train": "s1"}),
        "B": links_tar(folder / "B.tar", {"s2": "."}),
        "C": make_tar(folder / "C.tar", {"escaped.bin": b"C's data"}),
    }


def test_a_link_chain_split_across_archives_is_refused_a_then_b(tmp_path: Path) -> None:
    data, ds = world(tmp_path)
    arc = archives(tmp_path)
    before = outside_of(tmp_path)
    with pytest.raises(LinkEscape) as info:
        unpack(arc["A"], data, ds)
    assert "s2" in str(info.value) and "does not exist" in str(info.value)
    assert not os.path.lexists(ds / "s1") and not os.path.lexists(ds / "train")
    unpack(arc["B"], data, ds)
    unpack(arc["C"], data, ds, into="train")
    assert (ds / "train" / "escaped.bin").read_bytes() == b"C's data"
    assert not (ds / "train").is_symlink()
    assert outside_of(tmp_path) == before


def test_a_link_chain_split_across_archives_is_refused_b_then_a(tmp_path: Path) -> None:
    data, ds = world(tmp_path)
    arc = archives(tmp_path)
    before = outside_of(tmp_path)
    unpack(arc["B"], data, ds)
    with pytest.raises(LinkEscape) as info:
        unpack(arc["A"], data, ds)
    assert "outside the destination" in str(info.value)
    assert not os.path.lexists(ds / "s1") and not os.path.lexists(ds / "train")
    unpack(arc["C"], data, ds, into="train")
    assert outside_of(tmp_path) == before


def test_links_placed_earlier_are_checked_again(tmp_path: Path) -> None:
    """``up -> s/..`` is harmless while ``s`` is a folder; once an archive puts a link
    ``s -> .`` there (after the folder was removed), ``up`` would lead out."""
    data, ds = world(tmp_path)
    folder = tmp_path / "archives"
    folder.mkdir()
    unpack(make_tar(folder / "dir.tar", {"s/x": b"x"}), data, ds)
    unpack(links_tar(folder / "up.tar", {"up": "s/.."}), data, ds)
    shutil.rmtree(ds / "s")
    before = outside_of(tmp_path)
    with pytest.raises(LinkEscape) as info:
        unpack(links_tar(folder / "s.tar", {"s": "."}), data, ds)
    assert "'up'" in str(info.value)
    assert not os.path.lexists(ds / "s")
    assert outside_of(tmp_path) == before


def test_extracting_into_a_planted_link_is_refused(tmp_path: Path) -> None:
    data, ds = world(tmp_path)
    arc = archives(tmp_path)
    os.symlink("../neighbour", ds / "train")
    before = outside_of(tmp_path)
    with pytest.raises(PathEscapes) as info:
        unpack(arc["C"], data, ds, into="train")
    assert info.value.code == "path.escapes_destination"
    assert outside_of(tmp_path) == before


def test_a_destination_swapped_for_a_link_is_refused(tmp_path: Path) -> None:
    data, ds = world(tmp_path)
    arc = archives(tmp_path)
    os.rename(ds, data / "ds-moved")
    os.symlink("neighbour", ds)
    before = outside_of(tmp_path)
    with pytest.raises(PathEscapes):
        unpack(arc["C"], data, ds)
    assert outside_of(tmp_path) == before


def test_a_folder_swapped_during_extraction_gets_nothing(tmp_path: Path) -> None:
    """The target is replaced by a link to a neighbour after the archive was extracted
    into staging and before it is placed (a real job step, the swap planted between)."""
    data, ds = world(tmp_path)
    arc = archives(tmp_path)
    (ds / "train").mkdir()

    def swap() -> None:
        os.rename(ds / "train", ds / "train-moved")
        os.symlink("../neighbour", ds / "train")

    before = {**outside_of(tmp_path)}
    with pytest.raises(PathEscapes):
        extract(arc["C"], ds / "train", "tar", workers=1, root=ds, base=data, before_place=swap)
    assert outside_of(tmp_path) == before
    assert list((ds / "train-moved").iterdir()) == []


def test_into_dot_keeps_its_bookkeeping_inside_the_destination(tmp_path: Path) -> None:
    data, ds = world(tmp_path)
    arc = archives(tmp_path)
    before = outside_of(tmp_path)
    unpack(arc["C"], data, ds)
    assert (ds / "escaped.bin").exists()
    assert (ds / ".acquired" / "C.tar.json").exists()
    assert outside_of(tmp_path) == before


@pytest.mark.parametrize(
    ("links", "check", "ok"),
    [
        ({"a": "b"}, "a", True),  # dangling at its last component
        ({"a": "b/c"}, "a", False),  # through a missing folder
        ({"a": ".."}, "a", False),
        ({"d/a": "../x"}, "d/a", True),
        ({"l": ".", "a": "l/l/l"}, "a", True),
        ({"l": "..", "a": "l/ds/x"}, "a", False),  # out and back in still left
        ({"p": "q", "q": "p"}, "p", False),  # a loop
    ],
)
def test_link_problem_table(tmp_path: Path, links: dict[str, str], check: str, ok: bool) -> None:
    root = tmp_path / "ds"
    (root / "d").mkdir(parents=True)
    for name, target in links.items():
        os.symlink(target, root / name)
    assert (link_problem(str(root), str(root / check)) is None) is ok


def test_bookkeeping_swapped_for_a_link_mid_extraction_writes_nothing_outside(
    tmp_path: Path,
) -> None:
    """Once the extraction has started, the destination's ``.acquired`` folder (staging,
    locks, journal, marker) is moved away and a link to a neighbour put in its place."""
    data, ds = world(tmp_path)
    folder = tmp_path / "archives"
    folder.mkdir()
    archive = make_tar(folder / "D.tar", {f"d/{i}.bin": bytes([i]) * 4096 for i in range(50)})
    (data / "neighbour" / "train").mkdir()
    swapped = []

    def progress(done: int, total: int) -> None:
        if not swapped:
            swapped.append(True)
            os.rename(ds / ".acquired", ds / ".acquired-moved")
            os.symlink("../neighbour", ds / ".acquired")

    before = outside_of(tmp_path)
    with pytest.raises(PathEscapes):
        extract(archive, ds / "train", "tar", workers=1, progress=progress, root=ds, base=data)
    assert swapped
    assert outside_of(tmp_path) == before
    assert not (ds / "train").exists() or list((ds / "train").iterdir()) == []


@pytest.mark.parametrize(
    ("plant", "listing"),
    [("train", ListingStep(root="train")), (".acquired", ListingStep(root="."))],
)
def test_job_steps_do_not_follow_a_planted_link(
    tmp_path: Path, plant: str, listing: ListingStep
) -> None:
    """A listing of a folder (or into the bookkeeping folder) that became a link after the
    files were placed is refused; the neighbour gets no listing."""
    _, ds = world(tmp_path)
    (ds / "img").mkdir()
    (ds / "img" / "a.bin").write_bytes(b"a")
    os.symlink("../neighbour", ds / plant)
    before = outside_of(tmp_path)
    with pytest.raises(PathEscapes):
        finish_job(ds, listings=[listing])
    assert outside_of(tmp_path) == before

"""acquired.common.safepath against planted symlink trees: whatever the tree, nothing
outside the root is opened, created, renamed or removed, and openat2 and the component
walk give the same answers."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fstree import snapshot

from acquired.common import safepath
from acquired.common.safepath import NotAFolder, PathEscapes, UnsafePath

NAMES = ["a", "b", "c"]
LINK_TARGETS = [
    ".",
    "..",
    "../..",
    "a",
    "a/b",
    "b/..",
    "../outside",
    "../../outside",
    "{outside}",
    "{outside}/victim",
    "missing",
]


@contextmanager
def implementation(kind: str) -> Iterator[None]:
    """Force openat2 or the component walk for the duration of the block."""
    if kind == "openat2" and not safepath.have_openat2():
        pytest.skip("openat2 is not available on this kernel")
    saved = safepath._openat2_state
    safepath._openat2_state = kind == "openat2"
    try:
        yield
    finally:
        safepath._openat2_state = saved


entries = st.lists(
    st.tuples(
        st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join),
        st.sampled_from(["dir", "file", "link"]),
        st.sampled_from(LINK_TARGETS),
    ),
    max_size=12,
)
rel_paths = st.lists(st.sampled_from([*NAMES, "new", "."]), min_size=1, max_size=4).map("/".join)


def build(tmp: Path, spec: list[tuple[str, str, str]]) -> tuple[Path, Path]:
    """A root with the planted entries, and a sibling ``outside`` with a victim file."""
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"victim")
    root = tmp / "root" / "data"
    root.mkdir(parents=True)
    for rel, kind, target in spec:
        path = root / rel
        if not path.parent.is_dir() or path.parent.is_symlink() or os.path.lexists(path):
            continue
        if kind == "dir":
            path.mkdir()
        elif kind == "file":
            path.write_bytes(b"inside")
        else:
            os.symlink(target.format(outside=outside), path)
    return root, outside


def expected(root: Path, rel: str) -> str:
    """What opening ``root/rel`` for writing must do, read from the tree with lstat."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    path = root
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return "create" if i == len(parts) - 1 else "missing"
        if stat.S_ISLNK(mode):
            return "escapes"
        if i < len(parts) - 1 and not stat.S_ISDIR(mode):
            return "not_a_folder"
        if i == len(parts) - 1:
            return "isdir" if stat.S_ISDIR(mode) else "open"
    return "isdir"


def attempt(root: Path, rel: str) -> str:
    try:
        fd = safepath.open_beneath(root, rel, os.O_RDWR | os.O_CREAT, 0o644)
    except PathEscapes:
        return "escapes"
    except NotAFolder:
        return "not_a_folder"
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "isdir"
    try:
        st_fd = os.fstat(fd)
        os.write(fd, b"x")
    finally:
        os.close(fd)
    # What was opened is the entry at the lexical path, reached through real folders.
    lexical = os.lstat(root / rel)
    assert (st_fd.st_dev, st_fd.st_ino) == (lexical.st_dev, lexical.st_ino)
    return "open"


@pytest.mark.parametrize("kind", ["openat2", "walk"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=entries, rel=rel_paths)
def test_open_beneath_never_leaves_the_root(
    kind: str, spec: list[tuple[str, str, str]], rel: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp, implementation(kind):
        root, outside = build(Path(tmp), spec)
        before = snapshot(outside)
        want = expected(root, rel)
        got = attempt(root, rel)
        assert got == ("open" if want == "create" else want)
        assert snapshot(outside) == before


@settings(max_examples=40, deadline=None)
@given(spec=entries, rel=rel_paths)
def test_openat2_and_walk_agree(spec: list[tuple[str, str, str]], rel: str) -> None:
    if not safepath.have_openat2():
        pytest.skip("openat2 is not available on this kernel")
    outcomes = []
    for kind in ("openat2", "walk"):
        with tempfile.TemporaryDirectory() as tmp, implementation(kind):
            root, _ = build(Path(tmp), spec)
            outcomes.append(attempt(root, rel))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("kind", ["openat2", "walk"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=entries, rel=rel_paths)
def test_mkdirs_rename_unlink_stay_inside(
    kind: str, spec: list[tuple[str, str, str]], rel: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp, implementation(kind):
        root, outside = build(Path(tmp), spec)
        before = snapshot(outside)
        for action in (
            lambda: safepath.mkdirs_beneath(root, rel),
            lambda: safepath.write_beneath(root, rel + "/w", b"w"),
            lambda: safepath.rename_beneath(root, rel, "moved/" + rel),
            lambda: safepath.unlink_beneath(root, "moved/" + rel),
        ):
            try:
                action()
            except (UnsafePath, FileNotFoundError, IsADirectoryError, NotADirectoryError):
                pass
            except OSError as exc:
                # Renaming a folder into its own subtree, removing a folder with unlink.
                assert exc.errno in (errno.EINVAL, errno.EISDIR, errno.EPERM, errno.ENOTEMPTY)
        assert snapshot(outside) == before
        assert sorted(p.name for p in (Path(tmp)).iterdir()) == ["outside", "root"]
        assert sorted(p.name for p in (Path(tmp) / "root").iterdir()) == ["data"]


def test_refusals_name_the_component(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "ds").mkdir(parents=True)
    (root / "ds" / "file").write_text("x")
    os.symlink(tmp_path, root / "ds" / "train")
    with pytest.raises(PathEscapes) as info:
        safepath.open_beneath(root, "ds/train/later.bin", os.O_WRONLY | os.O_CREAT)
    assert info.value.code == "path.escapes_destination"
    assert info.value.details["component"] == "ds/train"
    assert "symbolic link" in str(info.value) and info.value.hint
    with pytest.raises(NotAFolder) as nf:
        safepath.mkdirs_beneath(root, "ds/file/sub")
    assert nf.value.code == "path.not_a_folder"
    assert nf.value.details["component"] == "ds/file"
    for bad in ("/etc/passwd", "ds/../../x", "a\x00b"):
        with pytest.raises(PathEscapes):
            safepath.open_beneath(root, bad)
    assert not (tmp_path / "later.bin").exists()


def test_write_beneath_replaces_a_planted_link(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    (root / "rejected").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, root / "rejected" / "m.toml.error.txt")
    safepath.write_beneath(root, "rejected/m.toml.error.txt", b"reason\n")
    assert victim.read_text() == "precious"
    reason = root / "rejected" / "m.toml.error.txt"
    assert not reason.is_symlink() and reason.read_text() == "reason\n"


def test_place_copy_through_a_swapped_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    (root / "ds").mkdir(parents=True)
    elsewhere.mkdir()
    source = tmp_path / "complete.bin"
    source.write_bytes(b"payload")
    safepath.place_copy(source, root, "ds/sub/f.bin")
    assert (root / "ds" / "sub" / "f.bin").read_bytes() == b"payload"
    shutil.rmtree(root / "ds")
    os.symlink(elsewhere, root / "ds")
    with pytest.raises(PathEscapes):
        safepath.place_copy(source, root, "ds/sub/f.bin")
    assert list(elsewhere.iterdir()) == []


def test_temporary_names_stay_within_name_max(tmp_path: Path) -> None:
    name = "é" * 127  # 254 bytes
    safepath.write_beneath(tmp_path, name, b"x")
    source = tmp_path / "src"
    source.write_bytes(b"y")
    safepath.place_copy(source, tmp_path, "sub/" + name)
    assert (tmp_path / name).read_bytes() == b"x"
    assert (tmp_path / "sub" / name).read_bytes() == b"y"


def test_enosys_falls_back_to_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel (or seccomp filter) without openat2: the probe says so once and every call
    takes the component walk, with the same refusals."""

    def enosys(*_args: object) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(safepath, "_openat2_state", None)
    monkeypatch.setattr(safepath, "_syscall_openat2", enosys)
    assert safepath.have_openat2() is False
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path, tmp_path / "d" / "up")
    fd = safepath.open_beneath(tmp_path, "d/f", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    with pytest.raises(PathEscapes):
        safepath.open_beneath(tmp_path, "d/up/f", os.O_WRONLY | os.O_CREAT)
    assert not (tmp_path / "f").exists()

"""The folder watcher with a real watchdog observer on a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

from support.deliveries import Deliveries

from acquired.daemon.inbox import FolderWatcher, is_candidate


def collect(folder: Path, recursive: bool = False) -> tuple[FolderWatcher, Deliveries]:
    seen = Deliveries(folder)
    watcher = FolderWatcher(folder, seen, recursive=recursive)
    return watcher, seen


def test_candidates() -> None:
    assert is_candidate(Path("a.toml"))
    assert is_candidate(Path("b.json"))
    for name in (
        ".hidden.toml",
        "a.toml~",
        ".a.toml.swp",
        "#a.toml#",
        "x.tmp",
        "a.toml.error.txt",
        "x.iso.!qB",
        "big.zip.part",
    ):
        assert not is_candidate(Path(name)), name


def test_existing_files_are_picked_up_at_start(tmp_path: Path) -> None:
    (tmp_path / "old.toml").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    watcher, seen = collect(tmp_path)
    watcher.start()
    try:
        assert seen.take(1) == ["old.toml"]
        assert seen.before_markers() == []  # neither .hidden nor old.toml again
    finally:
        watcher.stop()


def test_half_written_file_is_not_delivered_until_closed(tmp_path: Path) -> None:
    watcher, seen = collect(tmp_path)
    watcher.start()
    try:
        with (tmp_path / "slow.toml").open("w") as f:
            f.write("manifest_version = 1\n")
            f.flush()
            assert seen.before_markers() == []  # still open for writing: not complete
            f.write('name = "x"\n')
        assert seen.take(1) == ["slow.toml"]
        assert seen.before_markers() == []  # delivered once
    finally:
        watcher.stop()


def test_moved_in_files_are_delivered_and_temporaries_ignored(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    outside = tmp_path / "staging.toml"
    outside.write_text("x")
    watcher, seen = collect(inbox)
    watcher.start()
    try:
        os.replace(outside, inbox / "moved.toml")
        (inbox / ".editor.swp").write_text("x")
        (inbox / "rejected").mkdir()
        (inbox / "rejected" / "other.toml").write_text("x")  # not watched
        tmp = inbox / ".writing.tmp"
        tmp.write_text("x")
        os.replace(tmp, inbox / "renamed.toml")
        assert sorted(seen.take(2)) == ["moved.toml", "renamed.toml"]
        assert seen.before_markers() == []  # temporaries and rejected/ ignored
    finally:
        watcher.stop()


def test_recursive_watch_sees_completed_downloads_in_subfolders(tmp_path: Path) -> None:
    watcher, seen = collect(tmp_path, recursive=True)
    watcher.start()
    try:
        sub = tmp_path / "client" / "done"
        sub.mkdir(parents=True)
        partial = sub / "set.tar.part"
        partial.write_bytes(b"x" * 10)
        assert seen.before_markers() == []  # a partial download is not complete
        os.replace(partial, sub / "set.tar")
        assert seen.take(1) == ["set.tar"]
        assert seen.before_markers() == []  # delivered once
    finally:
        watcher.stop()

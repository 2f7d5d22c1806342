"""A data root that overlaps the inbox, the state or the runtime folder is refused at
start-up, naming both folders; the inbox's manifest size cap is configurable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from acquired.daemon.config import Config, ConfigError, FoldersOverlap


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "acquired.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("folders", "key"),
    [
        ({"data_root": "srv", "inbox": "srv/inbox"}, "inbox"),
        ({"data_root": "srv", "state_dir": "srv/.state"}, "state_dir"),
        ({"data_root": "srv/run/data", "runtime_dir": "srv/run"}, "runtime_dir"),
        ({"data_root": "same", "inbox": "same"}, "inbox"),
    ],
)
def test_overlapping_folders_are_refused(tmp_path: Path, folders: dict[str, str], key: str) -> None:
    text = "\n".join(f'{k} = "{v}"' for k, v in folders.items())
    with pytest.raises(FoldersOverlap) as info:
        Config.load(write(tmp_path, text))
    message = str(info.value)
    assert info.value.code == "config.folders_overlap"
    assert str(tmp_path / folders["data_root"]) in message
    assert str(tmp_path / folders[key]) in message and key in message
    assert "data_root" in message and info.value.hint


def test_overlap_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real" / "inbox").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "alias")
    with pytest.raises(FoldersOverlap):
        Config.load(write(tmp_path, 'data_root = "real"\ninbox = "alias/inbox"'))


def test_siblings_and_defaults_are_accepted(tmp_path: Path) -> None:
    Config.load(None, base_dir=tmp_path)
    text = 'data_root = "srv/data"\ninbox = "srv/inbox"\nstate_dir = "srv/data-state"'
    config = Config.load(write(tmp_path, text))
    assert config.data_root == tmp_path / "srv" / "data"


def test_the_daemon_refuses_to_start_and_names_both_folders(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_root = "srv"\ninbox = "srv/inbox"\nstate_dir = "st"\n')
    acquired = Path(sys.executable).parent / "acquired"
    proc = subprocess.run(
        [str(acquired), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{tmp_path / 'srv'} contains inbox {tmp_path / 'srv' / 'inbox'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "st").exists()


def test_inbox_table_sets_path_and_manifest_cap(tmp_path: Path) -> None:
    text = '[inbox]\npath = "in"\nmax_manifest_size = "2MiB"\n'
    config = Config.load(write(tmp_path, text))
    assert config.inbox == tmp_path / "in"
    assert config.inbox_max_manifest_size == 2 * 1024**2
    assert Config.load(None, base_dir=tmp_path).inbox_max_manifest_size == 64 * 1024**2
    with pytest.raises(ConfigError, match=r"inbox\.bogus"):
        Config.load(write(tmp_path, "[inbox]\nbogus = 1\n"))

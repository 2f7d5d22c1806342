"""``[urllist] workers``: worker processes per running URL-list job."""

from __future__ import annotations

from pathlib import Path

import pytest

from acquired.daemon.config import Config, ConfigError


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "acquired.toml"
    path.write_text(text)
    return Config.load(path)


def test_default_is_one_per_core_and_a_number_is_taken(tmp_path: Path) -> None:
    assert load(tmp_path, "").urllist.workers == 0
    assert load(tmp_path, "[urllist]\nworkers = 6\n").urllist.workers == 6


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "must be between 0 and 1024"),
        ("5000", "must be between 0 and 1024"),
        ('"many"', "must be a whole number"),
        ("2.5", "must be a whole number"),
    ],
)
def test_bad_worker_counts_name_the_key(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"[urllist]\nworkers = {value}\n")
    assert [k for k, _ in info.value.errors] == ["urllist.workers"]
    assert "urllist.workers" in str(info.value) and message in str(info.value)
    assert info.value.hint


def test_unknown_key_in_the_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "[urllist]\nworker = 2\n")
    assert "did you mean 'workers'?" in str(info.value)

"""Shared pytest configuration. Reusable helpers live in tests/support/ (import as support.*)."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# A move the file lifecycle does not allow raises in tests (in this process and in every
# daemon the tests start), instead of failing only the file as in production.
os.environ["ACQUIRED_STRICT_LIFECYCLE"] = "1"

# CI draws the same examples on every run, so a red build always reproduces; developers'
# runs keep exploring new ones (and print the blob to reproduce what they find).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB tmpfs (root only): a disk that really fills up, for the disk guard's tests."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)

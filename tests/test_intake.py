"""The intake's pieces that run off the state thread, called directly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acquired.daemon.intake import check_paths, digest_in_pieces
from acquired.daemon.manifest import ManifestError, manifest_digest, parse_manifest

TEXT = """
manifest_version = 1
name = "demo"
destination = "demo"
connections = 3

[[files]]
path = "a/b.bin"
sha256 = "{h}"
sources.mirrors = ["https://example.org/b.bin"]
unpack = [{{ format = "tar", into = "x" }}]

[[files]]
path = "c.bin"
size = 5
md5 = "{m}"
sources.mirrors = ["https://example.org/c.bin", "https://mirror.example.org/c.bin"]

[[checksums]]
file = "a/SUMS"
"""


def test_digest_in_pieces_is_manifest_digest() -> None:
    manifest = parse_manifest(TEXT.format(h="ab" * 32, m="cd" * 16), "demo.toml")
    assert digest_in_pieces(manifest) == manifest_digest(manifest)
    other = parse_manifest(TEXT.format(h="ab" * 32, m="ce" * 16), "demo.toml")
    assert digest_in_pieces(other) != digest_in_pieces(manifest)


def test_check_paths_refuses_a_folder_link_that_leaves_the_root(tmp_path: Path) -> None:
    manifest = parse_manifest(TEXT.format(h="ab" * 32, m="cd" * 16), "demo.toml")
    dest = tmp_path / "root/demo"
    dest.mkdir(parents=True)
    check_paths(manifest, dest, "demo.toml")
    os.symlink(tmp_path, dest / "a")
    with pytest.raises(ManifestError, match=r"files\[0\]\.path"):
        check_paths(manifest, dest, "demo.toml")


def test_check_paths_refuses_a_file_link_that_leaves_the_root(tmp_path: Path) -> None:
    manifest = parse_manifest(TEXT.format(h="ab" * 32, m="cd" * 16), "demo.toml")
    dest = tmp_path / "root/demo"
    dest.mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", dest / "c.bin")
    with pytest.raises(ManifestError, match=r"files\[1\]\.path"):
        check_paths(manifest, dest, "demo.toml")

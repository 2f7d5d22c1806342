"""Every file in examples/ is valid: manifests as manifests, acquired.toml as configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from acquired.daemon.config import Config
from acquired.daemon.manifest import load_manifest, manifest_digest, resolve_under

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = {"acquired.toml"}
MANIFESTS = sorted(
    p for p in EXAMPLES.iterdir() if p.suffix in (".toml", ".json") and p.name not in CONFIGS
)


def test_the_examples_are_there() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"cifar10.toml", "mnist.toml", "lsun-church-outdoor.toml", "imagenet-val.toml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_example_manifest_validates_and_stays_under_the_data_root(
    path: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(path)
    assert manifest.name == path.stem
    dest = resolve_under(tmp_path, manifest.destination, "destination", path.name)
    for i, f in enumerate(manifest.files):
        resolve_under(dest, f.path, f"files[{i}].path", path.name)
        for j, step in enumerate(f.unpack):
            resolve_under(dest, step.into, f"files[{i}].unpack[{j}].into", path.name)
    assert len(manifest_digest(manifest)) == 64
    # Only files without a published checksum may carry warnings, and they must say so.
    for warning in manifest.warnings():
        assert "no checksum" in warning


def test_example_names_are_distinct_jobs() -> None:
    names = [load_manifest(p).name for p in MANIFESTS]
    assert len(names) == len(set(names))


def test_published_checksums_are_the_ones_in_the_examples() -> None:
    cifar = load_manifest(EXAMPLES / "cifar10.toml").files[0]
    assert (cifar.size, cifar.md5) == (170498071, "c58f30108f718f92721af3b95e74349a")
    mnist = {f.path.rsplit("/", 1)[-1]: f for f in load_manifest(EXAMPLES / "mnist.toml").files}
    assert {name: f.md5 for name, f in mnist.items()} == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    assert all(len(f.sources.mirrors) == 2 for f in mnist.values())
    laion = load_manifest(EXAMPLES / "laion-sample-10k.toml")
    assert laion.kind == "urllist" and laion.urllist is not None
    assert laion.urllist.input == laion.files[0].path == "test_10000.parquet"
    assert (laion.urllist.url_column, laion.urllist.caption_column) == ("URL", "TEXT")
    assert (laion.files[0].size, laion.files[0].sha256) == (
        1309243,
        "cfa6bcb629614e66d4c286f0c9511a79482b9f5d5c42025b3622225660dea897",
    )
    val = load_manifest(EXAMPLES / "imagenet-val.toml").files[0]
    assert val.sources.torrent is not None
    assert val.sources.torrent.kind == "academic_torrents"
    assert val.sources.torrent.value == "5d6d0df7ed81efd49ca99ea4737e0ae5e3a5f2e5"
    assert val.md5 == "29b22e2961454d5413ddabcf34fc5622"
    lsun = load_manifest(EXAMPLES / "lsun-church-outdoor.toml")
    assert not any(f.has_digest for f in lsun.files)  # LSUN publishes none


def test_example_config_validates(tmp_path: Path) -> None:
    config = Config.load(EXAMPLES / "acquired.toml", base_dir=tmp_path)
    assert config.data_root == tmp_path / "var/data"

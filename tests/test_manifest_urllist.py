"""URL-list manifests (kind = "urllist") and the [cluster] configuration section."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acquired.daemon.cluster_config import ClusterSettings
from acquired.daemon.config import Config, ConfigError
from acquired.daemon.manifest import ManifestError, manifest_digest, parse_manifest
from acquired.daemon.manifest_urllist import input_format

# The manifest of the URL-list issue, as written there (with a real-looking digest).
EXAMPLE = """
manifest_version = 1
kind = "urllist"
name = "laion-part0"
destination = "laion/part0"

[[files]]  # optional: the URL list itself, fetched and verified first like any file
path = "part-00000.parquet"
sha256 = "5f2ac1f2a8a7f3b4e9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2"
sources.mirrors = ["https://example.org/laion/part-00000.parquet"]

[urllist]
input = "part-00000.parquet"
url_column = "URL"
caption_column = "TEXT"
keep_columns = ["WIDTH", "HEIGHT"]
shard_size = 10000
output = "webdataset"
timeout = 10
retries = 2
per_host_connections = 16
max_bytes = "20M"

[urllist.filters]
min_side = 100
max_aspect = 3.0
max_pixels = 89478485
mime = ["image/jpeg", "image/png", "image/webp"]

[urllist.resize]
mode = "keep_ratio"
size = 256
format = "jpg"
quality = 95

[urllist.dedupe]
exact = true
perceptual = { hash = "phash", max_distance = 4 }
action = "drop"
"""


def test_the_issue_example_validates() -> None:
    m = parse_manifest(EXAMPLE, "laion.toml")
    assert m.kind == "urllist"
    u = m.urllist
    assert u is not None
    assert (u.input, u.input_format, u.url_column, u.caption_column) == (
        "part-00000.parquet",
        "parquet",
        "URL",
        "TEXT",
    )
    assert u.keep_columns == ["WIDTH", "HEIGHT"] and u.shard_size == 10_000
    assert u.max_bytes == 20_000_000 and u.timeout == 10.0 and u.retries == 2
    assert u.filters.min_side == 100 and u.filters.max_aspect == 3.0
    assert u.resize is not None and (u.resize.mode, u.resize.size) == ("keep_ratio", 256)
    assert u.dedupe is not None and u.dedupe.perceptual is not None
    assert u.dedupe.perceptual.max_distance == 4 and u.dedupe.action == "drop"
    assert ("urllist.input", "part-00000.parquet") in m.relative_paths()
    # The same job written as JSON has the same digest; kind and [urllist] are part of it.
    again = parse_manifest(m.model_dump_json(), "laion.json")
    assert manifest_digest(again) == manifest_digest(m)
    other = EXAMPLE.replace("shard_size = 10000", "shard_size = 5000")
    assert manifest_digest(parse_manifest(other, "x.toml")) != manifest_digest(m)


def test_minimal_urllist_without_files_and_its_defaults() -> None:
    m = parse_manifest(
        'manifest_version = 1\nkind = "urllist"\nname = "cc3m"\ndestination = "cc3m"\n'
        '[urllist]\ninput = "urls.txt.zst"\n',
        "cc3m.toml",
    )
    assert m.files == [] and m.urllist is not None
    assert m.urllist.input_format == "txt" and m.urllist.output == "webdataset"
    assert m.urllist.filters.max_pixels == 89_478_485 and m.urllist.resize is None
    assert m.urllist.dedupe is None and m.urllist.max_bytes_on_disk is None


def test_a_files_manifest_dumps_as_before_kinds_existed() -> None:
    text = (
        'manifest_version = 1\nname = "a"\ndestination = "a"\n[[files]]\npath = "x.bin"\n'
        'sources.mirrors = ["https://example.org/x.bin"]\n'
    )
    m = parse_manifest(text, "a.toml")
    assert m.kind == "files"
    dumped = m.model_dump(mode="json")
    assert "kind" not in dumped and "urllist" not in dumped  # so its digest is unchanged
    explicit = parse_manifest('kind = "files"\n' + text, "a.toml")
    assert manifest_digest(explicit) == manifest_digest(m)


def _base() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE)


Mutation = Callable[[dict[str, Any]], None]


def setf(*path: str | int, value: object) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def delf(*path: str | int) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)

    return mutate


U = "urllist"
BROKEN: list[tuple[str, Mutation, str, str]] = [
    ("kind", setf("kind", value="images"), "kind", "must be one of 'files' or 'urllist'"),
    ("no-urllist", delf(U), "urllist", 'is required for kind = "urllist"'),
    ("urllist-on-files-job", both(delf("kind")), "urllist", 'add kind = "urllist"'),
    ("files-job-no-files", both(delf("kind"), delf(U), setf("files", value=[])),
     "files", "is required"),
    ("no-input", delf(U, "input"), "urllist.input", "is required"),
    ("input-abs", setf(U, "input", value="/etc/urls.txt"), "urllist.input", "is absolute"),
    ("input-dotdot", setf(U, "input", value="../x.txt"), "urllist.input", "contains '..'"),
    ("input-format", setf(U, "input", value="urls.xlsx"), "urllist.input",
     "cannot tell the input format"),
    ("parquet-gz", setf(U, "input", value="a.parquet.gz"), "urllist.input",
     "compressed inside already"),
    ("shard-size-0", setf(U, "shard_size", value=0), "urllist.shard_size", "between 1 and"),
    ("shard-size-str", setf(U, "shard_size", value="10k"), "urllist.shard_size",
     "must be a whole number"),
    ("output", setf(U, "output", value="tfrecord"), "urllist.output",
     "must be one of 'webdataset' or 'files'"),
    ("timeout", setf(U, "timeout", value=0), "urllist.timeout", "more than 0"),
    ("retries", setf(U, "retries", value=-1), "urllist.retries", "between 0 and 20"),
    ("per-host", setf(U, "per_host_connections", value=0), "urllist.per_host_connections",
     "between 1 and 1024"),
    ("max-bytes-bits", setf(U, "max_bytes", value="20Mb"), "urllist.max_bytes", "would mean bits"),
    ("max-bytes-word", setf(U, "max_bytes", value="big"), "urllist.max_bytes", "with a unit"),
    ("unknown-key", setf(U, "shardsize", value=5), "urllist.shardsize",
     "did you mean 'shard_size'?"),
    ("empty-column", setf(U, "url_column", value=""), "urllist.url_column", "must not be empty"),
    ("caption-is-url", setf(U, "caption_column", value="URL"), "urllist.caption_column",
     "also the url_column"),
    ("keep-dup", setf(U, "keep_columns", value=["W", "W"]), "urllist.keep_columns",
     "listed twice"),
    ("keep-url", setf(U, "keep_columns", value=["WIDTH", "URL"]), "urllist.keep_columns[1]",
     "is the url_column"),
    ("txt-columns", both(setf(U, "input", value="u.txt"), delf("files")),
     "urllist.caption_column", "no columns"),
    ("min-side", setf(U, "filters", "min_side", value=-5), "urllist.filters.min_side",
     "between 0 and"),
    ("aspect", setf(U, "filters", "max_aspect", value=0.5), "urllist.filters.max_aspect",
     "at least 1.0"),
    ("mime", setf(U, "filters", "mime", value=["image/jpeg", "text/html"]),
     "urllist.filters.mime[1]", "is not an image type"),
    ("mime-empty", setf(U, "filters", "mime", value=[]), "urllist.filters.mime", "at least 1"),
    ("filter-key", setf(U, "filters", "min_size", value=5), "urllist.filters.min_size",
     "did you mean 'min_side'?"),
    ("resize-mode", setf(U, "resize", "mode", value="stretch"), "urllist.resize.mode",
     "must be one of 'keep_ratio', 'center_crop' or 'border'"),
    ("resize-size", delf(U, "resize", "size"), "urllist.resize.size", "is required"),
    ("resize-quality", setf(U, "resize", "quality", value=101), "urllist.resize.quality",
     "between 1 and 100"),
    ("resize-format", setf(U, "resize", "format", value="gif"), "urllist.resize.format",
     "must be one of"),
    ("phash-distance", setf(U, "dedupe", "perceptual", "max_distance", value=65),
     "urllist.dedupe.perceptual.max_distance", "between 0 and 32"),
    ("phash-kind", setf(U, "dedupe", "perceptual", "hash", value="sha1"),
     "urllist.dedupe.perceptual.hash", "must be one of"),
    ("dedupe-action", setf(U, "dedupe", "action", value="delete"), "urllist.dedupe.action",
     "must be one of 'drop' or 'mark'"),
    ("dedupe-exact", setf(U, "dedupe", "exact", value="yes"), "urllist.dedupe.exact",
     "must be true or false"),
    ("quota", setf(U, "max_bytes_on_disk", value=0), "urllist.max_bytes_on_disk",
     "at least 1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [pytest.param(m, f, msg, id=i) for i, m, f, msg in BROKEN],
)
def test_broken_urllist_manifest(mutate: Mutation, field: str, message: str) -> None:
    data = _base()
    mutate(data)
    with pytest.raises(ManifestError) as info:
        parse_manifest(_to_json(data), "inbox/laion.json")
    errors = dict(info.value.errors)
    assert field in errors, info.value.errors
    assert message in errors[field], errors[field]
    assert f"inbox/laion.json: {field}: {errors[field]}" in str(info.value).splitlines()


def _to_json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(copy.deepcopy(data))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.txt", ("txt", None)),
        ("dir/a.CSV.gz", ("csv", "gz")),
        ("a.tsv.zst", ("tsv", "zst")),
        ("a.jsonl", ("jsonl", None)),
        ("part-00000.parquet", ("parquet", None)),
    ],
)
def test_input_formats(name: str, expected: tuple[str, str | None]) -> None:
    assert input_format(name) == expected


@pytest.mark.parametrize("name", ["a", "a.json", "a.gz", "txt", "a.parquet.zst", "dir.txt/a"])
def test_input_formats_refused(name: str) -> None:
    with pytest.raises(ValueError):
        input_format(name)


# --- [cluster] ---------------------------------------------------------------------------


def test_cluster_section_loads_with_password_file_relative_to_the_config(
    tmp_path: Path,
) -> None:
    path = tmp_path / "etc" / "acquired.toml"
    path.parent.mkdir()
    path.write_text(
        '[cluster]\nredis_url = "rediss://redis.lan:6380/2"\nnode = "gpu-07"\n'
        'password_file = "redis.pass"\nlease = 30\n'
    )
    config = Config.load(path)
    assert config.cluster is not None
    assert config.cluster.redis_url == "rediss://redis.lan:6380/2"
    assert config.cluster.node_name == "gpu-07"
    assert config.cluster.password_file == path.parent / "redis.pass"
    assert config.cluster.lease == 30.0 and config.cluster.max_deliveries == 5
    assert Config.load(None, base_dir=tmp_path).cluster is None  # absent: one node, SQLite


def test_cluster_node_defaults_to_the_host_name() -> None:
    import socket

    assert ClusterSettings(redis_url="redis://h:6379/0").node_name == socket.gethostname()


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ({}, "cluster.redis_url", "is required"),
        ({"redis_url": "http://h:6379/0"}, "cluster.redis_url", "scheme 'http' is not supported"),
        ({"redis_url": "redis://:6379/0"}, "cluster.redis_url", "has no host"),
        ({"redis_url": "redis://h:port/0"}, "cluster.redis_url", "invalid port"),
        ({"redis_url": "redis://h:6379/x"}, "cluster.redis_url", "must be a number"),
        ({"redis_url": "unix://relative.sock"}, "cluster.redis_url", "absolute socket path"),
        ({"redis_url": "redis://h", "lease": 0}, "cluster.lease", "must be more than 0"),
        ({"redis_url": "redis://h", "lease": "5m"}, "cluster.lease", "must be a number"),
        ({"redis_url": "redis://h", "node": "a b"}, "cluster.node", "a node name is"),
        ({"redis_url": "redis://h", "leas": 5}, "cluster.leas", "did you mean 'lease'?"),
        ({"redis_url": "redis://h", "max_deliveries": 0}, "cluster.max_deliveries", "between"),
    ],
)
def test_cluster_section_errors(section: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({"cluster": section}, "acquired.toml")
    text = str(info.value)
    assert f"{key}:" in text and message in text, text

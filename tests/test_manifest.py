"""Manifest v1: valid shapes, a table of broken manifests, digests, schema, resolve_under."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acquired.daemon.errors import describe
from acquired.daemon.manifest import (
    DIGEST_LENGTHS,
    FileSpec,
    Manifest,
    ManifestError,
    ManifestUnreadable,
    TorrentSpec,
    archive_format,
    check_relative_path,
    load_manifest,
    manifest_digest,
    manifest_schema,
    parse_manifest,
    redact_url,
    resolve_under,
)

CIFAR_TOML = """\
manifest_version = 1
name = "cifar10"
destination = "cifar10"            # under the data root

[[files]]
path = "cifar-10-python.tar.gz"
size = 170498071
md5 = "c58f30108f718f92721af3b95e74349a"
sources.mirrors = ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
unpack = [{ format = "tar.gz", into = "." }]
"""

INFOHASH = "5d6d0df7ed81efd49ca99ea4737e0ae5e3a5f2e5"
SHA256 = "ab" * 32


def base() -> dict[str, Any]:
    """A valid manifest with three files, as parsed data."""
    return {
        "manifest_version": 1,
        "name": "demo",
        "destination": "datasets/demo",
        "files": [
            {
                "path": "a.tar.gz",
                "size": 10,
                "sha256": SHA256,
                "sources": {"mirrors": ["https://example.org/a.tar.gz"]},
            },
            {
                "path": "b/b.zip",
                "md5": "0" * 32,
                "sources": {"torrent": {"academic_torrents": INFOHASH}},
                "unpack": [{}],
            },
            {
                "path": "c.bin",
                "sha1": "1" * 40,
                "sources": {
                    "mirrors": ["http://mirror-1.example/c.bin", "http://mirror-2.example/c.bin"]
                },
            },
        ],
    }


def parse(data: dict[str, Any], source: str = "bad.json") -> Manifest:
    return parse_manifest(json.dumps(data), source)


def test_cifar_sketch_parses() -> None:
    m = parse_manifest(CIFAR_TOML, "cifar10.toml")
    assert m.name == "cifar10"
    assert m.destination == "cifar10"
    f = m.files[0]
    assert f.size == 170498071
    assert f.digests == {"md5": "c58f30108f718f92721af3b95e74349a"}
    assert f.has_digest
    assert f.sources.mirrors == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert f.sources.torrent is None
    assert f.unpack[0].format == "tar.gz" and f.unpack[0].into == "."
    assert m.warnings() == []


def test_base_is_valid_and_values_are_normalised() -> None:
    data = base()
    data["files"][0]["sha256"] = SHA256.upper()
    data["files"][0]["path"] = "./a.tar.gz"
    data["destination"] = "datasets//demo/"
    data["files"][1]["sources"]["torrent"]["academic_torrents"] = INFOHASH.upper()
    m = parse(data, "ok.json")
    assert m.files[0].sha256 == SHA256
    assert m.files[0].path == "a.tar.gz"
    assert m.destination == "datasets/demo"
    torrent = m.files[1].sources.torrent
    assert torrent is not None
    assert torrent.kind == "academic_torrents" and torrent.value == INFOHASH
    assert m.files[1].unpack[0].format == "auto"
    assert m.files[2].digests == {"sha1": "1" * 40}


@pytest.mark.parametrize(
    ("spec", "kind", "value"),
    [
        ({"academic_torrents": INFOHASH}, "academic_torrents", INFOHASH),
        ({"academic_torrents": "c" * 64}, "academic_torrents", "c" * 64),
        (
            {"academic_torrents": f"https://academictorrents.com/details/{INFOHASH}"},
            "academic_torrents",
            INFOHASH,
        ),
        ({"magnet": f"magnet:?xt=urn:btih:{INFOHASH}&dn=x"}, "magnet", None),
        ({"magnet": "magnet:?xt=urn:btih:MFRGGZDFMZTWQ2LKNNWG23TPOBYXE4TT"}, "magnet", None),
        ({"magnet": "magnet:?xt=urn:btmh:1220" + "a" * 64}, "magnet", None),
        ({"url": "https://example.org/x.torrent"}, "url", None),
        ({"path": "/srv/torrents//x.torrent"}, "path", "/srv/torrents/x.torrent"),
    ],
)
def test_torrent_kinds(spec: dict[str, str], kind: str, value: str | None) -> None:
    t = TorrentSpec.model_validate(spec)
    assert t.kind == kind
    assert t.value == (value if value is not None else next(iter(spec.values())))


def test_torrent_file_and_peers() -> None:
    t = TorrentSpec.model_validate(
        {"academic_torrents": INFOHASH, "file": "./ILSVRC/val.tar", "peers": ["[::1]:6881"]}
    )
    assert t.file == "ILSVRC/val.tar"
    assert t.peers == ["[::1]:6881"]


# --- the table of broken manifests --------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def setf(*path: Any, value: Any) -> Mutation:
    def apply(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return apply


def delf(*path: Any) -> Mutation:
    def apply(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return apply


F0 = ("files", 0)
BROKEN: list[tuple[str, Mutation, str, str]] = [
    # id, mutation, field path, message fragment
    ("ftp-mirror", setf(*F0, "sources", "mirrors", value=["ftp://x/a"]),
     "files[0].sources.mirrors[0]", "scheme 'ftp' is not supported — use an http(s) URL"),
    ("file-url", setf(*F0, "sources", "mirrors", value=["https://ok/a", "file:///etc/passwd"]),
     "files[0].sources.mirrors[1]", "scheme 'file' is not supported"),
    ("magnet-as-mirror", setf(*F0, "sources", "mirrors", value=[f"magnet:?xt=urn:btih:{INFOHASH}"]),
     "files[0].sources.mirrors[0]", "sources.torrent"),
    ("no-host", setf(*F0, "sources", "mirrors", value=["https:///a"]),
     "files[0].sources.mirrors[0]", "is not a full URL"),
    ("no-scheme", setf(*F0, "sources", "mirrors", value=["example.org/a.tar"]),
     "files[0].sources.mirrors[0]", "is not a full URL"),
    ("host-port-no-scheme", setf(*F0, "sources", "mirrors", value=["localhost:8080/a.tar"]),
     "files[0].sources.mirrors[0]", "is not a full URL"),
    ("bad-port", setf(*F0, "sources", "mirrors", value=["https://h:99999/a"]),
     "files[0].sources.mirrors[0]", "invalid port"),
    ("space-url", setf(*F0, "sources", "mirrors", value=["https://h/a b"]),
     "files[0].sources.mirrors[0]", "percent-encode"),
    ("dup-mirror", setf(*F0, "sources", "mirrors", value=["https://h/a", "https://h/a"]),
     "files[0].sources.mirrors", "listed twice (mirrors[0] and mirrors[1])"),
    ("no-source", setf(*F0, "sources", value={}), "files[0].sources", "no source"),
    ("no-source-empty-list", setf(*F0, "sources", value={"mirrors": []}),
     "files[0].sources", "no source"),
    ("sha256-short", setf(*F0, "sha256", value="abc"),
     "files[0].sha256", "has 3 characters — a sha256 digest has exactly 64"),
    ("sha256-nonhex", setf(*F0, "sha256", value="z" * 64),
     "files[0].sha256", "not hexadecimal"),
    ("md5-long", setf("files", 1, "md5", value="0" * 33), "files[1].md5", "exactly 32"),
    ("sha1-wrong", setf("files", 2, "sha1", value="1" * 64), "files[2].sha1", "exactly 40"),
    ("blake2b-short", setf(*F0, "blake2b", value="a" * 64), "files[0].blake2b", "exactly 128"),
    ("digest-number", setf(*F0, "md5", value=12), "files[0].md5", "string of 32 hex digits"),
    ("sha265", setf(*F0, "sha265", value=SHA256),
     "files[0].sha265", "unknown key 'sha265' (did you mean 'sha256'?)"),
    ("mirror-key", setf(*F0, "sources", "mirror", value=["https://h/a"]),
     "files[0].sources.mirror", "did you mean 'mirrors'?"),
    ("top-key", setf("destinaton", value="x"), "destinaton", "did you mean 'destination'?"),
    ("negative-size", setf(*F0, "size", value=-1), "files[0].size", "must be at least 0"),
    ("size-text", setf(*F0, "size", value="big"), "files[0].size", "must be a whole number"),
    ("size-string-number", setf(*F0, "size", value="10"), "files[0].size", "whole number"),
    ("size-bool", setf(*F0, "size", value=True), "files[0].size", "must be a whole number"),
    ("size-float", setf(*F0, "size", value=1.5), "files[0].size", "must be a whole number"),
    ("torrent-as-string", setf("files", 1, "sources", "torrent", value="magnet:?xt=urn:btih:x"),
     "files[1].sources.torrent", 'write torrent = { magnet = "..." }'),
    ("torrent-infohash-string", setf("files", 1, "sources", "torrent", value=INFOHASH),
     "files[1].sources.torrent", 'torrent = { academic_torrents = "..." }'),
    ("abs-path", setf(*F0, "path", value="/etc/passwd"), "files[0].path", "is absolute"),
    ("dotdot-path", setf(*F0, "path", value="a/../../etc/passwd"),
     "files[0].path", "contains '..'"),
    ("backslash", setf(*F0, "path", value="a\\..\\b"), "files[0].path", "backslash"),
    ("drive", setf(*F0, "path", value="C:/x"), "files[0].path", "drive letter"),
    ("nul", setf(*F0, "path", value="a\x00b"), "files[0].path", "control character"),
    ("newline", setf(*F0, "path", value="a\nb"), "files[0].path", "control character"),
    ("empty-path", setf(*F0, "path", value=""), "files[0].path", "must not be empty"),
    ("dot-path", setf(*F0, "path", value="./."), "files[0].path", "names no file"),
    ("dir-path", setf(*F0, "path", value="a/"), "files[0].path", "ends with '/'"),
    ("space-path", setf(*F0, "path", value=" a"), "files[0].path", "space"),
    ("long-name", setf(*F0, "path", value="x" * 256), "files[0].path", "longer than 255 bytes"),
    ("dup-path", setf("files", 2, "path", value="./a.tar.gz"),
     "files[2].path", "'a.tar.gz' is also files[0].path"),
    ("file-and-folder", setf("files", 2, "path", value="a.tar.gz/inner"),
     "files[2].path", "both a file and a folder"),
    ("part-clash", setf("files", 2, "path", value="a.tar.gz.part"),
     "files[2].path", "downloaded to before it is verified"),
    ("abs-destination", setf("destination", value="/srv/data"), "destination", "is absolute"),
    ("dotdot-destination", setf("destination", value="../elsewhere"), "destination", "'..'"),
    ("root-destination", setf("destination", value="."), "destination", "data root itself"),
    ("missing-destination", delf("destination"), "destination", "is required — add it"),
    ("missing-files", delf("files"), "files", "is required"),
    ("no-files", setf("files", value=[]), "files", "at least 1 item"),
    ("missing-path", delf(*F0, "path"), "files[0].path", "is required"),
    ("missing-sources", delf(*F0, "sources"), "files[0].sources", "is required"),
    ("version-2", setf("manifest_version", value=2), "manifest_version", "manifest_version = 1"),
    ("version-str", setf("manifest_version", value="1"),
     "manifest_version", "reads manifest_version 1"),
    ("missing-version", delf("manifest_version"), "manifest_version", "manifest_version = 1"),
    ("bad-name", setf("name", value="my data"), "name", "it is the job id"),
    ("dot-name", setf("name", value=".hidden"), "name", "starting with a letter or digit"),
    ("long-name-id", setf("name", value="a" * 129), "name", "1 to 128"),
    ("connections-0", setf("connections", value=0), "connections", "0 — must be between 1 and 64"),
    ("file-connections", setf(*F0, "connections", value=65),
     "files[0].connections", "between 1 and 64"),
    ("bandwidth", setf("bandwidth_limit", value="10Mb"), "bandwidth_limit", "write 'B' for bytes"),
    ("two-torrents", setf("files", 1, "sources", "torrent",
                          value={"academic_torrents": INFOHASH, "url": "https://h/x.torrent"}),
     "files[1].sources.torrent", "exactly one of academic_torrents, magnet, url or path (found"),
    ("no-torrent-kind", setf("files", 1, "sources", "torrent", value={"peers": []}),
     "files[1].sources.torrent", "exactly one of"),
    ("infohash-short", setf("files", 1, "sources", "torrent", value={"academic_torrents": "abc"}),
     "files[1].sources.torrent.academic_torrents", "is not an infohash"),
    ("at-page-url", setf("files", 1, "sources", "torrent",
                         value={"academic_torrents": "https://academictorrents.com/browse"}),
     "files[1].sources.torrent.academic_torrents", "details/<infohash>"),
    ("magnet-no-hash", setf("files", 1, "sources", "torrent", value={"magnet": "magnet:?dn=x"}),
     "files[1].sources.torrent.magnet", "has no BitTorrent infohash"),
    ("magnet-http", setf("files", 1, "sources", "torrent", value={"magnet": "http://x/y"}),
     "files[1].sources.torrent.magnet", "is not a magnet link"),
    ("torrent-url-ftp", setf("files", 1, "sources", "torrent", value={"url": "ftp://x/y.torrent"}),
     "files[1].sources.torrent.url", "scheme 'ftp' is not supported"),
    ("torrent-rel-path", setf("files", 1, "sources", "torrent", value={"path": "x.torrent"}),
     "files[1].sources.torrent.path", "give an absolute path"),
    ("torrent-file-abs", setf("files", 1, "sources", "torrent",
                              value={"academic_torrents": INFOHASH, "file": "/x"}),
     "files[1].sources.torrent.file", "is absolute"),
    ("peer", setf("files", 1, "sources", "torrent",
                  value={"academic_torrents": INFOHASH, "peers": ["1.2.3.4"]}),
     "files[1].sources.torrent.peers[0]", "has no port"),
    ("unpack-format", setf("files", 1, "unpack", value=[{"format": "rar"}]),
     "files[1].unpack[0].format", "must be one of 'auto', 'tar'"),
    ("unpack-into", setf("files", 1, "unpack", value=[{"into": "../../x"}]),
     "files[1].unpack[0].into", "contains '..'"),
    ("unpack-into-abs", setf("files", 1, "unpack", value=[{}, {"into": "/tmp"}]),
     "files[1].unpack[1].into", "is absolute"),
    ("unpack-auto-unknown", setf("files", 2, "unpack", value=[{}]),
     "files[2].unpack[0].format", "cannot tell the archive format of 'c.bin'"),
    ("unpack-key", setf("files", 1, "unpack", value=[{"target": "x"}]),
     "files[1].unpack[0].target", "unknown key 'target'"),
    ("unpack-nested", setf("files", 1, "unpack", value=[{"nested": "sometimes"}]),
     "files[1].unpack[0].nested", "must be true or false"),
    ("unpack-nested-int", setf("files", 1, "unpack", value=[{"nested": 1}]),
     "files[1].unpack[0].nested", "must be true or false"),
    ("unpack-not-list", setf("files", 1, "unpack", value={"format": "zip"}),
     "files[1].unpack", "must be a list"),
    ("pip-empty", setf("pip", value={"requirements": []}), "pip.requirements", "at least 1"),
    ("pip-option", setf("pip", value={"requirements": ["--index-url=http://evil/"]}),
     "pip.requirements[0]", "is a pip option"),
    ("pip-target", setf("pip", value={"requirements": ["numpy"], "target": "../w"}),
     "pip.target", "contains '..'"),
    ("pip-index", setf("pip", value={"requirements": ["numpy"], "index_urls": ["file:///x"]}),
     "pip.index_urls[0]", "scheme 'file' is not supported"),
    ("files-not-list", setf("files", value={"path": "x"}), "files", "must be a list"),
    ("sources-not-table", setf(*F0, "sources", value=["https://h/a"]),
     "files[0].sources", "must be a table"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [pytest.param(m, f, msg, id=i) for i, m, f, msg in BROKEN],
)
def test_broken_manifest(mutate: Mutation, field: str, message: str) -> None:
    data = base()
    parse(copy.deepcopy(data), "ok.json")  # the base itself is valid
    mutate(data)
    with pytest.raises(ManifestError) as info:
        parse(data, "inbox/bad.json")
    exc = info.value
    assert exc.code == "manifest.invalid"
    assert exc.source == "inbox/bad.json"
    fields = [f for f, _ in exc.errors]
    assert field in fields, exc.errors
    text = dict(exc.errors)[field]
    assert message in text, text
    assert f"inbox/bad.json: {field}: {text}" in str(exc).splitlines()
    assert "drop the manifest" in exc.hint
    info_dict = describe(exc).as_dict()
    assert {"field": field, "message": text} in info_dict["details"]["errors"]


def test_several_errors_are_reported_together() -> None:
    data = base()
    data["files"][0]["sha256"] = "x"
    data["files"][2]["sources"]["mirrors"][1] = "ftp://h/c"
    data["name"] = "bad name"
    with pytest.raises(ManifestError) as info:
        parse(data)
    assert sorted(f for f, _ in info.value.errors) == [
        "files[0].sha256",
        "files[2].sources.mirrors[1]",
        "name",
    ]
    assert len(str(info.value).splitlines()) == 3


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside parsed manifest data."""
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        out.append((*prefix, key))
        if isinstance(value, dict | list):
            out.extend(_paths(value, (*prefix, key)))
    return out


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["ftp://x/y", "../..", "/etc", "C:/x", "a\\b", "magnet:?xt=x", "1G", "-1"]),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)
KEY = r'([A-Za-z0-9_-]+|"([^"\\]|\\.)*")'
FIELD_PATH = re.compile(rf"^{KEY}(\[\d+\]|\.{KEY})*$")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_is_valid_or_a_clear_manifest_error(data: st.DataObject) -> None:
    manifest = base()
    where = data.draw(st.sampled_from(_paths(manifest)))
    node: Any = manifest
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = data.draw(junk)
    try:
        parse(manifest, "fuzz.json")
    except ManifestError as exc:
        assert exc.errors
        for field, message in exc.errors:
            assert FIELD_PATH.match(field), field
            assert message and "Input should" not in message, message
            assert "function-" not in field and "union" not in field
        assert all(line.startswith("fuzz.json: ") for line in str(exc).splitlines())


# --- formats --------------------------------------------------------------------------------


def test_toml_syntax_error_names_line_and_column() -> None:
    text = CIFAR_TOML.replace("size = 170498071", "size = = 1")
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "cifar10.toml")
    (field, message), *_ = info.value.errors
    assert field == ""
    assert message.startswith("invalid TOML")
    assert "line 7" in message and "column" in message
    assert str(info.value).startswith("cifar10.toml: invalid TOML")


def test_json_syntax_error_names_line_and_column() -> None:
    with pytest.raises(ManifestError, match=r"invalid JSON at line 2, column \d+"):
        parse_manifest('{"manifest_version": 1,\n "name": }', "x.json")


def test_json_duplicate_key_is_refused() -> None:
    with pytest.raises(ManifestError, match="'name' appears twice"):
        parse_manifest('{"name": "a", "name": "b"}', "x.json")


def test_json_top_level_must_be_an_object() -> None:
    with pytest.raises(ManifestError, match="one object"):
        parse_manifest("[1, 2]", "x.json")


def test_not_utf8() -> None:
    with pytest.raises(ManifestError, match="not UTF-8"):
        parse_manifest(b"name = '\xff'", "x.toml")


@pytest.mark.parametrize("source", ["cifar10.json", "cifar10", "cifar10.manifest"])
def test_format_by_suffix_or_sniffed(source: str) -> None:
    toml_model = parse_manifest(CIFAR_TOML, "cifar10.toml")
    as_json = json.dumps(toml_model.model_dump(mode="json"), indent=2)
    assert parse_manifest(as_json, source) == toml_model
    assert parse_manifest(as_json.encode(), source) == toml_model


def test_toml_without_suffix_is_sniffed() -> None:
    assert parse_manifest(CIFAR_TOML, "inbox/cifar10").name == "cifar10"
    assert parse_manifest("\ufeff" + CIFAR_TOML, "inbox/cifar10").name == "cifar10"


def test_explicit_format_wins() -> None:
    with pytest.raises(ManifestError, match="invalid JSON"):
        parse_manifest(CIFAR_TOML, "x.toml", fmt="json")


def test_load_manifest(tmp_path: Path) -> None:
    path = tmp_path / "cifar10.toml"
    path.write_text(CIFAR_TOML)
    assert load_manifest(path).name == "cifar10"
    path.write_text(CIFAR_TOML.replace("md5 =", "md6 ="))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: files[0].md6: unknown key 'md6'")


def test_load_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(ManifestUnreadable) as info:
        load_manifest(tmp_path / "gone.toml")
    assert info.value.code == "manifest.unreadable"
    assert isinstance(info.value, ManifestError)
    assert str(info.value) == f"{tmp_path / 'gone.toml'}: no such file"


# --- digests, round trips, schema ----------------------------------------------------------


def test_round_trip_through_json() -> None:
    m = parse(base(), "a.json")
    again = parse_manifest(m.model_dump_json(), "again.json")
    assert again == m
    assert manifest_digest(again) == manifest_digest(m)


def test_digest_is_stable_across_reformatting() -> None:
    reformatted = """
# the same dataset, written differently
destination = "./cifar10/"
name = "cifar10"
manifest_version = 1
[[files]]
  unpack = [ { into = ".", format = "tar.gz" } ]
  sources = { mirrors = [ "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" ] }
  md5 = "C58F30108F718F92721AF3B95E74349A"
  size = 170_498_071
  path = "./cifar-10-python.tar.gz"
"""
    a = parse_manifest(CIFAR_TOML, "a.toml")
    b = parse_manifest(reformatted, "b.toml")
    assert manifest_digest(a) == manifest_digest(b)
    assert len(manifest_digest(a)) == 64


def test_digest_changes_with_content() -> None:
    a = parse_manifest(CIFAR_TOML, "a.toml")
    b = parse_manifest(CIFAR_TOML.replace("170498071", "170498072"), "b.toml")
    c = parse_manifest(CIFAR_TOML.replace('name = "cifar10"', 'name = "cifar10b"'), "c.toml")
    assert len({manifest_digest(a), manifest_digest(b), manifest_digest(c)}) == 3


def test_schema() -> None:
    schema = manifest_schema()
    assert schema["type"] == "object"
    # [[files]] is required unless kind = "urllist" (then [urllist] is): see allOf.
    assert set(schema["required"]) == {"manifest_version", "name", "destination"}
    [rule] = schema["allOf"]
    assert rule["then"] == {"required": ["urllist"]}
    assert rule["else"]["required"] == ["files"]
    assert schema["additionalProperties"] is False
    assert "FileSpec" in schema["$defs"]
    json.dumps(schema)  # printable as is by `acquirectl schema`


def test_warnings() -> None:
    data = base()
    del data["files"][0]["sha256"]
    data["files"][2]["sources"]["mirrors"][0] = "https://user:secret@mirror.example/c.bin"
    m = parse(data)
    assert m.warnings() == [
        "files[0] (a.tar.gz): no checksum; the file cannot be verified",
        "files[2].sources.mirrors[0]: the URL carries a user name or password; "
        "it is kept in the state folder as written",
    ]


def test_redact_url() -> None:
    assert redact_url("https://u:p@h:8443/x?y=1") == "https://***@h:8443/x?y=1"
    assert redact_url("https://u@[::1]/x") == "https://***@[::1]/x"
    assert redact_url("https://h/x") == "https://h/x"


def test_filespec_digests_order_and_absence() -> None:
    f = FileSpec.model_validate(
        {"path": "x", "md5": "0" * 32, "sha256": SHA256, "sources": {"mirrors": ["http://h/x"]}}
    )
    assert f.digests == {"sha256": SHA256, "md5": "0" * 32}
    g = FileSpec.model_validate({"path": "x", "sources": {"mirrors": ["http://h/x"]}})
    assert g.digests == {} and not g.has_digest


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.tar.gz", "tar.gz"),
        ("a.TGZ", "tar.gz"),
        ("a.tar", "tar"),
        ("a.tar.zst", "tar.zst"),
        ("a.zst", "zst"),
        ("a.gz", "gz"),
        ("a.zip", "zip"),
        ("a.tar.xz", "tar.xz"),
        ("a.bz2", "bz2"),
        ("a.bin", None),
    ],
)
def test_archive_format(name: str, fmt: str | None) -> None:
    assert archive_format(name) == fmt


# --- path rules as properties --------------------------------------------------------------

segment = st.text(
    alphabet=st.characters(
        max_codepoint=0x2FF,
        blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
        blacklist_characters="/\\",
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and not (len(s) > 1 and s[1] == ":"))
separator = st.sampled_from(["/", "//", "/./", "/././/"])


@given(st.lists(segment, min_size=1, max_size=6), st.data())
def test_normalised_paths_stay_relative_and_plain(parts: list[str], data: st.DataObject) -> None:
    noisy = data.draw(st.sampled_from(["", "./", ".//"])) + parts[0]
    for part in parts[1:]:
        noisy += data.draw(separator) + part
    normal = check_relative_path(noisy)
    assert normal == "/".join(parts)
    assert not normal.startswith("/")
    assert ".." not in normal.split("/")
    assert check_relative_path(normal) == normal  # idempotent


@given(
    st.lists(segment, max_size=3),
    st.lists(segment, max_size=3),
)
def test_dotdot_anywhere_is_refused(before: list[str], after: list[str]) -> None:
    with pytest.raises(ValueError, match=r"'\.\.'"):
        check_relative_path("/".join([*before, "..", *after]))


@settings(max_examples=50)
@given(st.text(min_size=1, max_size=30))
def test_any_accepted_path_stays_under_the_base(text: str) -> None:
    try:
        normal = check_relative_path(text, folder=True, allow_dot=True)
    except ValueError:
        return
    base = Path("/base")
    joined = Path(os.path.normpath(base / normal))
    assert joined == base or base in joined.parents


@given(
    st.sampled_from(sorted(DIGEST_LENGTHS)),
    st.integers(min_value=1, max_value=140),
    st.sampled_from(["0123456789abcdef", "0123456789ABCDEF", "ghijkl"]),
)
def test_digest_length_and_alphabet(algorithm: str, length: int, alphabet: str) -> None:
    value = (alphabet * 200)[:length]
    data = base()
    data["files"][0][algorithm] = value
    ok = length == DIGEST_LENGTHS[algorithm] and alphabet != "ghijkl"
    if ok:
        assert parse(data).files[0].digests[algorithm] == value.lower()
    else:
        with pytest.raises(ManifestError) as info:
            parse(data)
        assert [f for f, _ in info.value.errors] == [f"files[0].{algorithm}"]


# --- resolve_under -------------------------------------------------------------------------


def test_resolve_under_plain(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    assert resolve_under(root, "cifar10", "destination", "m.toml") == root / "cifar10"
    assert resolve_under(root, "a/b/c.tar", "files[0].path", "m.toml") == root / "a/b/c.tar"
    assert resolve_under(root, ".", "files[0].unpack[0].into", "m.toml") == root


def test_resolve_under_refuses_a_symlink_out(tmp_path: Path) -> None:
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "cifar10").mkdir()
    (root / "cifar10" / "escape").symlink_to(outside)
    with pytest.raises(ManifestError) as info:
        resolve_under(root, "cifar10/escape/x.tar", "files[3].path", "inbox/m.toml")
    exc = info.value
    assert exc.source == "inbox/m.toml"
    assert exc.errors[0][0] == "files[3].path"
    assert "leaves the data root" in exc.errors[0][1]
    assert str(exc).startswith("inbox/m.toml: files[3].path: 'cifar10/escape/x.tar' leaves")
    assert not (outside / "x.tar").exists()


def test_resolve_under_follows_a_symlink_that_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "real").mkdir(parents=True)
    (root / "alias").symlink_to(root / "real")
    assert resolve_under(root, "alias/x", "destination", "m") == root / "real" / "x"


def test_resolve_under_a_root_that_is_itself_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "root").symlink_to(real)
    assert resolve_under(tmp_path / "root", "a", "destination", "m") == real / "a"


def test_resolve_under_refuses_a_symlink_loop_to_parent(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "up").symlink_to("..")
    with pytest.raises(ManifestError, match="leaves the data root"):
        resolve_under(root, "up/data2", "destination", "m")


@pytest.mark.parametrize("bad", ["../x", "/etc", "a/../../b", ""])
def test_resolve_under_checks_the_relative_path_too(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ManifestError) as info:
        resolve_under(tmp_path, bad, "destination", "m")
    assert info.value.errors[0][0] == "destination"


def test_model_validate_directly_raises_manifest_error_for_cross_checks() -> None:
    data = base()
    data["files"][2]["path"] = "a.tar.gz"
    with pytest.raises(ManifestError) as info:
        Manifest.model_validate(data)
    assert info.value.errors[0][0] == "files[2].path"

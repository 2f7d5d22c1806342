"""acquired.common: one set of digest algorithms and one hasher; one class per shared code."""

from __future__ import annotations

import ast
import hashlib
import importlib
import pickle
import pkgutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acquired.common.digests import (
    ALGORITHMS,
    Hasher,
    hash_file,
    normalize_algorithm,
    normalize_digest,
)
from acquired.common.errors import (
    AcquiredError,
    DigestMismatch,
    DiskFull,
    InvalidDigest,
    UnsupportedAlgorithm,
)
from acquired.common.formatters import format_bytes, format_duration, format_rate, format_size

ROOT = Path(__file__).resolve().parents[1]
DATA = bytes(range(256)) * 1000 + b"tail"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("sha256", "sha256"),
        ("SHA-256", "sha256"),
        (" sha_256 ", "sha256"),
        ("SHA512", "sha512"),
        ("sha-512", "sha512"),
        ("SHA-1", "sha1"),
        ("MD5", "md5"),
        ("blake2", "blake2b"),
        ("BLAKE2b", "blake2b"),
        ("blake2b512", "blake2b"),
    ],
)
def test_algorithm_names(name: str, canonical: str) -> None:
    assert normalize_algorithm(name) == canonical


@pytest.mark.parametrize("name", ["crc32", "sha3_256", "blake2s", "sha224", "", "sha"])
def test_algorithms_outside_the_set_are_refused(name: str) -> None:
    with pytest.raises(UnsupportedAlgorithm) as info:
        normalize_algorithm(name)
    assert info.value.code == "verify.unsupported_algorithm"
    assert info.value.details["supported"] == list(ALGORITHMS)
    # The hint names exactly the accepted set (it once recommended one that was refused).
    for algorithm in ALGORITHMS:
        assert algorithm in info.value.hint


def test_the_set_is_hashlibs_lengths() -> None:
    assert set(ALGORITHMS) == {"sha256", "sha512", "sha1", "md5", "blake2b"}
    for algorithm, length in ALGORITHMS.items():
        assert len(hashlib.new(algorithm, b"").hexdigest()) == length


@pytest.mark.parametrize(
    ("algorithm", "value", "short_blake2b", "result"),
    [
        ("sha256", "AB" * 32, True, "ab" * 32),
        ("sha256", "  " + "0" * 64 + "\n", True, "0" * 64),
        ("sha512", "f" * 128, True, "f" * 128),
        ("sha512", "f" * 64, True, "has 64 characters — a sha512 digest has exactly 128"),
        ("md5", "0" * 33, True, "exactly 32"),
        ("sha1", "g" * 40, True, "not hexadecimal"),
        ("sha1", "", True, "not hexadecimal"),
        ("md5", 12, True, "a md5 digest is a string of 32 hex digits"),
        ("blake2b", "a" * 64, True, "a" * 64),
        ("blake2b", "a" * 64, False, "exactly 128"),
        ("blake2b", "a" * 63, True, "an even number"),
        ("blake2b", "a" * 130, True, "at most 128"),
    ],
)
def test_hex_validation(algorithm: str, value: object, short_blake2b: bool, result: str) -> None:
    if set(result) <= set("0123456789abcdef"):
        assert normalize_digest(algorithm, value, short_blake2b=short_blake2b) == result
        return
    with pytest.raises(InvalidDigest) as info:
        normalize_digest(algorithm, value, short_blake2b=short_blake2b)
    assert result in str(info.value)
    assert info.value.code == "verify.invalid_digest"


def test_hasher_streams_every_algorithm_in_one_pass(tmp_path: Path) -> None:
    hasher = Hasher(["SHA-256", "md5", "sha512"])
    for i in range(0, len(DATA), 7777):
        hasher.update(memoryview(DATA)[i : i + 7777])
    assert hasher.length == len(DATA)
    assert hasher.algorithms == ["md5", "sha256", "sha512"]
    assert hasher.hexdigests() == {a: hashlib.new(a, DATA).hexdigest() for a in hasher.algorithms}


def test_hasher_defaults_to_sha256_and_sizes_blake2b_from_the_expected_digest() -> None:
    assert Hasher().hexdigests() == {"sha256": hashlib.sha256(b"").hexdigest()}
    short = hashlib.blake2b(DATA, digest_size=32).hexdigest()
    hasher = Hasher({"blake2b": short, "md5": "0" * 32})
    hasher.update(DATA)
    assert hasher.hexdigests()["blake2b"] == short


def test_hasher_reads_a_prefix_of_an_open_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    hasher = Hasher(["sha1"])
    with path.open("rb") as f:
        hasher.update_from_file(f.fileno(), 0, 5000, chunk=1024)
        with pytest.raises(OSError, match="short read"):
            Hasher(["sha1"]).update_from_file(f.fileno(), len(DATA) - 10, len(DATA) + 10)
    assert hasher.hexdigests()["sha1"] == hashlib.sha1(DATA[:5000]).hexdigest()


def test_hash_file_matches_hashlib_and_reports_progress(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    seen: list[tuple[int, int]] = []
    got = hash_file(path, ALGORITHMS, lambda d, t: seen.append((d, t)), chunk_size=10_000)
    assert got == {a: hashlib.new(a, DATA).hexdigest() for a in ALGORITHMS}
    assert seen[0] == (0, len(DATA)) and seen[-1] == (len(DATA), len(DATA))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_hash_file_stops_when_check_raises(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    stop = threading.Event()
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
            raise InterruptedError("stop")

    with pytest.raises(InterruptedError):
        hash_file(path, ["sha256"], check=check, chunk_size=1000)
    assert stop.is_set() and calls == 3
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing", ["md5"])


# --- errors ---------------------------------------------------------------------------------


def _all_modules() -> list[str]:
    names = []
    for package in ("daemon", "sources", "unpack", "common"):
        pkg = importlib.import_module(f"acquired.{package}")
        for info in pkgutil.walk_packages(pkg.__path__, f"acquired.{package}."):
            names.append(info.name)
    return names


def _error_classes() -> list[type[AcquiredError]]:
    for name in _all_modules():
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - e.g. a machine without libtorrent
            continue
    out: list[type[AcquiredError]] = []
    todo: list[type[AcquiredError]] = [AcquiredError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_every_code_is_defined_by_one_class() -> None:
    definers: dict[str, list[str]] = {}
    for cls in _error_classes():
        if "code" in vars(cls):
            definers.setdefault(cls.code, []).append(f"{cls.__module__}.{cls.__qualname__}")
    twice = {code: where for code, where in definers.items() if len(where) > 1}
    assert twice == {}
    for code in ("verify.digest_mismatch", "verify.unsupported_algorithm", "disk.full"):
        assert definers[code][0].startswith("acquired.common.errors."), code


@pytest.mark.parametrize(
    ("module", "name", "shared"),
    [
        ("acquired.unpack.errors", "DigestMismatch", DigestMismatch),
        ("acquired.sources.http.errors", "DigestMismatch", DigestMismatch),
        ("acquired.sources.torrent.errors", "DigestMismatch", DigestMismatch),
        ("acquired.unpack.errors", "DiskFull", DiskFull),
        ("acquired.sources.errors", "DiskFull", DiskFull),
        ("acquired.sources.http.errors", "UnsupportedDigest", UnsupportedAlgorithm),
        ("acquired.unpack.errors", "UnsupportedAlgorithm", UnsupportedAlgorithm),
        ("acquired.unpack.errors", "InvalidDigest", InvalidDigest),
    ],
)
def test_package_names_are_the_shared_class(module: str, name: str, shared: type) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, shared)
    err = cls("boom", path="/x")
    assert (err.code, err.hint, err.retryable) == (shared.code, shared.hint, shared.retryable)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is cls and again.details == {"path": "/x"} and str(again) == "boom"
    with pytest.raises(shared):
        raise err


def test_common_is_a_leaf() -> None:
    """acquired.common imports nothing of ours outside itself."""
    for path in sorted((ROOT / "common").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                assert node.level == 1 or not mod.startswith("acquired"), (path.name, mod)
                assert node.level <= 1, (path.name, mod)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("acquired"), (path.name, alias.name)


# --- formatters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "value", "text"),
    [
        (format_bytes, None, "0 B"),
        (format_bytes, 999, "999 B"),
        (format_bytes, 1500, "1.5 kB"),
        (format_bytes, 170_498_071, "170.5 MB"),
        (format_rate, 45_200_000, "45.2 MB/s"),
        (format_rate, None, "0 B/s"),
        (format_size, 1536, "1.5 KiB"),
        (format_size, 10, "10 B"),
        (format_duration, None, "-"),
        (format_duration, 45.9, "45s"),
        (format_duration, 187, "3m07s"),
        (format_duration, 7500, "2h05m"),
        (format_duration, 3 * 86400 + 4 * 3600, "3d04h"),
    ],
)
def test_formatters(func: Callable[[Any], str], value: object, text: str) -> None:
    assert func(value) == text


def test_daemon_units_formats_through_common() -> None:
    from acquired.common import formatters
    from acquired.daemon import units

    for name in formatters.__all__:
        assert getattr(units, name) is getattr(formatters, name)

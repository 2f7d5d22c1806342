"""Digests of completed files, checksum files shipped with datasets, and matching files
that appear in watched folders to the files a job expects.

Algorithms, hex validation and the one-pass hasher are :mod:`acquired.common.digests`,
shared with the sources; this module adds the unpack pipeline's errors (a missing file,
a cancelled step) and what is built on them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from acquired.common import digests as _digests
from acquired.common.digests import (
    ALGORITHMS,
    CHUNK_SIZE,
    new_hasher,
    normalize_algorithm,
    normalize_digest,
)

from .errors import (
    ChecksumFileInvalid,
    DigestMismatch,
    ExtractCancelled,
    FileMissing,
    InvalidDigest,
    MemberMissing,
)

__all__ = [
    "ALGORITHMS",
    "CHUNK_SIZE",
    "Candidate",
    "ChecksumEntry",
    "ChecksumReport",
    "Progress",
    "algorithm_from_name",
    "hash_file",
    "match_completed",
    "new_hasher",
    "normalize_algorithm",
    "normalize_digest",
    "parse_checksum_file",
    "parse_checksum_text",
    "verify",
    "verify_checksum_file",
]

#: A progress callback: ``progress(done, total)``, called from the worker thread.
Progress = Callable[[int, int], None]


def hash_file(
    path: Path,
    algorithms: Mapping[str, int | None] | Iterable[str],
    progress: Progress | None = None,
    *,
    cancel: threading.Event | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, str]:
    """Return the hex digests of ``path`` for every algorithm, in one pass over the data.

    ``algorithms`` is a list of names or a mapping name -> expected hex length (blake2b's
    output size follows it). ``progress(done, total)`` gets bytes hashed. Raises
    :class:`FileMissing`, and :class:`ExtractCancelled` once ``cancel`` is set.
    """

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise ExtractCancelled(f"verification of {path} was cancelled", path=str(path))

    try:
        return _digests.hash_file(path, algorithms, progress, check=check, chunk_size=chunk_size)
    except FileNotFoundError:
        raise FileMissing(f"{path} does not exist", path=str(path)) from None


def _expected(digests: Mapping[str, str]) -> dict[str, str]:
    """Canonical algorithm -> lower-case hex, every digest checked."""
    out: dict[str, str] = {}
    for algorithm, value in digests.items():
        name = normalize_algorithm(algorithm)
        out[name] = normalize_digest(name, value)
    return out


def verify(
    path: Path,
    digests: Mapping[str, str],
    progress: Progress | None = None,
    *,
    cancel: threading.Event | None = None,
) -> dict[str, str]:
    """Check ``path`` against ``digests`` ({"sha256": hex, "md5": hex, ...}) in one pass.

    Returns the computed digests (sha256 alone when ``digests`` is empty, so the caller
    always gets an identity for the file). Raises :class:`DigestMismatch` (details
    ``algorithm``, ``expected``, ``actual``, ``path``; ``mismatches`` when several
    algorithms disagree), :class:`FileMissing`, :class:`UnsupportedAlgorithm`,
    :class:`InvalidDigest`, :class:`ExtractCancelled`.
    """
    expected = _expected(digests)
    actual = hash_file(path, expected, progress, cancel=cancel)
    bad = [a for a, v in expected.items() if actual[a] != v]
    if bad:
        first = bad[0]
        raise DigestMismatch(
            f"{path.name}: {first} is {actual[first]}, expected {expected[first]}",
            algorithm=first,
            expected=expected[first],
            actual=actual[first],
            path=str(path),
            mismatches=[
                {"algorithm": a, "expected": expected[a], "actual": actual[a]} for a in bad
            ],
        )
    return actual


# --- checksum files -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChecksumEntry:
    """One line of a checksum file: ``name`` relative to the file's base folder."""

    name: str
    algorithm: str
    digest: str
    line: int


@dataclass(frozen=True)
class ChecksumReport:
    """What :func:`verify_checksum_file` checked."""

    checksum_file: Path
    files: int
    bytes: int
    algorithms: tuple[str, ...] = field(default=())


# File names that tell the algorithm of their lines (GNU coreutils, BSD, common habits).
_NAME_HINTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), a)
    for p, a in (
        (r"(^|[._-])sha256(sums?)?([._-].*)?$", "sha256"),
        (r"(^|[._-])sha1(sums?)?([._-].*)?$", "sha1"),
        (r"(^|[._-])sha512(sums?)?([._-].*)?$", "sha512"),
        (r"(^|[._-])md5(sums?)?([._-].*)?$", "md5"),
        (r"(^|[._-])(b2|blake2b?)(sums?)?([._-].*)?$", "blake2b"),
    )
)
_BSD_TAGS = {
    "MD5": "md5",
    "SHA1": "sha1",
    "SHA256": "sha256",
    "SHA512": "sha512",
    "BLAKE2B": "blake2b",
}
_BSD_LINE = re.compile(
    r"^(?P<tag>[A-Za-z0-9]+)(?:-(?P<bits>\d+))? ?\((?P<name>.*)\) ?= ?(?P<hex>[0-9A-Fa-f]+)$"
)
_GNU_LINE = re.compile(r"^(?P<hex>[0-9A-Fa-f]+) (?P<mode>[ *^U])(?P<name>.+)$")
_HEX_ONLY = re.compile(r"^[0-9A-Fa-f]{32,128}$")
_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256"}


def algorithm_from_name(file_name: str) -> str | None:
    """The algorithm a checksum file's name announces (``SHA256SUMS`` -> sha256)."""
    for pattern, algorithm in _NAME_HINTS:
        if pattern.search(file_name):
            return algorithm
    return None


def _unescape_gnu(name: str) -> str:
    # GNU coreutils escape '\\' and '\n' in names when the line starts with a backslash.
    out: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _safe_member(name: str, source: str, line: int) -> str:
    cleaned = name[2:] if name.startswith("./") else name
    pure = PurePosixPath(cleaned)
    if not cleaned or pure.is_absolute() or ".." in pure.parts:
        raise ChecksumFileInvalid(
            f"{source}:{line}: {name!r} is not a path inside the dataset",
            path=source,
            line=line,
            name=name,
        )
    return str(pure)


def parse_checksum_text(
    text: str, *, source: str, algorithm: str | None = None
) -> list[ChecksumEntry]:
    """Parse the lines of a checksum file (pure; ``source`` names the file in errors).

    Accepts GNU lines (``<hex>  name``, ``<hex> *name``, backslash-escaped names), BSD /
    ``--tag`` lines (``SHA256 (name) = <hex>``, ``BLAKE2b-256 (name) = <hex>``) and a
    lone ``<hex>`` (the ``*.md5`` habit: the digest of the file named like the checksum
    file without its extension). Blank lines and ``#`` comments are skipped. The algorithm
    of GNU lines comes from ``algorithm``, else the file name, else the digest length.
    """
    default = normalize_algorithm(algorithm) if algorithm else algorithm_from_name(source)
    entries: list[ChecksumEntry] = []
    base_name = PurePosixPath(source).name
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        escaped = line.startswith("\\")
        body = line[1:] if escaped else line
        m = _BSD_LINE.match(body)
        if m and m.group("tag").upper() in _BSD_TAGS:
            algo = _BSD_TAGS[m.group("tag").upper()]
            name = m.group("name")
            hexd = m.group("hex").lower()
            if m.group("bits") and (algo != "blake2b" or int(m.group("bits")) != len(hexd) * 4):
                raise ChecksumFileInvalid(
                    f"{source}:{number}: digest length does not match {m.group('tag')}-"
                    f"{m.group('bits')}",
                    path=source,
                    line=number,
                )
        elif (g := _GNU_LINE.match(body)) is not None:
            hexd = g.group("hex").lower()
            name = g.group("name")
            algo = default or _BY_LENGTH.get(len(hexd), "")
        elif _HEX_ONLY.match(line.strip()):
            hexd = line.strip().lower()
            stem, dot, _ = base_name.rpartition(".")
            if not dot or not stem:
                raise ChecksumFileInvalid(
                    f"{source}:{number}: a digest without a file name, and the checksum file's "
                    "name does not tell which file it is for",
                    path=source,
                    line=number,
                )
            name = stem
            algo = default or _BY_LENGTH.get(len(hexd), "")
        else:
            raise ChecksumFileInvalid(
                f"{source}:{number}: not a checksum line: {line[:80]!r}", path=source, line=number
            )
        if not algo:
            raise ChecksumFileInvalid(
                f"{source}:{number}: a {len(hexd)}-digit digest could be sha512 or blake2b; "
                "name the algorithm",
                path=source,
                line=number,
            )
        if escaped:
            name = _unescape_gnu(name)
        try:
            digest = normalize_digest(algo, hexd)
        except InvalidDigest as exc:
            raise ChecksumFileInvalid(
                f"{source}:{number}: {exc}", path=source, line=number
            ) from None
        entries.append(ChecksumEntry(_safe_member(name, source, number), algo, digest, number))
    if not entries:
        raise ChecksumFileInvalid(f"{source}: no checksum lines", path=source)
    return entries


def parse_checksum_file(path: Path, algorithm: str | None = None) -> list[ChecksumEntry]:
    """Read and parse a checksum file (see :func:`parse_checksum_text`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileMissing(f"checksum file {path} does not exist", path=str(path)) from None
    text = data.decode("utf-8", errors="surrogateescape")
    return parse_checksum_text(text, source=str(path), algorithm=algorithm)


def verify_checksum_file(
    checksum_file: Path,
    base_dir: Path | None = None,
    progress: Progress | None = None,
    *,
    algorithm: str | None = None,
    workers: int | None = None,
    cancel: threading.Event | None = None,
) -> ChecksumReport:
    """Check every member a checksum file lists, relative to ``base_dir`` (default: the
    checksum file's folder), with ``workers`` threads. ``progress`` gets bytes hashed.

    Raises :class:`MemberMissing` (details ``missing``: the first 100 names, ``count``) if
    listed files are absent, else :class:`DigestMismatch` for the first member that
    differs (details also ``failures``: up to 100 ``{path, algorithm, expected, actual}``,
    ``count``).
    """
    entries = parse_checksum_file(checksum_file, algorithm)
    base = base_dir if base_dir is not None else checksum_file.parent
    # One pass per file even when several lines (algorithms) name it.
    by_name: dict[str, dict[str, str]] = {}
    for e in entries:
        by_name.setdefault(e.name, {})[e.algorithm] = e.digest
    sizes: dict[str, int] = {}
    missing: list[str] = []
    for name in by_name:
        try:
            sizes[name] = (base / name).stat().st_size
        except FileNotFoundError:
            missing.append(name)
    if missing:
        raise MemberMissing(
            f"{checksum_file.name}: {len(missing)} listed file(s) missing under {base}, "
            f"e.g. {missing[0]}",
            checksum_file=str(checksum_file),
            base=str(base),
            missing=missing[:100],
            count=len(missing),
        )
    total = sum(sizes.values())
    done = 0
    lock = threading.Lock()
    if progress is not None:
        progress(0, total)

    def one(name: str) -> dict[str, Any] | None:
        nonlocal done
        last = 0

        def step(d: int, _t: int) -> None:
            nonlocal done, last
            with lock:
                done += d - last
                current = done
            last = d
            if progress is not None:
                progress(current, total)

        expected = by_name[name]
        # Small buffers for small files: ImageNet-like sets are a million 100 KB files.
        chunk = min(CHUNK_SIZE, max(64 << 10, sizes[name]))
        actual = hash_file(
            base / name,
            {a: len(v) for a, v in expected.items()},
            step,
            cancel=cancel,
            chunk_size=chunk,
        )
        for algo, value in expected.items():
            if actual[algo] != value:
                return {"path": name, "algorithm": algo, "expected": value, "actual": actual[algo]}
        return None

    n_workers = workers or min(8, len(os.sched_getaffinity(0)))
    failures: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max(1, n_workers), thread_name_prefix="checksum") as pool:
        for result in pool.map(one, sorted(by_name)):
            if result is not None:
                failures.append(result)
    if failures:
        first = failures[0]
        raise DigestMismatch(
            f"{checksum_file.name}: {len(failures)} file(s) differ, e.g. {first['path']} "
            f"({first['algorithm']} is {first['actual']}, expected {first['expected']})",
            algorithm=first["algorithm"],
            expected=first["expected"],
            actual=first["actual"],
            path=str(base / first["path"]),
            failures=failures[:100],
            count=len(failures),
        )
    algos = tuple(sorted({e.algorithm for e in entries}))
    return ChecksumReport(checksum_file, len(by_name), total, algos)


# --- completed files in watched folders ---------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A file a job expects: the daemon's key for it, its base name, size and digests."""

    key: str
    name: str
    size: int | None = None
    digests: Mapping[str, str] = field(default_factory=dict)


def match_completed(
    path: Path,
    candidates: Iterable[Candidate],
    progress: Progress | None = None,
    *,
    cancel: threading.Event | None = None,
) -> Candidate | None:
    """Which expected file a completed file in a watched folder is.

    Candidates are narrowed by base name, then size (when known), then digests: the file
    is hashed once for every algorithm any remaining candidate names. Returns the first
    candidate whose digests all match, else a name+size match that has no digest, else
    ``None`` when nothing matches by name and size. Raises :class:`DigestMismatch` when
    name and size match but no digest does (a damaged copy: the daemon should say so, not
    use it).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileMissing(f"{path} does not exist", path=str(path)) from None
    same = [c for c in candidates if c.name == path.name and (c.size is None or c.size == size)]
    if not same:
        return None
    with_digest = [c for c in same if c.digests]
    if not with_digest:
        return same[0]
    wanted: dict[str, int | None] = {}
    normalized: list[tuple[Candidate, dict[str, str]]] = []
    for c in with_digest:
        exp = _expected(c.digests)
        normalized.append((c, exp))
        for a, v in exp.items():
            # blake2b of two output sizes for one name: the first wins; the other
            # candidate then simply does not match.
            wanted.setdefault(a, len(v))
    actual = hash_file(path, wanted, progress, cancel=cancel)
    for c, exp in normalized:
        if all(actual.get(a) == v for a, v in exp.items()):
            return c
    no_digest = [c for c in same if not c.digests]
    if no_digest:
        return no_digest[0]
    c, exp = normalized[0]
    algo = next(iter(exp))
    raise DigestMismatch(
        f"{path.name} has the name and size of {c.key} but its {algo} is {actual[algo]}, "
        f"expected {exp[algo]}",
        algorithm=algo,
        expected=exp[algo],
        actual=actual[algo],
        path=str(path),
        candidate=c.key,
    )

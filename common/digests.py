"""Digests: the one set of algorithms acquired verifies, and the one streaming hasher.

Manifests, checksum files, the HTTP engine and the unpack pipeline all name algorithms
and check hex digests through this module, so they accept the same names and lengths.

Hashing goes through ``hashlib`` (OpenSSL, with SHA extensions where the CPU has them).
``hashlib`` releases the GIL for updates larger than 2 KiB, so :func:`hash_file` runs
each algorithm in its own thread on the same chunk while the next chunk is read: one pass
over the data, however many algorithms are asked for.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import InvalidDigest, UnsupportedAlgorithm

__all__ = [
    "ALGORITHMS",
    "CHUNK_SIZE",
    "Hasher",
    "hash_file",
    "new_hasher",
    "normalize_algorithm",
    "normalize_digest",
]

#: Every algorithm acquired accepts, with its digest length in hex digits. blake2b also
#: comes shorter (``b2sum -l 256``) where :func:`normalize_digest` allows it.
ALGORITHMS: dict[str, int] = {
    "sha256": 64,
    "sha512": 128,
    "sha1": 40,
    "md5": 32,
    "blake2b": 128,
}

#: Read size of :func:`hash_file`: per-call overhead vanishes, and it still fits the cache.
CHUNK_SIZE = 4 << 20

# Spellings seen in the wild, after lower-casing and dropping '-' and '_'.
_ALIASES = {"blake2": "blake2b", "blake2b512": "blake2b"}
_HEX = re.compile(r"[0-9a-f]+")


def normalize_algorithm(name: str) -> str:
    """Return the canonical name of an algorithm (``SHA-256`` -> ``sha256``).

    Raises :class:`~acquired.common.errors.UnsupportedAlgorithm` for anything outside
    :data:`ALGORITHMS`.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in ALGORITHMS:
        raise UnsupportedAlgorithm(
            f"unsupported digest algorithm {name!r}", algorithm=name, supported=list(ALGORITHMS)
        )
    return key


def normalize_digest(algorithm: str, value: object, *, short_blake2b: bool = True) -> str:
    """Return ``value`` as lower-case hex, checked against the algorithm's length.

    ``algorithm`` must already be canonical. A shorter blake2b (an even number of digits
    up to 128) passes unless ``short_blake2b`` is false. Raises
    :class:`~acquired.common.errors.InvalidDigest` with a message that says what is wrong.
    """
    length = ALGORITHMS[algorithm]
    if not isinstance(value, str):
        raise InvalidDigest(
            f"{value!r} — a {algorithm} digest is a string of {length} hex digits",
            algorithm=algorithm,
            value=repr(value),
        )
    text = value.strip().lower()
    if not _HEX.fullmatch(text):
        raise InvalidDigest(
            f"{value!r} is not hexadecimal — a {algorithm} digest is {length} characters "
            "0-9 and a-f",
            algorithm=algorithm,
            value=value,
        )
    if algorithm == "blake2b" and short_blake2b:
        # b2sum -l N: BLAKE2b with an N-bit output, N a multiple of 8 up to 512.
        if len(text) % 2 or len(text) > length:
            raise InvalidDigest(
                f"{value!r} has {len(text)} characters — a blake2b digest has an even number "
                f"of them, at most {length}",
                algorithm=algorithm,
                value=value,
            )
    elif len(text) != length:
        raise InvalidDigest(
            f"{value!r} has {len(text)} characters — a {algorithm} digest has exactly "
            f"{length}; check that it is the {algorithm} and copied whole",
            algorithm=algorithm,
            value=value,
        )
    return text


def new_hasher(algorithm: str, hexdigest_len: int | None = None) -> Any:
    """Return a fresh ``hashlib`` object; blake2b gets the output size of the expected digest."""
    if algorithm == "blake2b" and hexdigest_len and hexdigest_len != ALGORITHMS["blake2b"]:
        return hashlib.blake2b(digest_size=hexdigest_len // 2)
    return hashlib.new(algorithm)


def _lengths(algorithms: Iterable[str] | Mapping[str, object]) -> dict[str, int | None]:
    """Canonical name -> expected hex length (None: the algorithm's full length)."""
    out: dict[str, int | None] = {}
    if isinstance(algorithms, Mapping):
        for name, value in algorithms.items():
            length = len(value.strip()) if isinstance(value, str) else value
            out[normalize_algorithm(name)] = length if isinstance(length, int) else None
    else:
        for name in algorithms:
            out[normalize_algorithm(name)] = None
    return out


class Hasher:
    """Several digests of one byte stream, fed in order; sha256 when none is named.

    ``algorithms`` is a list of names, or a mapping name -> expected digest (or its hex
    length), from which a shorter blake2b takes its output size.
    """

    def __init__(self, algorithms: Iterable[str] | Mapping[str, object] = ()) -> None:
        lengths = _lengths(algorithms) or {"sha256": None}
        self.algorithms = sorted(lengths)
        self._hashes = {a: new_hasher(a, lengths[a]) for a in self.algorithms}
        self.length = 0

    def update(self, data: memoryview | bytes | bytearray) -> None:
        """Feed the next bytes of the stream to every algorithm."""
        for h in self._hashes.values():
            h.update(data)
        self.length += len(data)

    def update_from_file(self, fd: int, start: int, end: int, chunk: int = 1 << 20) -> None:
        """Feed bytes ``[start, end)`` of an open file (on resume: the prefix on disk)."""
        view = memoryview(bytearray(chunk))
        pos = start
        while pos < end:
            n = os.preadv(fd, [view[: min(chunk, end - pos)]], pos)
            if n <= 0:
                raise OSError(errno.EIO, f"short read at offset {pos} while hashing")
            self.update(view[:n])
            pos += n

    def hexdigests(self) -> dict[str, str]:
        """Return the hex digest of everything fed so far, by algorithm."""
        return {a: h.hexdigest() for a, h in self._hashes.items()}


def hash_file(
    path: Path,
    algorithms: Iterable[str] | Mapping[str, object],
    progress: Callable[[int, int], None] | None = None,
    *,
    check: Callable[[], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, str]:
    """Return the hex digests of ``path`` for every algorithm, in one pass over the data.

    ``algorithms`` as for :class:`Hasher`. ``progress(done, total)`` gets bytes hashed;
    ``check()`` is called before every read and may raise to stop (cancellation). A
    missing file raises ``FileNotFoundError``.
    """
    hasher = Hasher(algorithms)
    updates = list(hasher._hashes.values())
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        total = os.fstat(fd).st_size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        size = max(1, min(chunk_size, total))
        views = [memoryview(bytearray(size)), memoryview(bytearray(size))]
        done = 0
        if progress is not None:
            progress(0, total)
        # Two buffers: the next chunk is read while the hashers work on the previous one.
        with ThreadPoolExecutor(len(updates), thread_name_prefix="hash") as pool:
            pending: list[Future[None]] = []
            turn = 0
            try:
                while True:
                    if check is not None:
                        check()
                    view = views[turn]
                    n = os.readv(fd, [view])
                    for f in pending:
                        f.result()
                    pending = []
                    if n == 0:
                        break
                    chunk = view[:n]
                    pending = [pool.submit(h.update, chunk) for h in updates]
                    done += n
                    if progress is not None:
                        progress(done, total)
                    turn ^= 1
            finally:
                for f in pending:
                    f.cancel()
    finally:
        os.close(fd)
    return hasher.hexdigests()

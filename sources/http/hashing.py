"""Every digest the engine computes goes through here (one place to swap the hasher).

A single stream hashes as it writes; a segmented download hashes the contiguous
written prefix in a thread that follows the writers (``PrefixHasher``).
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Mapping

from acquired.sources.http.partfile import Hasher, PartFile, normalise_algorithm
from acquired.sources.http.plan import Plan

_MiB = 1 << 20
# The prefix hasher maps this much of the file at a time.
_HASH_WINDOW = 32 * _MiB


def new_hasher(digests: Mapping[str, str]) -> Hasher:
    """A hasher for every algorithm ``digests`` names (sha256 when none); raises
    UnsupportedDigest for an unknown one."""
    return Hasher(digests)


def hash_file_prefix(hasher: Hasher, part: PartFile, end: int) -> None:
    """Feed bytes ``[0, end)`` of the part file (a resumed stream's prefix)."""
    if end:
        hasher.update_from_file(part.fd, 0, end)


def mismatches(
    hasher: Hasher, digests: Mapping[str, str]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(every digest computed, [(algorithm, expected)] for each one that differs)."""
    actual = hasher.hexdigests()
    wrong = []
    for algorithm, value in sorted(digests.items()):
        name, expected = normalise_algorithm(algorithm), value.strip().lower()
        if actual[name] != expected:
            wrong.append((name, expected))
    return actual, wrong


class PrefixHasher:
    """Hashes the contiguous written prefix of a plan as it grows, in its own thread.

    Its pages are still in the page cache, and verification costs little once the last
    byte is in. The file is read through a sliding read-only mapping: no copy, and no
    more than one window of it counts against the process's resident memory."""

    def __init__(self, part: PartFile, plan: Plan, digests: Mapping[str, str], name: str) -> None:
        self.hasher = new_hasher(digests)
        self._part = part
        self._plan = plan
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._hashed = 0
        self._thread = threading.Thread(target=self._loop, name=f"http-hash-{name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        self._thread.join()

    def wait(self) -> None:
        """Wait until the whole plan is hashed; raises what the thread met."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._hashed != self._plan.size:
            raise AssertionError(f"hashed {self._hashed} of {self._plan.size} bytes")

    def _loop(self) -> None:
        plan, stop, hasher = self._plan, self._stop, self.hasher
        hashed = 0
        window = _HASH_WINDOW - _HASH_WINDOW % mmap.ALLOCATIONGRANULARITY
        mapped: mmap.mmap | None = None
        view: memoryview | None = None
        base = end = 0

        def unmap() -> None:
            nonlocal mapped, view
            if view is not None:
                view.release()
                view = None
            if mapped is not None:
                mapped.close()
                mapped = None

        try:
            while not stop.is_set():
                target = plan.prefix()
                if target <= hashed:
                    if hashed >= plan.size:
                        return
                    stop.wait(0.01)
                    continue
                while hashed < target and not stop.is_set():
                    if view is None or hashed >= end:
                        unmap()
                        base = hashed - hashed % mmap.ALLOCATIONGRANULARITY
                        end = min(plan.size, base + window)
                        mapped = mmap.mmap(
                            self._part.fd, end - base, prot=mmap.PROT_READ, offset=base
                        )
                        view = memoryview(mapped)
                    stop_at = min(target, end)
                    hasher.update(view[hashed - base : stop_at - base])
                    hashed = stop_at
                    self._hashed = hashed
        except BaseException as exc:
            self._error = exc
        finally:
            unmap()

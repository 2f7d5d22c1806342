"""Segment plans and work stealing for segmented downloads (no I/O; tests drive it directly).

A file of ``size`` bytes is in four kinds of pieces at any moment:

- ``done``: on disk (from a resume state, or finished by a connection);
- ``todo``: not assigned to anyone (sorted, merged);
- active ``Segment``s: owned by one connection each; bytes ``[start, pos)`` are written,
  ``[pos, end)`` are still to come;
- nothing else: the pieces always tile ``[0, size)`` exactly.

Connections ``take`` work in file order, in chunks sized by their speed, so the written
data grows from the front and the hasher can follow the contiguous prefix while its
pages are still in the page cache. When nothing is left to assign, a free connection
``take``s the far part of the active segment with the most time left (work stealing),
split in proportion to the two connections' speeds, so the tail of a file never runs on
one slow connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from acquired.sources.http.resume import Range, merge_ranges

MiB = 1 << 20


@dataclass
class Segment:
    """A range owned by one connection. ``end`` only ever shrinks (stealing)."""

    id: int
    start: int
    pos: int
    end: int
    rate: float = 0.0  # the owner's bytes/s, for speed-weighted splits

    @property
    def remaining(self) -> int:
        """Bytes of this segment still to be fetched."""
        return max(0, self.end - self.pos)


def gaps(size: int, done: Iterable[Range]) -> list[Range]:
    """The ranges of ``[0, size)`` not covered by ``done``."""
    out: list[Range] = []
    cursor = 0
    for first, last in merge_ranges(done):
        start, end = max(0, min(first, size)), max(0, min(last, size))
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < size:
        out.append((cursor, size))
    return out


def contiguous_prefix(ranges: Iterable[Range]) -> int:
    """How far the bytes from offset 0 are covered without a hole."""
    merged = merge_ranges(ranges)
    if merged and merged[0][0] == 0:
        return merged[0][1]
    return 0


def chunk_for(
    rate: float | None,
    *,
    seconds: float = 0.5,
    lo: int = 1 * MiB,
    hi: int = 16 * MiB,
    align: int = 64 * 1024,
) -> int:
    """How much a connection takes at once: about ``seconds`` of its speed, within
    ``[lo, hi]``. Short enough that the written prefix grows steadily and a slow
    connection holds little; long enough that request round trips cost little."""
    size = int(rate * seconds) if rate and rate > 0 else 4 * MiB
    size = max(lo, min(hi, size))
    return max(align, size - size % align)


def split_point(
    pos: int,
    end: int,
    *,
    victim_rate: float,
    thief_rate: float,
    margin: int,
    min_size: int,
    align: int = 64 * 1024,
) -> int | None:
    """Where a free connection cuts an active segment ``[pos, end)``: it takes
    ``[split, end)``. The split leaves the owner at least ``margin`` bytes (its read in
    flight must not cross the new end) and gives each side a share of the rest in
    proportion to its speed (half each when speeds are unknown), so both finish
    together. None when the thief's part would be under ``min_size``."""
    start = pos + margin
    rest = end - start
    if rest < min_size:
        return None
    if victim_rate > 0 and thief_rate > 0:
        thief_share = thief_rate / (victim_rate + thief_rate)
    else:
        thief_share = 0.5
    split = end - int(rest * thief_share)
    if align > 1:
        split += (-split) % align  # round up: the owner never loses its margin
    split = max(split, start)
    if end - split < min_size:
        return None
    return split


def pick_victim(
    segments: Iterable[Segment], *, margin: int, min_size: int
) -> tuple[Segment, float] | None:
    """The active segment whose owner needs the longest to finish (bytes left over its
    speed; unknown speeds rank by bytes left), among those big enough to split."""
    best: tuple[Segment, float] | None = None
    segs = list(segments)
    known = [s.rate for s in segs if s.rate > 0]
    fallback = min(known) if known else 1.0
    for seg in segs:
        if seg.remaining - margin < min_size:
            continue
        eta = seg.remaining / (seg.rate if seg.rate > 0 else fallback)
        if best is None or eta > best[1]:
            best = (seg, eta)
    return best


class Plan:
    """Thread-safe bookkeeping of who fetches which bytes of one file."""

    def __init__(
        self,
        size: int,
        done: Iterable[Range] = (),
        *,
        min_steal: int = 1 * MiB,
        margin: int = 1 * MiB,
        align: int = 64 * 1024,
    ) -> None:
        self.size = size
        self.min_steal = min_steal
        self.margin = margin
        self.align = align
        self._lock = threading.Lock()
        clipped = [(max(0, s), min(size, e)) for s, e in done]
        self._done: list[Range] = merge_ranges(clipped)
        self._todo: list[Range] = gaps(size, self._done)
        self._active: dict[int, Segment] = {}
        self._next_id = 0
        self.steals = 0

    # -- assignment ----------------------------------------------------------------------
    def take(self, chunk: int, rate: float = 0.0) -> Segment | None:
        """The next work for a connection of speed ``rate``: the first unassigned bytes
        (at most ``chunk``), else the far part of the active segment with the most time
        left. None when there is nothing to hand out."""
        with self._lock:
            if self._todo:
                start, end = self._todo[0]
                cut = min(end, start + max(1, chunk))
                if cut < end and end - cut < self.min_steal:
                    cut = end  # do not leave a sliver behind
                if cut == end:
                    self._todo.pop(0)
                else:
                    self._todo[0] = (cut, end)
                return self._new(start, cut, rate)
            victim = pick_victim(self._active.values(), margin=self.margin, min_size=self.min_steal)
            if victim is None:
                return None
            seg = victim[0]
            split = split_point(
                seg.pos,
                seg.end,
                victim_rate=seg.rate,
                thief_rate=rate,
                margin=self.margin,
                min_size=self.min_steal,
                align=self.align,
            )
            if split is None:
                return None
            stolen_end = seg.end
            seg.end = split
            self.steals += 1
            return self._new(split, stolen_end, rate)

    def _new(self, start: int, end: int, rate: float) -> Segment:
        seg = Segment(id=self._next_id, start=start, pos=start, end=end, rate=rate)
        self._next_id += 1
        self._active[seg.id] = seg
        return seg

    def advance(self, seg: Segment, n: int) -> int:
        """Record ``n`` more bytes written at ``seg.pos``; returns what is left of the
        segment (0: stop reading, the rest of the response belongs to someone else)."""
        with self._lock:
            seg.pos += n
            if seg.pos > seg.end:
                raise AssertionError(f"segment {seg.id} overran its end: {seg.pos} > {seg.end}")
            return seg.end - seg.pos

    def limit(self, seg: Segment) -> int:
        """Bytes the owner may still read (its end can shrink at any time)."""
        with self._lock:
            return seg.end - seg.pos

    def release(self, seg: Segment) -> None:
        """The owner stops (finished, failed or stolen from to nothing): the written part
        is done, the unwritten part goes back to be handed out."""
        with self._lock:
            if self._active.pop(seg.id, None) is None:
                return
            if seg.pos > seg.start:
                self._done = merge_ranges([*self._done, (seg.start, seg.pos)])
            if seg.end > seg.pos:
                self._todo = merge_ranges([*self._todo, (seg.pos, seg.end)])

    def set_rate(self, seg: Segment, rate: float) -> None:
        """Record the measured speed of a segment's connection, used to split work."""
        seg.rate = rate

    # -- views ---------------------------------------------------------------------------
    def written(self) -> list[Range]:
        """Every byte range on disk (done plus the written part of active segments)."""
        with self._lock:
            return merge_ranges([*self._done, *((s.start, s.pos) for s in self._active.values())])

    def written_bytes(self) -> int:
        """Bytes written so far: finished ranges plus the progress of active segments."""
        with self._lock:
            return sum(e - s for s, e in self._done) + sum(
                s.pos - s.start for s in self._active.values()
            )

    def prefix(self) -> int:
        """Length of the contiguous written data from offset 0."""
        return contiguous_prefix(self.written())

    def active(self) -> list[Segment]:
        """The segments being fetched now."""
        with self._lock:
            return list(self._active.values())

    def todo(self) -> list[Range]:
        """The ranges nobody fetches yet."""
        with self._lock:
            return list(self._todo)

    @property
    def complete(self) -> bool:
        """True when every byte of the file is written."""
        with self._lock:
            return not self._todo and not self._active and self._covered()

    @property
    def exhausted(self) -> bool:
        """Nothing is left to hand out (active segments may still be running)."""
        with self._lock:
            return not self._todo

    def _covered(self) -> bool:
        return self.size == 0 or self._done == [(0, self.size)]

    def check(self) -> None:
        """Assert the invariant: done, todo and active segments tile [0, size)."""
        with self._lock:
            pieces = [
                *self._done,
                *self._todo,
                *((s.start, s.end) for s in self._active.values()),
            ]
            pieces = sorted(p for p in pieces if p[1] > p[0])
            cursor = 0
            for start, end in pieces:
                if start != cursor:
                    raise AssertionError(f"pieces do not tile: {pieces}")
                cursor = end
            if cursor != self.size:
                raise AssertionError(f"pieces end at {cursor}, size is {self.size}")

"""The resume state carried by ``Checkpoint.state``: pure encode / decode / checks.

    {"format": 1, "size": 1234 | null, "validator": {"etag": ..., "last_modified": ...},
     "url": "where the validator was first seen", "done": [[start, end), ...]}

``done`` lists byte ranges (end exclusive, sorted, merged) that are on disk and flushed.
A state that does not fit the request or the ``.part`` file is rejected with a reason;
the caller then restarts from zero rather than splice unknown bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from acquired.sources.http.protocol import Validator

FORMAT = 1
Range = tuple[int, int]


@dataclass
class ResumePoint:
    """A usable resume state."""

    size: int | None
    validator: Validator
    url: str | None
    done: list[Range] = field(default_factory=list)

    @property
    def prefix(self) -> int:
        """Length of the contiguous run of done bytes from offset 0."""
        if self.done and self.done[0][0] == 0:
            return self.done[0][1]
        return 0

    @property
    def done_bytes(self) -> int:
        """Bytes already on disk, over every done range."""
        return sum(end - start for start, end in self.done)


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, non-empty, non-overlapping ranges covering the same bytes."""
    out: list[Range] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def encode(
    *,
    size: int | None,
    validator: Validator,
    url: str | None,
    done: Iterable[Range],
) -> dict[str, Any]:
    """The JSON-able state for a Checkpoint."""
    return {
        "format": FORMAT,
        "size": size,
        "validator": validator.as_state(),
        "url": url,
        "done": [[start, end] for start, end in merge_ranges(done)],
    }


def decode(
    state: Mapping[str, Any] | None,
    *,
    part_size: int | None,
    expected_size: int | None,
) -> ResumePoint | str:
    """The resume point in ``state``, or the reason it cannot be used.

    ``part_size`` is the size of the ``.part`` file (None when it does not exist);
    ``expected_size`` the size the request names, if any."""
    if not state:
        return "no resume state"
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        return "resume state has an unknown format"
    size = state.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return "resume state has an invalid size"
    if expected_size is not None and size is not None and size != expected_size:
        return f"resume state is for a file of {size} bytes, the request names {expected_size}"
    raw_done = state.get("done")
    if not isinstance(raw_done, list):
        return "resume state has no list of done ranges"
    done: list[Range] = []
    for item in raw_done:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            or not 0 <= item[0] <= item[1]
        ):
            return f"resume state has an invalid range {item!r}"
        if size is not None and item[1] > size:
            return f"resume state has a range {item!r} past the end of the file ({size})"
        done.append((item[0], item[1]))
    done = merge_ranges(done)
    if done:
        if part_size is None:
            return "the partial file is missing"
        if done[-1][1] > part_size:
            return (
                f"the partial file has {part_size} bytes but the resume state claims "
                f"data up to {done[-1][1]}"
            )
    url = state.get("url")
    return ResumePoint(
        size=size,
        validator=Validator.from_state(state.get("validator")),
        url=url if isinstance(url, str) else None,
        done=done,
    )

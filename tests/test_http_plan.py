"""Segment plans and work stealing (pure; driven directly)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acquired.sources.http.plan import (
    MiB,
    Plan,
    Segment,
    chunk_for,
    contiguous_prefix,
    gaps,
    pick_victim,
    split_point,
)


def test_gaps_and_prefix() -> None:
    assert gaps(100, []) == [(0, 100)]
    assert gaps(100, [(0, 10), (20, 30)]) == [(10, 20), (30, 100)]
    assert gaps(100, [(0, 100)]) == []
    assert gaps(100, [(90, 150)]) == [(0, 90)]
    assert contiguous_prefix([(10, 20)]) == 0
    assert contiguous_prefix([(0, 10), (10, 20), (30, 40)]) == 20


def test_chunk_for_is_bounded_and_aligned() -> None:
    assert chunk_for(None) == 4 * MiB
    assert chunk_for(1.0) == 1 * MiB
    assert chunk_for(1e12) == 16 * MiB
    assert chunk_for(10 * MiB) % (64 * 1024) == 0


def test_split_point_halves_when_speeds_are_unknown() -> None:
    split = split_point(0, 100 * MiB, victim_rate=0, thief_rate=0, margin=MiB, min_size=MiB)
    assert split is not None
    assert abs((100 * MiB - split) - (99 * MiB) / 2) <= 64 * 1024


def test_split_point_weights_by_speed() -> None:
    # A thief three times as fast as the owner takes three quarters of the rest.
    split = split_point(
        0, 100 * MiB, victim_rate=1.0, thief_rate=3.0, margin=0, min_size=MiB, align=1
    )
    assert split == 25 * MiB


def test_split_point_respects_margin_and_minimum() -> None:
    assert split_point(0, 2 * MiB, victim_rate=0, thief_rate=0, margin=MiB, min_size=MiB) is None
    split = split_point(0, 10 * MiB, victim_rate=1, thief_rate=1000, margin=MiB, min_size=MiB)
    assert split is not None and split >= MiB


def test_pick_victim_prefers_longest_time_left() -> None:
    slow = Segment(id=1, start=0, pos=0, end=10 * MiB, rate=1.0)
    fast = Segment(id=2, start=10 * MiB, pos=10 * MiB, end=40 * MiB, rate=100.0)
    victim = pick_victim([slow, fast], margin=MiB, min_size=MiB)
    assert victim is not None and victim[0] is slow
    tiny = Segment(id=3, start=0, pos=0, end=MiB, rate=0.1)
    assert pick_victim([tiny], margin=MiB, min_size=MiB) is None


def test_plan_hands_out_chunks_in_file_order() -> None:
    plan = Plan(10 * MiB, min_steal=MiB, margin=MiB)
    a = plan.take(4 * MiB)
    b = plan.take(4 * MiB)
    c = plan.take(4 * MiB)
    assert a and b and c
    assert (a.start, a.end) == (0, 4 * MiB)
    assert (b.start, b.end) == (4 * MiB, 8 * MiB)
    assert (c.start, c.end) == (8 * MiB, 10 * MiB)
    plan.check()


def test_plan_does_not_leave_slivers() -> None:
    plan = Plan(4 * MiB + 1000, min_steal=MiB, margin=MiB)
    seg = plan.take(4 * MiB)
    assert seg is not None and seg.end == 4 * MiB + 1000


def test_plan_steals_half_of_the_largest_remaining() -> None:
    plan = Plan(64 * MiB, min_steal=MiB, margin=MiB, align=1)
    a = plan.take(64 * MiB)
    assert a is not None
    plan.advance(a, 8 * MiB)
    b = plan.take(4 * MiB)
    assert b is not None
    # The owner keeps its margin; the rest is split evenly.
    assert b.end == 64 * MiB
    assert a.end == b.start
    assert abs((a.end - a.pos - MiB) - (b.end - b.start)) <= 1
    assert plan.steals == 1
    plan.check()


def test_release_keeps_written_part_and_requeues_the_rest() -> None:
    plan = Plan(10 * MiB, min_steal=MiB, margin=MiB)
    seg = plan.take(10 * MiB)
    assert seg is not None
    plan.advance(seg, 3 * MiB)
    plan.release(seg)
    assert plan.written() == [(0, 3 * MiB)]
    assert plan.todo() == [(3 * MiB, 10 * MiB)]
    again = plan.take(MiB)
    assert again is not None and again.start == 3 * MiB
    plan.check()


def test_plan_resumes_around_done_ranges() -> None:
    plan = Plan(10 * MiB, [(0, 2 * MiB), (5 * MiB, 6 * MiB)], min_steal=MiB, margin=MiB)
    assert plan.todo() == [(2 * MiB, 5 * MiB), (6 * MiB, 10 * MiB)]
    assert plan.prefix() == 2 * MiB
    assert plan.written_bytes() == 3 * MiB


def test_advance_past_end_is_a_bug() -> None:
    plan = Plan(MiB)
    seg = plan.take(MiB)
    assert seg is not None
    with pytest.raises(AssertionError):
        plan.advance(seg, MiB + 1)


def test_empty_file_plan_is_complete() -> None:
    assert Plan(0).complete


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=200 * MiB),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["take", "advance", "release"]),
            st.integers(min_value=0, max_value=50),
            st.floats(min_value=0.0, max_value=1.0),
        ),
        max_size=80,
    ),
)
def test_plan_pieces_always_tile_the_file(size: int, ops: list[tuple[str, int, float]]) -> None:
    """Whatever connections do, done + todo + active segments tile [0, size), every
    byte is assigned to at most one owner, and draining the plan completes it."""
    plan = Plan(size, min_steal=MiB, margin=MiB, align=64 * 1024)
    owned: list[Segment] = []
    for op, pick, frac in ops:
        if op == "take":
            seg = plan.take(max(1, int(frac * 32 * MiB)), rate=frac * 100)
            if seg is not None:
                owned.append(seg)
        elif owned:
            seg = owned[pick % len(owned)]
            if op == "advance":
                # A read never exceeds the margin, like the engine's reads.
                n = min(plan.limit(seg), int(frac * MiB))
                if n > 0:
                    plan.advance(seg, n)
            else:
                plan.release(seg)
                owned.remove(seg)
        plan.check()
    # Drain: every connection finishes what it holds; new ones take the rest.
    for seg in owned:
        plan.advance(seg, plan.limit(seg))
        plan.release(seg)
    while (seg := plan.take(8 * MiB)) is not None:
        plan.advance(seg, plan.limit(seg))
        plan.release(seg)
        plan.check()
    assert plan.complete
    assert plan.written() == [(0, size)]

"""Job-wide dedupe: exact sha256, multi-index-hashed phash, first kept, saved and loaded."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from acquired.sources.urllist.dedupe import DedupeIndex, PhashIndex


def flip(value: int, bits: int, rng: random.Random) -> int:
    for b in rng.sample(range(64), bits):
        value ^= 1 << b
    return value


def key(i: int) -> str:
    return f"{i:012d}"


@pytest.mark.parametrize("max_distance", [0, 2, 4, 8])
def test_mih_matches_brute_force(max_distance: int) -> None:
    rng = random.Random(max_distance)
    index = PhashIndex(max_distance)
    stored = [rng.getrandbits(64) for _ in range(3000)]
    # Clustered values too, so some buckets are big enough for the numpy path.
    stored += [flip(stored[0], rng.randrange(0, 20), rng) for _ in range(300)]
    for i, value in enumerate(stored):
        index.add(value, key(i))
    queries = [flip(rng.choice(stored), rng.randrange(0, 12), rng) for _ in range(400)]
    queries += [rng.getrandbits(64) for _ in range(100)]
    first_key = {}
    for i, value in enumerate(stored):
        first_key.setdefault(value, i)
    for q in queries:
        best = min(((v ^ q).bit_count() for v in stored), default=99)
        got = index.nearest(q)
        if best <= max_distance:
            assert got is not None and got[1] == best
            assert (stored[int(got[0])] ^ q).bit_count() == best
        else:
            assert got is None


def test_decide_first_kept_and_redo_is_not_a_duplicate() -> None:
    index = DedupeIndex(exact=True, perceptual=True, max_distance=4)
    sha_a, sha_b = "aa" * 32, "bb" * 32
    base = 0x0123456789ABCDEF
    near = base ^ 0b101  # 2 bits away
    far = base ^ 0xFFFF
    got = index.decide(
        [
            (key(1), sha_a, base),
            (key(2), sha_a, base),  # same bytes
            (key(3), sha_b, near),  # near-duplicate picture
            (key(4), "cc" * 32, far),
            (key(5), None, None),  # nothing to compare (a failed sample)
        ]
    )
    assert got == [None, key(1), key(1), None, None]
    # The same samples decided again (a shard redone): the kept ones stay kept.
    assert index.decide([(key(1), sha_a, base), (key(4), "cc" * 32, far)]) == [None, None]
    assert index.decide([(key(9), sha_a, None), (key(10), "dd" * 32, far ^ 1)]) == [
        key(1),
        key(4),
    ]


def test_exact_only_ignores_phash() -> None:
    index = DedupeIndex(exact=True, perceptual=False)
    assert index.decide([(key(1), "aa" * 32, 5), (key(2), "bb" * 32, 5)]) == [None, None]


def test_bulk_load_equals_adds() -> None:
    rng = random.Random(3)
    values = [rng.getrandbits(64) for _ in range(2000)]
    values += values[:50]  # repeats keep their first key
    one, bulk = PhashIndex(4), PhashIndex(4)
    for i, v in enumerate(values):
        one.add(v, key(i))
    bulk.add_many(np.array(values, dtype=np.uint64), np.arange(len(values)))
    bulk.add_many(np.array(values[:10], dtype=np.uint64), np.arange(10) + 10_000)
    assert len(bulk) == len(one) == 2000
    for q in [flip(v, 2, rng) for v in values[::7]]:
        assert bulk.nearest(q) == one.nearest(q)


def test_million_hashes_speed_printed() -> None:
    rng = np.random.default_rng(7)
    n = 1_000_000
    values = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    index = DedupeIndex(exact=True, perceptual=True, max_distance=4)
    started = time.perf_counter()
    index._phash.add_many(values, np.arange(n))
    built = time.perf_counter() - started
    pyrng = random.Random(7)
    picks = values[:5000].tolist()
    queries = [(key(2 * n + i), None, flip(v, 3, pyrng)) for i, v in enumerate(picks)]
    fresh = [(key(3 * n + i), None, pyrng.getrandbits(64)) for i in range(5000)]
    started = time.perf_counter()
    got = []
    for lo in range(0, len(queries), 64):  # batches as a worker sends them
        got += index.decide(queries[lo : lo + 64])
    for lo in range(0, len(fresh), 64):
        index.decide(fresh[lo : lo + 64])
    took = time.perf_counter() - started
    print(
        f"\n1M phashes bulk-loaded in {built:.1f} s; then {10_000 / took:,.0f} decisions/s "
        f"(query + insert, batches of 64) at 1M"
    )
    assert got == [key(i) for i in range(5000)]

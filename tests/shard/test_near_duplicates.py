"""The near-duplicate search against comparing every pair, and the perceptual hash on planted copies."""

import itertools
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pytest

from pipelines.config.shard import DEFAULT_NEAR_DUPLICATE_THRESHOLD
from pipelines.shard.near_duplicates import (
    BANDS,
    HashBatch,
    band_partitions,
    flip_masks,
    groups_of,
    partition_edges,
    search_radius,
    words_hashes,
)
from pipelines.shard.perceptual_hash import HASH_BITS, hamming, perceptual_hash, stored_words, to_bytes
from tests.fakes.near_duplicates import near_duplicate, varied_jpegs


def _random_hashes(rng: np.random.Generator, n: int, threshold: int) -> list[int]:
    """``n`` random hashes, a third of them copies of an earlier one with 0 to ``threshold + 3`` bits flipped (pairs
    on both sides of the threshold), some flips crowded into one band (the search's worst case)."""
    hashes: list[int] = []
    for i in range(n):
        if i >= 3 and i % 3 == 0:
            value = hashes[int(rng.integers(0, i))]
            flips = int(rng.integers(0, threshold + 4))
            if i % 2:
                bits = rng.choice(HASH_BITS, size=flips, replace=False)
            else:  # crowd the flips into as few bands as possible
                bits = np.arange(flips) + int(rng.integers(0, HASH_BITS - flips + 1))
            for bit in bits.tolist():
                value ^= 1 << int(bit)
            hashes.append(value)
        else:
            hashes.append(int.from_bytes(rng.bytes(HASH_BITS // 8), "big"))
    return hashes


def _search(batches: Iterable[HashBatch], threshold: int) -> set[tuple[str, str]]:
    """The Beam steps of the search, run in order here: band partitions, group by partition, verified edges."""
    partitions: dict[tuple[int, int, int], list] = {}
    for batch in batches:
        for key, entries in band_partitions(batch, threshold):
            partitions.setdefault(key, []).append(entries)
    return {(a[0], b[0]) for element in partitions.items() for a, b in partition_edges(element, threshold)}


def _brute_force(hashes: list[int], threshold: int, queries: set[int] | None = None) -> set[tuple[str, str]]:
    pairs = set()
    for i, j in itertools.combinations(range(len(hashes)), 2):
        if queries is not None and i not in queries and j not in queries:
            continue
        if hamming(hashes[i], hashes[j]) <= threshold:
            pairs.add((f"k{i:04d}", f"k{j:04d}"))
    return pairs


@pytest.mark.parametrize("threshold", [0, 3, 8, 15, DEFAULT_NEAR_DUPLICATE_THRESHOLD, 31])
@pytest.mark.parametrize("spread_bits", [0, 2])
def test_the_search_finds_every_pair_within_the_threshold_and_no_other(threshold: int, spread_bits: int) -> None:
    rng = np.random.default_rng(threshold * 10 + spread_bits)
    hashes = _random_hashes(rng, 300, threshold)
    samples = [(f"k{i:04d}", f"shard-{i % 4:06d}", h) for i, h in enumerate(hashes)]
    batches = [HashBatch.of(samples[i::4], spread_bits) for i in range(4)]  # as from four index files
    expected = _brute_force(hashes, threshold)
    assert len(expected) > 20, "the planted pairs put pairs within the threshold"
    assert _search(batches, threshold) == expected


@pytest.mark.parametrize("spread_bits", [0, 3])
def test_a_search_of_some_queries_finds_every_pair_that_has_a_query(spread_bits: int) -> None:
    """An append looks up its new samples and the grouped earlier ones only; pairs of two others are not wanted."""
    threshold = DEFAULT_NEAR_DUPLICATE_THRESHOLD
    rng = np.random.default_rng(5)
    hashes = _random_hashes(rng, 300, threshold)
    queries = {i for i in range(len(hashes)) if rng.random() < 0.2}
    samples = tuple((f"k{i:04d}", "shard-000000", h) for i, h in enumerate(hashes))
    batch = HashBatch.of(samples, spread_bits, [i in queries for i in range(len(hashes))])
    expected = _brute_force(hashes, threshold, queries)
    assert expected
    assert expected != _brute_force(hashes, threshold), "some pairs have no query"
    assert _search([batch], threshold) == expected


def test_hashless_samples_are_left_out_of_the_search() -> None:
    value = 0x0123456789ABCDEF0123456789ABCDEF
    batch = HashBatch.of([("a", "s", value), ("b", "s", None), ("c", "s", value ^ 1)], 0)
    assert _search([batch], 4) == {("a", "c")}


def test_the_search_radius_covers_the_threshold_by_pigeonhole() -> None:
    for threshold in range(0, 32):
        radius = search_radius(threshold)
        assert BANDS * (radius + 1) > threshold >= BANDS * radius
    assert len(flip_masks(16, 2)) == 1 + 16 + 120
    assert flip_masks(16, 2)[0] == 0


def test_groups_are_components_named_by_their_smallest_key() -> None:
    edges = [(("b", "s1"), ("c", "s1")), (("a", "s0"), ("c", "s1")), (("x", "s2"), ("y", "s2"))]
    assert groups_of(edges) == [("a", [("a", "s0"), ("b", "s1"), ("c", "s1")]), ("x", [("x", "s2"), ("y", "s2")])]


def test_planted_copies_hash_within_the_threshold_and_other_scenes_beyond_it() -> None:
    """The benchmark's planted near-duplicates (crop <= 5%, 0.5-0.9x, JPEG 60-95) on a small scale: every copy
    within the default threshold of its original, every two different scenes beyond it."""
    threshold = DEFAULT_NEAR_DUPLICATE_THRESHOLD
    originals = [perceptual_hash(data) for data in varied_jpegs(60, seed=11)]
    rng = np.random.default_rng(3)
    scenes = varied_jpegs(15, seed=11)
    copies = [perceptual_hash(near_duplicate(data, rng)) for data in scenes]
    copy_distances = [hamming(c, o) for c, o in zip(copies, originals, strict=False)]
    assert max(copy_distances) <= threshold, copy_distances
    unrelated = [hamming(a, b) for a, b in itertools.combinations(originals, 2)]
    assert min(unrelated) > threshold + 4, sorted(unrelated)[:5]


def test_stored_hashes_read_as_words_give_back_the_hashes() -> None:
    """The index's 16-byte ``phash`` column (nulls, chunks, a slice) read as two uint64 words without Python ints."""
    rng = np.random.default_rng(2)
    values = [int.from_bytes(rng.bytes(16), "big") for _ in range(7)]
    stored = [to_bytes(v) for v in values]
    stored[3] = None
    column = pa.chunked_array([pa.array(stored[:4], pa.binary(16)), pa.array(stored[4:], pa.binary(16))])
    high, low, hashed = stored_words(column)
    assert hashed.tolist() == [v is not None for v in stored]
    assert [v for v, has in zip(words_hashes(high, low), hashed.tolist(), strict=True) if has] == [
        v for v, s in zip(values, stored, strict=True) if s is not None
    ]
    high, low, hashed = stored_words(pa.array(stored, pa.binary(16)).slice(4))
    assert words_hashes(high, low) == values[4:]

"""Near-duplicate groups of a shard set: samples whose perceptual hashes differ in at most ``threshold`` bits.

No pair is compared blindly. This is multi-index hashing: the 128-bit hash is cut into 8 bands of 16 bits, and two
hashes within ``threshold`` bits differ in at most ``r = threshold // 8`` bits of at least one band (pigeonhole:
``8 * (r + 1) > threshold``). A sample's candidates are the samples whose band value is within ``r`` bits of its
own in some band, found by table lookups of its band value with every flip of at most ``r`` bits
(:func:`flip_masks`: 137 for ``r = 2``, the default threshold's); each candidate pair is verified on the whole hash.
The search finds every pair within the threshold, as comparing every pair would.

As Beam steps (see :func:`band_partitions` and :func:`partition_edges`): batches of ``(key, shard, hash)`` (one
per index file) are spread by band, and by the top ``spread_bits`` bits of the band value when the set is large,
so that a partition holds about ``1/2**spread_bits`` of the samples of one band whatever the corpus size (below
200,000 samples the bands are not split, and one partition holds them all, each sample sent once). A sample
goes to its own partition of each band (a *home*) and, as a *guest*, to the partitions reached by flipping ``k``
(1 to ``r``) of those top bits, where it is looked up with at most ``r - k`` flips of the other bits. Verified pairs
become edges, merged into groups by union-find in one combine (:class:`GroupEdgesFn`): its memory is the edges,
which near-duplicates make, not the corpus. A group's id is its smallest sample key, so groups are the same on
every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import combinations
from typing import Any

import apache_beam as beam
import numpy as np

from pipelines.shard.keys import stable_bucket
from pipelines.shard.perceptual_hash import HASH_BITS, hamming


Sample = tuple[str, str, int]  # (key, shard, hash)
Edge = tuple[tuple[str, str], tuple[str, str]]  # ((key, shard), (key, shard)), first key smaller
BANDS = 8  # the hash is searched in this many bands
BAND_BITS = HASH_BITS // BANDS  # 16: a band's value indexes a table of 65,536 entries
_WORD_BITS = 64  # the hash travels through numpy as two uint64 words, most significant first
_BANDS_PER_WORD = _WORD_BITS // BAND_BITS
ALL_BANDS = -1  # the band of a partition that holds every band (a set too small to split them: spread bits 0)
_LOOKUPS_PER_CHUNK = 1 << 20  # band lookups done at once: memory bounded by their candidates, not the partition
_SAMPLES_PER_PARTITION = 200_000  # of one band: how large a set gets before its bands are split by top bits


@dataclass(frozen=True, eq=False)
class HashBatch:
    """Live samples with a hash on their way to the near-duplicate search (one batch per index file or comparison
    partition), column by column: keys, shards, and the hashes' two 64-bit words (:func:`hash_words`);
    ``spread_bits`` sizes the search's partitions (:func:`spread_bits_for`), the same for every batch of a run.

    ``queries`` says which samples the search looks up (None: all). The others are only looked up *against*: an
    append looks up its new samples only, because two earlier samples in no common group were more than the
    threshold apart already, and those in one are checked against each other within it (:class:`KeptGroupMembers`).
    """

    keys: tuple[str, ...]
    shards: tuple[str, ...]
    high: np.ndarray  # (n,) uint64
    low: np.ndarray  # (n,) uint64
    spread_bits: int
    queries: np.ndarray | None = None  # (n,) bool

    @classmethod
    def of(
        cls, samples: Sequence[tuple[str, str, int | None]], spread_bits: int, queries: Sequence[bool] | None = None
    ) -> HashBatch:
        """The batch of ``(key, shard, hash or None)`` samples; the hashless are left out."""
        rows = [i for i, sample in enumerate(samples) if sample[2] is not None]
        high, low = hash_words([samples[i][2] or 0 for i in rows])
        return cls(
            tuple(samples[i][0] for i in rows),
            tuple(samples[i][1] for i in rows),
            high,
            low,
            spread_bits,
            None if queries is None else np.array([queries[i] for i in rows], dtype=bool),
        )


@dataclass(frozen=True)
class KeptGroupMembers:
    """``mode=append``: earlier samples kept live that the set's ``_near_duplicates.parquet`` put in a group, as
    ``(group, key, shard, hash)``, on their way to :func:`kept_group_edges` in bucket ``bucket`` (of the group)."""

    bucket: int
    members: tuple[tuple[str, str, str, int | None], ...]


def kept_group_members(
    samples: Sequence[tuple[str | None, str, str, int | None]], buckets: int
) -> Iterator[KeptGroupMembers]:
    """The grouped ones of ``(group or None, key, shard, hash)`` samples, one :class:`KeptGroupMembers` per bucket."""
    by_bucket: dict[int, list[tuple[str, str, str, int | None]]] = {}
    for group, key, shard, value in samples:
        if group is not None:
            by_bucket.setdefault(stable_bucket(group, buckets), []).append((group, key, shard, value))
    for bucket, members in sorted(by_bucket.items()):
        yield KeptGroupMembers(bucket, tuple(members))


def kept_group_edges(element: tuple[int, Iterable[KeptGroupMembers]], threshold: int) -> Iterator[Edge]:
    """Edges between the kept members of each earlier group, every pair of a group compared (groups are small).

    With the edges of the new samples' search, they are every edge of the grown set: two earlier samples within
    the threshold of each other were in one group (the groups are the components of those edges), so the kept
    members of different groups, or of none, are not within it, and a group that lost a member falls apart where
    nothing new holds it together.
    """
    _, batches = element
    groups: dict[str, list[tuple[str, str, int]]] = {}
    for batch in batches:
        for group, key, shard, value in batch.members:
            if value is not None:
                groups.setdefault(group, []).append((key, shard, value))
    for _, members in sorted(groups.items()):
        for (key_a, shard_a, a), (key_b, shard_b, b) in combinations(sorted(members), 2):
            if hamming(a, b) <= threshold:
                yield _edge((key_a, shard_a), (key_b, shard_b))


@dataclass(frozen=True, eq=False)
class BandEntries:
    """The samples of one batch sent to one partition of the search, column by column (arrays pickle in one piece).

    ``flips`` is how many top bits of the band value were flipped to land here: 0 for a sample's home partition,
    ``k`` > 0 for a guest (always a query); ``query`` whether the sample is looked up.
    """

    keys: tuple[str, ...]
    shards: tuple[str, ...]
    high: np.ndarray  # (n,) uint64, the hash's most significant 64 bits
    low: np.ndarray  # (n,) uint64
    flips: np.ndarray  # (n,) int64
    query: np.ndarray  # (n,) bool


def search_radius(threshold: int) -> int:
    """Bits ``r`` in which some band of two hashes within ``threshold`` bits of each other must agree but for."""
    return threshold // BANDS


@cache
def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set, 0 first, as int64."""
    masks = [
        sum(1 << b for b in bits) for r in range(min(radius, width) + 1) for bits in combinations(range(width), r)
    ]
    return np.array(masks, dtype=np.int64)


def band_value(value: int, band: int) -> int:
    """Band ``band`` (0: the most significant 16 bits) of a hash."""
    return (value >> (HASH_BITS - BAND_BITS * (band + 1))) & ((1 << BAND_BITS) - 1)


def hash_words(values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(high, low)`` uint64 words of each 128-bit hash."""
    low_mask = (1 << _WORD_BITS) - 1
    high = np.fromiter((v >> _WORD_BITS for v in values), dtype=np.uint64, count=len(values))
    low = np.fromiter((v & low_mask for v in values), dtype=np.uint64, count=len(values))
    return high, low


def words_hashes(high: np.ndarray, low: np.ndarray) -> list[int]:
    """The 128-bit hashes of ``(high, low)`` words (the inverse of :func:`hash_words`)."""
    return [h << _WORD_BITS | lo for h, lo in zip(high.tolist(), low.tolist(), strict=True)]


def hamming_words(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bits in which the hashes ``a[i]`` and ``b[i]`` differ, for every ``i``."""
    return np.bitwise_count(a[0] ^ b[0]).astype(np.int64) + np.bitwise_count(a[1] ^ b[1])


def _band_values(words: tuple[np.ndarray, np.ndarray], band: int) -> np.ndarray:
    word = words[band // _BANDS_PER_WORD]
    shift = _WORD_BITS - BAND_BITS * (band % _BANDS_PER_WORD + 1)
    return ((word >> np.uint64(shift)) & np.uint64((1 << BAND_BITS) - 1)).astype(np.int64)


def spread_bits_for(samples: int) -> int:
    """How many top bits of a band value split it into partitions, for a set of about ``samples`` samples."""
    return min(BAND_BITS, max(0, math.ceil(math.log2(max(1, samples) / _SAMPLES_PER_PARTITION))))


def band_partitions(batch: HashBatch, threshold: int) -> Iterator[tuple[tuple[int, int, int], BandEntries]]:
    """``((band, top bits, spread bits), entries)`` for a batch of samples (hashless ones are left out): every sample
    at its home partition of every band, and every query also as a guest where ``k`` <= ``r`` of its top bits flipped
    land."""
    spread_bits = batch.spread_bits
    if not batch.keys:
        return
    keys, shards, words = batch.keys, batch.shards, (batch.high, batch.low)
    query = np.ones(len(keys), dtype=bool) if batch.queries is None else batch.queries
    if spread_bits == 0:  # one partition a band: all bands in one element, so the samples travel once, not 8 times
        yield (
            (ALL_BANDS, 0, 0),
            BandEntries(keys, shards, words[0], words[1], np.zeros(len(keys), dtype=np.int64), query),
        )
        return
    top_masks = flip_masks(spread_bits, search_radius(threshold))[1:]
    for band in range(BANDS):
        top = _band_values(words, band) >> (BAND_BITS - spread_bits)
        parts: dict[int, list[tuple[np.ndarray, int]]] = {}
        for value in np.unique(top).tolist():
            parts.setdefault(value, []).append((np.flatnonzero(top == value), 0))
        queried = np.flatnonzero(query)
        for mask in top_masks.tolist():
            landed = top[queried] ^ mask
            for value in np.unique(landed).tolist():
                parts.setdefault(value, []).append((queried[landed == value], mask.bit_count()))
        for value, pieces in sorted(parts.items()):
            index = np.concatenate([idx for idx, _ in pieces])
            yield (
                (band, value, spread_bits),
                BandEntries(
                    keys=tuple(keys[i] for i in index.tolist()),
                    shards=tuple(shards[i] for i in index.tolist()),
                    high=words[0][index],
                    low=words[1][index],
                    flips=np.concatenate([np.full(len(idx), flips, dtype=np.int64) for idx, flips in pieces]),
                    query=query[index],
                ),
            )


def partition_edges(element: tuple[tuple[int, int, int], Iterable[BandEntries]], threshold: int) -> Iterator[Edge]:
    """Verified near-duplicate edges of one partition (one band, or all bands when they are not split, and one range
    of band values) that have a query at one end at least."""
    (band, _, spread_bits), pieces = element
    pieces = list(pieces)
    keys = [k for p in pieces for k in p.keys]
    shards = [s for p in pieces for s in p.shards]
    words = (np.concatenate([p.high for p in pieces]), np.concatenate([p.low for p in pieces]))
    flips = np.concatenate([p.flips for p in pieces])
    query = np.concatenate([p.query for p in pieces])
    bands = range(BANDS) if band == ALL_BANDS else (band,)
    pairs = {pair for b in bands for pair in _band_pairs(b, spread_bits, words, flips, query, threshold)}
    for i, j in sorted(pairs):
        yield _edge((keys[i], shards[i]), (keys[j], shards[j]))


def _band_pairs(
    band: int,
    spread_bits: int,
    words: tuple[np.ndarray, np.ndarray],
    flips: np.ndarray,
    query: np.ndarray,
    threshold: int,
) -> Iterator[tuple[int, int]]:
    """``(query, home)`` index pairs within ``threshold`` bits found through band ``band`` (see the module doc)."""
    radius = search_radius(threshold)
    low_bits = BAND_BITS - spread_bits
    values = _band_values(words, band) & ((1 << low_bits) - 1)  # the top bits are the partition's
    homes = np.flatnonzero(flips == 0)
    if not len(homes):
        return
    order = homes[np.argsort(values[homes], kind="stable")]
    starts = np.searchsorted(values[order], np.arange((1 << low_bits) + 1))  # value v's homes: order[starts[v]:...]
    for hops in range(radius + 1):  # home queries (hops 0) with r flips; guests of k top flips with r - k
        masks = flip_masks(low_bits, radius - hops)
        asking = np.flatnonzero((flips == hops) & query)
        step = max(1, _LOOKUPS_PER_CHUNK // len(masks))
        for chunk in range(0, len(asking), step):  # bounded memory
            ask = asking[chunk : chunk + step]
            a, b = _lookup(starts, order, (values[ask][:, None] ^ masks[None, :]).ravel())  # every query, every flip
            a = ask[a // len(masks)]
            once = (a != b) & (~query[b] | (flips[a] != 0) | (a < b))  # two home queries find each other twice
            a, b = a[once], b[once]
            near = hamming_words((words[0][a], words[1][a]), (words[0][b], words[1][b])) <= threshold
            yield from zip(a[near].tolist(), b[near].tolist(), strict=True)


def _lookup(starts: np.ndarray, order: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(query index, home)`` whose low band values are equal (runs of equal values expanded); ``order`` holds
    the homes sorted by value, ``starts[v]`` where value ``v`` begins in it."""
    left = starts[queries]
    counts = starts[queries + 1] - left
    a = np.repeat(np.arange(len(queries)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    b = order[np.repeat(left, counts) + offsets]
    return a, b


def _edge(a: tuple[str, str], b: tuple[str, str]) -> Edge:
    return (a, b) if a[0] < b[0] else (b, a)


class GroupEdgesFn(beam.CombineFn):  # type: ignore[misc]
    """Edges -> groups: ``[(group id, [(key, shard), ...]), ...]`` sorted, each group's members sorted by key.

    The accumulator is the set of distinct edges (a pair found in several bands counts once); union-find runs once,
    in :meth:`extract_output`.
    """

    def create_accumulator(self) -> set[Edge]:
        return set()

    def add_input(self, acc: set[Edge], edge: Edge) -> set[Edge]:
        acc.add(edge)
        return acc

    def merge_accumulators(self, accumulators: Iterable[set[Edge]]) -> set[Edge]:
        merged: set[Edge] = set()
        for acc in accumulators:
            merged |= acc
        return merged

    def extract_output(self, acc: set[Edge]) -> list[tuple[str, list[tuple[str, str]]]]:
        return groups_of(acc)


def groups_of(edges: Iterable[Edge]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Connected components of ``edges`` (union-find), each named by its smallest key."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smaller key roots the merged group
    members: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in list(parent):
        members.setdefault(find(node), []).append(node)
    return sorted((root[0], sorted(group)) for root, group in members.items())


def group_rows(groups: list[tuple[str, list[tuple[str, str]]]]) -> list[dict[str, Any]]:
    """Rows of ``_near_duplicates.parquet`` (schema ``schemas.NEAR_DUPLICATES_SCHEMA``), by group then key."""
    return [
        {"key": key, "shard": shard, "group": group, "group_size": len(members)}
        for group, members in groups
        for key, shard in members
    ]

"""Near-duplicate groups of a shard set: samples whose perceptual hashes differ in at most ``threshold`` bits.

No pair is compared blindly. This is multi-index hashing: the 64-bit hash is cut into ``m = threshold // 2 + 1``
bands, so two hashes within ``threshold`` bits differ in at most one bit of at least one band (pigeonhole:
``threshold < 2m``). A sample's candidates are then the samples whose band value equals its own or differs from it
in one bit, found by sorted search per band; each candidate pair is verified on the whole hash.

As Beam steps (see :func:`band_partitions` and :func:`partition_edges`): batches of ``(key, shard, hash)`` (one
per index file) are spread by band, and by the top ``spread_bits`` bits of the band value when the set is large,
so that a partition holds about ``1/2**spread_bits`` of the samples of one band whatever the corpus size. A sample
goes to its own partition of each band (a *home*) and, as a *guest*, to the partitions reached by flipping one of
those top bits, where it is looked up exactly. Verified pairs become edges, merged into groups by union-find in one
combine (:class:`GroupEdgesFn`): its memory is the edges, which near-duplicates make, not the corpus. A group's id
is its smallest sample key, so groups are the same on every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np

from pipelines.shard.perceptual_hash import HASH_BITS


Sample = tuple[str, str, int]  # (key, shard, hash)
Edge = tuple[tuple[str, str], tuple[str, str]]  # ((key, shard), (key, shard)), first key smaller
_SAMPLES_PER_PARTITION = 200_000  # of one band: how large a set gets before its bands are split by top bits


@dataclass(frozen=True)
class HashBatch:
    """Live samples ``(key, shard, perceptual hash)`` on their way to the near-duplicate search (one per index file
    or comparison partition); ``spread_bits`` sizes the search's partitions (:func:`spread_bits_for`), the same for
    every batch of a run."""

    samples: tuple[tuple[str, str, int | None], ...]
    spread_bits: int


def band_layout(threshold: int) -> tuple[tuple[int, int], ...]:
    """``(shift, width)`` of each band of the hash, most significant first, for a distance ``threshold``."""
    bands = threshold // 2 + 1
    widths = [HASH_BITS // bands + (1 if i < HASH_BITS % bands else 0) for i in range(bands)]
    layout, shift = [], HASH_BITS
    for width in widths:
        shift -= width
        layout.append((shift, width))
    return tuple(layout)


def spread_bits_for(samples: int) -> int:
    """How many top bits of a band value split it into partitions, for a set of about ``samples`` samples."""
    return max(0, math.ceil(math.log2(max(1, samples) / _SAMPLES_PER_PARTITION)))


def band_partitions(
    batch: HashBatch, threshold: int
) -> Iterator[tuple[tuple[int, int, int], list[tuple[bool, str, str, int]]]]:
    """``((band, top bits, spread bits), [(home, key, shard, hash), ...])`` for a batch of samples (hashless ones
    are left out). A guest entry (``home`` False) goes where one of its top bits flipped lands."""
    spread_bits = batch.spread_bits
    parts: dict[tuple[int, int, int], list[tuple[bool, str, str, int]]] = {}
    for band, (shift, width) in enumerate(band_layout(threshold)):
        top_bits = min(spread_bits, width)
        for key, shard, value in batch.samples:
            if value is None:
                continue
            top = ((value >> shift) & ((1 << width) - 1)) >> (width - top_bits)
            parts.setdefault((band, top, spread_bits), []).append((True, key, shard, value))
            for bit in range(top_bits):
                parts.setdefault((band, top ^ (1 << bit), spread_bits), []).append((False, key, shard, value))
    yield from parts.items()


def partition_edges(
    element: tuple[tuple[int, int, int], Iterable[list[tuple[bool, str, str, int]]]], threshold: int
) -> Iterator[Edge]:
    """Verified near-duplicate edges of one partition (one band, one value range)."""
    (band, top, spread_bits), lists = element
    shift, width = band_layout(threshold)[band]
    top_bits = min(spread_bits, width)
    homes: dict[str, tuple[str, int]] = {}
    guests: dict[str, tuple[str, int]] = {}
    for entries in lists:
        for home, key, shard, value in entries:
            (homes if home else guests)[key] = (shard, value)
    if not homes:
        return
    keys = sorted(homes)
    hashes = np.array([homes[k][1] for k in keys], dtype=np.uint64)
    mask = np.uint64((1 << width) - 1)
    values = (hashes >> np.uint64(shift)) & mask
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    pairs = [_matches(sorted_values, order, values)]
    for bit in range(width - top_bits):  # flips of the low bits stay in this partition
        pairs.append(_matches(sorted_values, order, values ^ np.uint64(1 << bit)))
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    keep = np.bitwise_count(hashes[a] ^ hashes[b]) <= threshold
    for i, j in zip(a[keep].tolist(), b[keep].tolist(), strict=True):
        yield _edge((keys[i], homes[keys[i]][0]), (keys[j], homes[keys[j]][0]))
    if guests:  # a guest's band value differs from this partition's in one top bit: look its flipped value up exactly
        guest_keys = sorted(guests)
        guest_hashes = np.array([guests[k][1] for k in guest_keys], dtype=np.uint64)
        guest_values = (guest_hashes >> np.uint64(shift)) & mask
        high = np.uint64(((1 << top_bits) - 1) << (width - top_bits))
        flipped = (guest_values & ~high) | (np.uint64(top << (width - top_bits)) & high)
        g, h = _lookup(sorted_values, order, flipped)
        keep = np.bitwise_count(guest_hashes[g] ^ hashes[h]) <= threshold
        for i, j in zip(g[keep].tolist(), h[keep].tolist(), strict=True):
            yield _edge((guest_keys[i], guests[guest_keys[i]][0]), (keys[j], homes[keys[j]][0]))


def _lookup(sorted_values: np.ndarray, order: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(query index, home index)`` whose values are equal (vectorised: runs of equal values expanded)."""
    left = np.searchsorted(sorted_values, queries, side="left")
    right = np.searchsorted(sorted_values, queries, side="right")
    counts = right - left
    a = np.repeat(np.arange(len(queries)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    b = order[np.repeat(left, counts) + offsets]
    return a, b


def _matches(sorted_values: np.ndarray, order: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Home pairs ``(i, j)``, ``i < j``, where ``queries[i]`` (a home's band value, or it with one bit flipped) is home
    ``j``'s band value."""
    a, b = _lookup(sorted_values, order, queries)
    keep = a < b  # each unordered pair once (a flip is symmetric; equal values meet twice)
    return a[keep], b[keep]


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

"""Label statistics merged over shards, and the label set's ``_stats.json``: the merge of every shard's statistics.

A shard's statistics (`pipelines.common.label_stats`) live in its marker. Merging them is adding counts, so the
merge of a whole output has a bounded size (fixed bins, a bounded gallery sample) whatever the number of shards.
The last step of ``dpmesh-label`` and ``dpmesh-refilter`` (`pipelines.common.label_summary`) writes that merge as
``<output>/_stats.json``, so a reader (``dpmesh-report``) reads one object of bounded size instead of every marker::

    {"version": 2, "covers": {shard: stamp}, "stats": MergedStats.to_json()}

``covers`` names the shards merged, each with a stamp of the marker it was read from (:func:`marker_stamp`). A
merge cannot be undone, so the file is carried forward only while every covered shard is still committed with the
same marker and none was committed again: a run that redoes a covered shard (``overwrite=true``) writes a merge of its
own shards only, and a reader computes what a merge does not cover (or no longer matches) shard by shard.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
import numpy as np

from pipelines.common.label_set import index_entry
from pipelines.common.label_stats import (
    GALLERY_POOL,
    HISTOGRAMS,
    REVIEW_POOL,
    STATS_VERSION,
    StatsError,
    dense_counts,
)
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)

STATS_FILE = "_stats.json"


@dataclasses.dataclass
class MergedStats:
    """The statistics of many shards merged (:meth:`add` one shard's, in any order: the result is the same).

    Attributes:
        shards: Shards merged.
        rows / reasons / errors / gallery_left_out: Counts as in the per-shard format, summed.
        hist: ``{column: {tier: (count + 2,) int64}}``, the first and last slots below and above the edges.
        nulls / levels: Summed.
        pool: ``{tier: [(priority, shard, folder, row, sample_id), ...]}``, the :data:`GALLERY_POOL` lowest.
        strata: Rows by review stratum, summed.
        review_pool: ``{stratum: [(priority, shard, folder, row, sample_id), ...]}``, the :data:`REVIEW_POOL`
            lowest.
    """

    shards: int = 0
    rows: Counter[str] = dataclasses.field(default_factory=Counter)
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    gallery_left_out: Counter[str] = dataclasses.field(default_factory=Counter)
    hist: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    nulls: dict[str, Counter[str]] = dataclasses.field(default_factory=dict)
    levels: dict[str, dict[str, Counter[str]]] = dataclasses.field(default_factory=dict)
    pool: dict[str, list[tuple[int, str, str, int, str]]] = dataclasses.field(default_factory=dict)
    strata: Counter[str] = dataclasses.field(default_factory=Counter)
    review_pool: dict[str, list[tuple[int, str, str, int, str]]] = dataclasses.field(default_factory=dict)

    def add(self, shard: str, stats: Mapping[str, Any]) -> None:
        """Merges one shard's statistics (the format above).

        Raises:
            StatsError: another version, or a column this code has no bins for.
        """
        if stats.get("version") != STATS_VERSION:
            raise StatsError(f"statistics of {shard}: version {stats.get('version')!r}, not {STATS_VERSION}")
        try:
            self.shards += 1
            self.rows.update(stats["rows"])
            self.reasons.update(stats["reasons"])
            self.errors.update(stats["errors"])
            self.gallery_left_out.update(stats["gallery_left_out"])
            for name, by_tier in stats["hist"].items():
                spec = HISTOGRAMS[name]
                for tier, sparse in by_tier.items():
                    column = self.hist.setdefault(name, {})
                    dense = column.get(tier)
                    column[tier] = dense_counts(sparse, spec.count) + (0 if dense is None else dense)
            for name, by_tier in stats["nulls"].items():
                self.nulls.setdefault(name, Counter()).update(by_tier)
            for name, by_tier in stats["levels"].items():
                for tier, counts in by_tier.items():
                    self.levels.setdefault(name, {}).setdefault(tier, Counter()).update(counts)
            for tier, entries in stats["pool"].items():
                merged = self.pool.get(tier, []) + [(int(p), shard, str(f), int(r), str(s)) for p, f, r, s in entries]
                self.pool[tier] = sorted(merged)[:GALLERY_POOL]
            self.strata.update(stats["strata"])
            for stratum, entries in stats["review_pool"].items():
                found = [(int(p), shard, str(f), int(r), str(s)) for p, f, r, s in entries]
                self.review_pool[stratum] = sorted(self.review_pool.get(stratum, []) + found)[:REVIEW_POOL]
        except (KeyError, TypeError, ValueError) as exc:
            raise StatsError(f"statistics of {shard} are not in the version {STATS_VERSION} format: {exc}") from exc

    def quantiles(self, column: str, qs: Iterable[float]) -> np.ndarray:
        """Quantiles (``qs`` in 0..1) of ``column`` over every tier, read from its histogram by linear interpolation
        inside a bin: within one bin (:meth:`Bins.width`) of the exact value for values inside the edges."""
        spec = HISTOGRAMS[column]
        dense = sum(self.hist.get(column, {}).values(), np.zeros(spec.count + 2, np.int64))
        edges = spec.edges()
        total = dense.sum()
        if not total:
            return np.full(len(list(qs)), np.nan)
        cumulative = np.cumsum(dense)
        out = []
        for q in qs:
            target = q * total
            slot = int(np.searchsorted(cumulative, target, side="left"))
            if slot == 0:
                out.append(edges[0])
                continue
            if slot >= spec.count + 1:
                out.append(edges[-1])
                continue
            low, high = edges[slot - 1], edges[slot]
            before = cumulative[slot - 1]
            inside = dense[slot]
            fraction = (target - before) / inside if inside else 0.0
            out.append(low + (high - low) * fraction)
        return np.asarray(out, dtype=np.float64)

    def merge(self, other: MergedStats) -> MergedStats:
        """This and ``other`` merged (both are left as they were)."""
        merged = copy.deepcopy(self)
        merged.update(other)
        return merged

    def update(self, other: MergedStats) -> None:
        """Merges ``other`` into this one, in place (``other`` is left as it was)."""
        merged = self
        merged.shards += other.shards
        for name in ("rows", "reasons", "errors", "gallery_left_out", "strata"):
            getattr(merged, name).update(getattr(other, name))
        for name, by_tier in other.hist.items():
            for tier, dense in by_tier.items():
                column = merged.hist.setdefault(name, {})
                column[tier] = dense + column.get(tier, 0)
        for name, counts in other.nulls.items():
            merged.nulls.setdefault(name, Counter()).update(counts)
        for name, by_tier in other.levels.items():
            for tier, counts in by_tier.items():
                merged.levels.setdefault(name, {}).setdefault(tier, Counter()).update(counts)
        for tier, entries in other.pool.items():
            merged.pool[tier] = sorted(merged.pool.get(tier, []) + entries)[:GALLERY_POOL]
        for stratum, entries in other.review_pool.items():
            merged.review_pool[stratum] = sorted(merged.review_pool.get(stratum, []) + entries)[:REVIEW_POOL]

    def to_json(self) -> dict[str, Any]:
        """The merged statistics as JSON values: the per-shard format plus ``shards``, pool entries with their
        shard (``[priority, shard, folder, row, sample_id]``)."""
        return {
            "version": STATS_VERSION,
            "shards": self.shards,
            "rows": dict(sorted(self.rows.items())),
            "reasons": dict(sorted(self.reasons.items())),
            "errors": dict(sorted(self.errors.items())),
            "gallery_left_out": dict(sorted(self.gallery_left_out.items())),
            "hist": {
                name: {tier: [[i - 1, int(n)] for i, n in enumerate(dense) if n] for tier, dense in sorted(t.items())}
                for name, t in sorted(self.hist.items())
            },
            "nulls": {name: dict(sorted(c.items())) for name, c in sorted(self.nulls.items())},
            "levels": {
                name: {tier: dict(sorted(c.items())) for tier, c in sorted(t.items())}
                for name, t in sorted(self.levels.items())
            },
            "pool": {tier: [list(e) for e in entries] for tier, entries in sorted(self.pool.items())},
            "strata": dict(sorted(self.strata.items())),
            "review_pool": {s: [list(e) for e in entries] for s, entries in sorted(self.review_pool.items())},
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> MergedStats:
        """Reads :meth:`to_json`'s document.

        Raises:
            StatsError: another version or shape.
        """
        if document.get("version") != STATS_VERSION:
            raise StatsError(f"merged statistics of version {document.get('version')!r}, not {STATS_VERSION}")
        try:
            merged = cls(
                shards=int(document["shards"]),
                rows=Counter(document["rows"]),
                reasons=Counter(document["reasons"]),
                errors=Counter(document["errors"]),
                gallery_left_out=Counter(document["gallery_left_out"]),
                nulls={name: Counter(c) for name, c in document["nulls"].items()},
                levels={name: {tier: Counter(c) for tier, c in t.items()} for name, t in document["levels"].items()},
                pool={
                    tier: [(int(p), str(s), str(f), int(r), str(i)) for p, s, f, r, i in entries]
                    for tier, entries in document["pool"].items()
                },
                strata=Counter(document["strata"]),
                review_pool={
                    stratum: [(int(p), str(s), str(f), int(r), str(i)) for p, s, f, r, i in entries]
                    for stratum, entries in document["review_pool"].items()
                },
            )
            merged.hist = {
                name: {tier: dense_counts(sparse, HISTOGRAMS[name].count) for tier, sparse in t.items()}
                for name, t in document["hist"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise StatsError(f"merged statistics are not in the version {STATS_VERSION} format: {exc}") from exc
        return merged

    @property
    def n_rows(self) -> int:
        """Accepted plus rejected rows."""
        return sum(self.rows.values())


def marker_stamp(marker: Mapping[str, Any]) -> str:
    """A short digest of a marker's indexed fields: what a merge records of each shard it covers (a marker written
    again, by another run or config, has another stamp)."""
    entry = {k: v for k, v in index_entry(dict(marker)).items() if k != "stats"}
    return hashlib.sha1(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass
class StatsFile:
    """``_stats.json``: ``stats`` merged over the shards of ``covers`` (``{shard: marker stamp}``)."""

    covers: dict[str, str]
    stats: MergedStats

    def to_bytes(self) -> bytes:
        document = {
            "version": STATS_VERSION,
            "covers": dict(sorted(self.covers.items())),
            "stats": self.stats.to_json(),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def read_stats_file(storage: Storage, output: str) -> StatsFile | None:
    """``<output>/_stats.json``, or None when there is none or it is not in this version's format (logged: it is a
    cache of the markers' statistics, which readers can merge again)."""
    uri = join(output, STATS_FILE)
    try:
        document = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
    except ValueError:
        document = None
    try:
        if not isinstance(document, dict) or document.get("version") != STATS_VERSION:
            raise StatsError(f"version {document.get('version') if isinstance(document, dict) else None!r}")
        covers = document["covers"]
        if not isinstance(covers, dict) or not all(isinstance(v, str) for v in covers.values()):
            raise StatsError("covers is not {shard: stamp}")
        return StatsFile(dict(covers), MergedStats.from_json(document["stats"]))
    except (StatsError, KeyError, TypeError) as exc:
        logger.warning("%s is not a statistics file of this version (%s): the markers' statistics are used", uri, exc)
        return None


def still_valid(previous: StatsFile | None, markers: Mapping[str, Mapping[str, Any]], redone: set[str]) -> bool:
    """Whether ``previous`` may be carried forward: every shard it covers is still committed with the marker it was
    merged from (``markers``: indexed marker fields by shard), and none of them is in ``redone``."""
    if previous is None:
        return False
    return all(
        shard not in redone and shard in markers and marker_stamp(markers[shard]) == stamp
        for shard, stamp in previous.covers.items()
    )


@dataclasses.dataclass(frozen=True)
class ShardStats:
    """One shard's statistics (the per-shard format of `pipelines.common.label_stats`) on their way to a merge.

    A record, not a ``(shard, stats)`` tuple: some runners (Beam's DaskRunner) take a two-element tuple in a
    global combine for a key and a value.
    """

    shard: str
    stats: dict[str, Any]


class MergeStatsFn(beam.CombineFn):  # type: ignore[misc]
    """Merges :class:`ShardStats` into one :class:`MergedStats` (order-free: the same result in any order).
    Beam merges partial accumulators where they are made, so no worker holds more than a merge."""

    def create_accumulator(self) -> MergedStats:
        return MergedStats()

    def add_input(self, accumulator: MergedStats, element: ShardStats) -> MergedStats:
        accumulator.add(element.shard, element.stats)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[MergedStats]) -> MergedStats:
        merged = MergedStats()
        for accumulator in accumulators:
            merged.update(accumulator)  # in place: no copy of the merge per accumulator
        return merged

    def extract_output(self, accumulator: MergedStats) -> MergedStats:
        return accumulator

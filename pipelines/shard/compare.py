"""``mode=append``: the listing against what the set holds, so that only new and changed files are sharded.

What the set holds is read once from its index files (key, size, sha1, source, perceptual hash of every live
sample; :func:`held_partitions`, one :class:`HeldSamples` batch per shard and partition), never looked up per file.
Both sides meet by key partition (a stable digest of the key, :func:`partition_of`) in one shuffle, the listing in
batches too (:class:`~pipelines.shard.plan.PlannedBatch`, one per listing task and partition) unless annotations or
``shard.drop_duplicates`` need its files one by one first: the comparison moves a few elements per partition, not
one per file. :class:`CompareFn` sorts each partition's keys into:

* **unchanged**: listed, held, same size (and with ``input.compare=sha1`` the same sha1): nothing is written; the
  held sample stays live;
* **new**: listed, not held (never sharded, or only reported as an error before): sharded in this generation;
* **changed**: listed and held with other bytes: sharded in this generation, and the held sample is retired as
  ``superseded``;
* **gone**: held, not listed: retired as ``removed`` with ``input.record_removals=true``, else kept live.

Its one output mixes the files to shard (:class:`~pipelines.shard.plan.PlannedFile`), the live samples kept
(:class:`HashBatch`, searched against for the near-duplicate groups; :class:`KeptGroupMembers`, the kept members of
the set's groups, checked again within their group) and
:class:`~pipelines.shard.finish.ManifestRecord` reports (counts, retired rows).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq

from pipelines.common.metrics import SHARD_METRICS, counter
from pipelines.config import CompareMode, InputConfig
from pipelines.config.storage import StorageConfig
from pipelines.shard.finish import COMPARE_KIND, RETIRED_KIND, ManifestRecord
from pipelines.shard.generations import HeldShard
from pipelines.shard.keys import stable_bucket
from pipelines.shard.near_duplicates import HashBatch, kept_group_members
from pipelines.shard.perceptual_hash import from_stored
from pipelines.shard.plan import PlannedBatch, PlannedFile
from pipelines.storage import Storage, TransientStorageError, join


_HELD_COLUMNS = ["key", "bytes", "sha1", "source_uri", "phash"]
SUPERSEDED, REMOVED = "superseded", "removed"


@dataclass(frozen=True)
class HeldSamples:
    """Live samples of one earlier shard in one comparison partition, column by column as its index file holds them
    (sizes in bytes, hex sha1s, perceptual hashes or None); ``groups`` the group the set's ``_near_duplicates.parquet``
    puts each in (None: in none); ``regroup``: the set's groups are not built on, every sample is looked up again."""

    shard: str
    keys: tuple[str, ...]
    sizes: tuple[int, ...]
    sha1s: tuple[str, ...]
    source_uris: tuple[str, ...]
    hashes: tuple[int | None, ...]
    groups: tuple[str | None, ...]
    regroup: bool


def _held_key(sample: tuple[HeldSamples, int]) -> str:
    return sample[0].keys[sample[1]]


def partition_of(key: str, partitions: int) -> int:
    """The comparison partition of a sample key."""
    return stable_bucket(key, partitions)


def held_partitions(
    held: HeldShard, storage_cfg: StorageConfig, output: str, partitions: int
) -> Iterator[tuple[int, HeldSamples]]:
    """``(partition, samples)`` of one held shard's live samples, read from its index file."""
    data = Storage(storage_cfg).read_bytes(join(output, f"{held.shard}.parquet"))
    table = pq.read_table(io.BytesIO(data), columns=_HELD_COLUMNS)
    columns = [table.column(c).to_pylist() for c in _HELD_COLUMNS]
    by_partition: dict[int, list[int]] = {}
    for i, key in enumerate(columns[0]):
        if key not in held.retired:
            by_partition.setdefault(partition_of(key, partitions), []).append(i)
    keys, sizes, sha1s, sources, hashes = columns
    for partition, rows in sorted(by_partition.items()):
        yield (
            partition,
            HeldSamples(
                shard=held.shard,
                keys=tuple(keys[i] for i in rows),
                sizes=tuple(sizes[i] for i in rows),
                sha1s=tuple(sha1s[i] for i in rows),
                source_uris=tuple(sources[i] for i in rows),
                hashes=tuple(from_stored(hashes[i]) for i in rows),
                groups=tuple(held.groups.get(keys[i]) for i in rows),
                regroup=held.regroup,
            ),
        )


class CompareFn(beam.DoFn):
    """Input: ``(partition, [PlannedFile | PlannedBatch | HeldSamples, ...])``; see the module doc for what it
    yields."""

    def __init__(
        self, storage_cfg: StorageConfig, input_cfg: InputConfig, generation: int, spread_bits: int, buckets: int
    ) -> None:
        self._storage_cfg = storage_cfg
        self._buckets = buckets
        self._input_cfg = input_cfg
        self._generation = generation
        self._spread_bits = spread_bits
        self._new = counter(SHARD_METRICS, "files_new")
        self._changed = counter(SHARD_METRICS, "files_changed")
        self._unchanged = counter(SHARD_METRICS, "files_unchanged")

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)

    def process(self, element: tuple[int, Iterable[Any]]) -> Iterator[Any]:
        _, values = element
        held: dict[str, tuple[HeldSamples, int]] = {}
        batches: list[PlannedBatch] = []
        singles: dict[str, PlannedFile] = {}  # files that came one by one (annotated): sharded with their persons
        for value in values:
            if isinstance(value, PlannedFile):
                singles[value.key] = value
            elif isinstance(value, PlannedBatch):
                batches.append(value)
            else:
                held.update(zip(value.keys, ((value, i) for i in range(len(value.keys))), strict=True))
        if singles:
            batches.append(PlannedBatch.of(-1, [(f.key, f.source) for f in singles.values()]))
        counts = {"unchanged": 0, "new": 0, "changed": 0, "removed": 0, "absent_kept": 0}
        superseded: list[tuple[HeldSamples, int]] = []
        kept: list[tuple[HeldSamples, int]] = []
        to_shard: list[PlannedFile] = []
        listed: set[str] = set()
        for batch in batches:
            listed.update(batch.keys)
            for j, key in enumerate(batch.keys):
                sample = held.get(key)
                if sample is None:
                    counts["new"] += 1
                    to_shard.append(singles.get(key) or batch.file(j))
                elif self._unchanged_file(batch.sizes[j], batch.problems[j], batch.uris[j], *sample):
                    counts["unchanged"] += 1
                    kept.append(sample)
                else:
                    counts["changed"] += 1
                    superseded.append(sample)
                    to_shard.append(singles.get(key) or batch.file(j))
        self._new.inc(counts["new"])
        self._changed.inc(counts["changed"])
        self._unchanged.inc(counts["unchanged"])
        yield from sorted(to_shard, key=lambda f: f.key)
        retired = [self._retired(*sample, SUPERSEDED) for sample in sorted(superseded, key=_held_key)]
        for key in sorted(held.keys() - listed):
            if self._input_cfg.record_removals:
                counts["removed"] += 1
                retired.append(self._retired(*held[key], REMOVED))
            else:
                counts["absent_kept"] += 1
                kept.append(held[key])
        yield ManifestRecord(COMPARE_KIND, counts)
        if retired:
            yield ManifestRecord(RETIRED_KIND, retired)
        if kept:
            samples = tuple((batch.keys[i], batch.shard, batch.hashes[i]) for batch, i in kept)
            yield HashBatch(samples, self._spread_bits, tuple(batch.regroup for batch, _ in kept))
            yield from kept_group_members(
                [(batch.groups[i], *sample) for (batch, i), sample in zip(kept, samples, strict=True)], self._buckets
            )

    def _unchanged_file(
        self, size: int | None, problem: tuple[str, str] | None, uri: str, held: HeldSamples, i: int
    ) -> bool:
        """Whether a listed file (its listed size, listing problem and uri) holds the bytes of held sample ``i``."""
        if problem is not None or size != held.sizes[i]:
            return False
        if self._input_cfg.compare != CompareMode.sha1:
            return True
        try:
            data = self._storage.read_bytes(uri)
        except TransientStorageError:
            raise  # the store is failing, not the file: the runner retries the work item
        except OSError:
            return False  # sharded again, where the read failure becomes its error row
        return hashlib.sha1(data).hexdigest() == held.sha1s[i]

    def _retired(self, held: HeldSamples, i: int, reason: str) -> dict[str, Any]:
        return {
            "key": held.keys[i],
            "shard": held.shard,
            "sha1": held.sha1s[i],
            "source_uri": held.source_uris[i],
            "generation": self._generation,
            "reason": reason,
        }

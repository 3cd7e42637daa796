"""``mode=append``: the listing against what the set holds, so that only new and changed files are sharded.

What the set holds is read once from its index files (key, size, sha1, source, perceptual hash of every live
sample; :func:`held_partitions`, one element per shard), never looked up per file. Both sides meet by key partition
(a stable digest of the key, :func:`partition_of`) in one shuffle, and :class:`CompareFn` sorts each partition's
keys into:

* **unchanged**: listed, held, same size (and with ``input.compare=sha1`` the same sha1): nothing is written; the
  held sample stays live;
* **new**: listed, not held (never sharded, or only reported as an error before): sharded in this generation;
* **changed**: listed and held with other bytes: sharded in this generation, and the held sample is retired as
  ``superseded``;
* **gone**: held, not listed: retired as ``removed`` with ``input.record_removals=true``, else kept live.

Its one output mixes the files to shard (:class:`~pipelines.shard.plan.PlannedFile`), the live samples kept
(:class:`HashBatch`, for the near-duplicate groups) and :class:`~pipelines.shard.finish.ManifestRecord` reports
(counts, retired rows).
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
from pipelines.shard.near_duplicates import HashBatch
from pipelines.shard.plan import PlannedFile
from pipelines.storage import Storage, TransientStorageError, join


_HELD_COLUMNS = ["key", "bytes", "sha1", "source_uri", "phash"]
SUPERSEDED, REMOVED = "superseded", "removed"


@dataclass(frozen=True)
class HeldSample:
    """A live sample of an earlier generation, as its index row records it (size in bytes, hex sha1)."""

    key: str
    shard: str
    size: int
    sha1: str
    source_uri: str
    phash: int | None


def partition_of(key: str, partitions: int) -> int:
    """The comparison partition of a sample key."""
    return stable_bucket(key, partitions)


def held_partitions(
    held: HeldShard, storage_cfg: StorageConfig, output: str, partitions: int
) -> Iterator[tuple[int, list[HeldSample]]]:
    """``(partition, samples)`` of one held shard's live samples, read from its index file."""
    data = Storage(storage_cfg).read_bytes(join(output, f"{held.shard}.parquet"))
    table = pq.read_table(io.BytesIO(data), columns=_HELD_COLUMNS)
    by_partition: dict[int, list[HeldSample]] = {}
    for key, size, sha1, source, phash in zip(*(table.column(c).to_pylist() for c in _HELD_COLUMNS), strict=True):
        if key not in held.retired:
            sample = HeldSample(key, held.shard, size, sha1, source, phash)
            by_partition.setdefault(partition_of(key, partitions), []).append(sample)
    yield from sorted(by_partition.items())


class CompareFn(beam.DoFn):
    """Input: ``(partition, [PlannedFile | list[HeldSample], ...])``; see the module doc for what it yields."""

    def __init__(self, storage_cfg: StorageConfig, input_cfg: InputConfig, generation: int, spread_bits: int) -> None:
        self._storage_cfg = storage_cfg
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
        held: dict[str, HeldSample] = {}
        listed: list[PlannedFile] = []
        for value in values:
            if isinstance(value, PlannedFile):
                listed.append(value)
            else:
                held.update((s.key, s) for s in value)
        counts = {"unchanged": 0, "new": 0, "changed": 0, "removed": 0, "absent_kept": 0}
        retired: list[dict[str, Any]] = []
        kept: list[tuple[str, str, int | None]] = []
        seen: set[str] = set()
        for planned in sorted(listed, key=lambda f: f.key):
            seen.add(planned.key)
            sample = held.get(planned.key)
            if sample is None:
                counts["new"] += 1
                self._new.inc()
                yield planned
            elif self._unchanged_file(planned, sample):
                counts["unchanged"] += 1
                self._unchanged.inc()
                kept.append((sample.key, sample.shard, sample.phash))
            else:
                counts["changed"] += 1
                self._changed.inc()
                retired.append(self._retired(sample, SUPERSEDED))
                yield planned
        for key in sorted(set(held) - seen):
            sample = held[key]
            if self._input_cfg.record_removals:
                counts["removed"] += 1
                retired.append(self._retired(sample, REMOVED))
            else:
                counts["absent_kept"] += 1
                kept.append((sample.key, sample.shard, sample.phash))
        yield ManifestRecord(COMPARE_KIND, counts)
        if retired:
            yield ManifestRecord(RETIRED_KIND, retired)
        if kept:
            yield HashBatch(tuple(kept), self._spread_bits)

    def _unchanged_file(self, planned: PlannedFile, sample: HeldSample) -> bool:
        source = planned.source
        if source.problem is not None or source.size != sample.size:
            return False
        if self._input_cfg.compare != CompareMode.sha1:
            return True
        try:
            data = self._storage.read_bytes(source.uri)
        except TransientStorageError:
            raise  # the store is failing, not the file: the runner retries the work item
        except OSError:
            return False  # sharded again, where the read failure becomes its error row
        return hashlib.sha1(data).hexdigest() == sample.sha1

    def _retired(self, sample: HeldSample, reason: str) -> dict[str, Any]:
        return {
            "key": sample.key,
            "shard": sample.shard,
            "sha1": sample.sha1,
            "source_uri": sample.source_uri,
            "generation": self._generation,
            "reason": reason,
        }

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
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq

from pipelines.common.metrics import SHARD_METRICS, counter
from pipelines.config import CompareMode, InputConfig
from pipelines.config.storage import StorageConfig
from pipelines.shard.finish import COMPARE_KIND, RETIRED_KIND, ManifestRecord
from pipelines.shard.generations import HeldShard
from pipelines.shard.near_duplicates import HashBatch, kept_group_members, words_hashes
from pipelines.shard.perceptual_hash import stored_words
from pipelines.shard.plan import PlannedBatch, PlannedFile
from pipelines.storage import Storage, TransientStorageError, join


SUPERSEDED, REMOVED = "superseded", "removed"


@dataclass(frozen=True, eq=False)
class HeldSamples:
    """Live samples of one earlier shard in one comparison partition, column by column as its index file holds them:
    sizes in bytes, perceptual hashes as two 64-bit words and whether each has one, and hex sha1s when the comparison
    needs them (``input.compare=sha1``; else empty). What only retired samples need (their sha1 and source) is read
    again for them alone."""

    shard: str
    keys: tuple[str, ...]
    sizes: tuple[int, ...]
    high: np.ndarray  # (n,) uint64
    low: np.ndarray  # (n,) uint64
    hashed: np.ndarray  # (n,) bool
    sha1s: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupedKeys:
    """Keys of one comparison partition that the set's ``_near_duplicates.parquet`` puts in a group, with the group."""

    keys: tuple[str, ...]
    groups: tuple[str, ...]


def partition_of(key: str, partitions: int) -> int:
    """The comparison partition of a sample key: a CRC-32 of it, the same on every machine and run (a key already
    ends in a digest of its path, so a checksum spreads keys evenly; it is computed for every listed and held file)."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % partitions


def held_partitions(
    held: HeldShard, storage_cfg: StorageConfig, output: str, partitions: int, with_sha1: bool
) -> Iterator[tuple[int, HeldSamples]]:
    """``(partition, samples)`` of one held shard's live samples, read from its index file."""
    columns = ["key", "bytes", *(["sha1"] if with_sha1 else [])]
    data = Storage(storage_cfg).read_bytes(join(output, f"{held.shard}.parquet"))
    table = pq.read_table(io.BytesIO(data), columns=[*columns, "phash"])
    keys, sizes, *sha1s = (table.column(c).to_pylist() for c in columns)
    high, low, hashed = stored_words(table.column("phash"))
    by_partition: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        if key not in held.retired:
            by_partition.setdefault(partition_of(key, partitions), []).append(i)
    for partition, rows in sorted(by_partition.items()):
        yield (
            partition,
            HeldSamples(
                shard=held.shard,
                keys=tuple(keys[i] for i in rows),
                sizes=tuple(sizes[i] for i in rows),
                high=high[rows],
                low=low[rows],
                hashed=hashed[rows],
                sha1s=tuple(sha1s[0][i] for i in rows) if sha1s else (),
            ),
        )


def group_partitions(
    name: str, storage_cfg: StorageConfig, output: str, partitions: int
) -> Iterator[tuple[int, GroupedKeys]]:
    """``(partition, grouped keys)`` of the set's near-duplicate groups (its file ``name``, read once)."""
    data = Storage(storage_cfg).read_bytes(join(output, name))
    table = pq.read_table(io.BytesIO(data), columns=["key", "group"])
    by_partition: dict[int, tuple[list[str], list[str]]] = {}
    for key, group in zip(table.column("key").to_pylist(), table.column("group").to_pylist(), strict=True):
        keys, groups = by_partition.setdefault(partition_of(key, partitions), ([], []))
        keys.append(key)
        groups.append(group)
    for partition, (keys, groups) in sorted(by_partition.items()):
        yield partition, GroupedKeys(tuple(keys), tuple(groups))


def set_partitions(
    source: HeldShard | str, storage_cfg: StorageConfig, output: str, partitions: int, with_sha1: bool
) -> Iterator[tuple[int, HeldSamples | GroupedKeys]]:
    """What the comparison reads of the set, by partition: a held shard's live samples (:func:`held_partitions`), or,
    for the name of its groups file, the grouped keys (:func:`group_partitions`). One step reads both, so an append
    adds as few stages as it can to a run."""
    if isinstance(source, HeldShard):
        yield from held_partitions(source, storage_cfg, output, partitions, with_sha1)
    else:
        yield from group_partitions(source, storage_cfg, output, partitions)


class CompareFn(beam.DoFn):
    """Input: ``(partition, [PlannedFile | PlannedBatch | HeldSamples | GroupedKeys, ...])``; see the module doc for
    what it yields. ``regroup``: the set's groups are not built on, every kept sample is searched again."""

    def __init__(
        self,
        storage_cfg: StorageConfig,
        output: str,
        input_cfg: InputConfig,
        generation: int,
        spread_bits: int,
        buckets: int,
        regroup: bool,
    ) -> None:
        self._storage_cfg = storage_cfg
        self._output = output
        self._buckets = buckets
        self._regroup = regroup
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
        held = _HeldColumns()
        group_of: dict[str, str] = {}
        batches: list[PlannedBatch] = []
        singles: dict[str, PlannedFile] = {}  # files that came one by one (annotated): sharded with their persons
        for value in values:
            if isinstance(value, PlannedFile):
                singles[value.key] = value
            elif isinstance(value, PlannedBatch):
                batches.append(value)
            elif isinstance(value, GroupedKeys):
                group_of.update(zip(value.keys, value.groups, strict=True))
            else:
                held.add(value)
        if singles:
            batches.append(PlannedBatch.of(-1, [(f.key, f.source) for f in singles.values()]))
        position = {key: i for i, key in enumerate(held.keys)}
        counts = {"unchanged": 0, "new": 0, "changed": 0, "removed": 0, "absent_kept": 0}
        kept: list[int] = []
        superseded: list[int] = []
        to_shard: list[PlannedFile] = []
        listed: set[str] = set()
        for batch in batches:
            listed.update(batch.keys)
            for j, key in enumerate(batch.keys):
                i = position.get(key)
                if i is None:
                    counts["new"] += 1
                    to_shard.append(singles.get(key) or batch.file(j))
                elif self._unchanged_file(batch, j, held, i):
                    counts["unchanged"] += 1
                    kept.append(i)
                else:
                    counts["changed"] += 1
                    superseded.append(i)
                    to_shard.append(singles.get(key) or batch.file(j))
        self._new.inc(counts["new"])
        self._changed.inc(counts["changed"])
        self._unchanged.inc(counts["unchanged"])
        yield from sorted(to_shard, key=lambda f: f.key)
        gone = [position[key] for key in sorted(position.keys() - listed)]
        if self._input_cfg.record_removals:
            counts["removed"] = len(gone)
        else:
            counts["absent_kept"] = len(gone)
            kept += gone
        yield ManifestRecord(COMPARE_KIND, counts)
        retiring = [(i, SUPERSEDED) for i in sorted(superseded, key=held.keys.__getitem__)]
        retiring += [(i, REMOVED) for i in gone] if self._input_cfg.record_removals else []
        if retiring:
            yield ManifestRecord(RETIRED_KIND, self._retired_rows(held, retiring))
        if kept:
            yield held.hash_batch(kept, self._spread_bits, self._regroup)
            if not self._regroup:
                yield from kept_group_members(held.grouped(kept, group_of), self._buckets)

    def _unchanged_file(self, batch: PlannedBatch, j: int, held: _HeldColumns, i: int) -> bool:
        """Whether listed file ``j`` of ``batch`` holds the bytes of held sample ``i``."""
        if batch.problems[j] is not None or batch.sizes[j] != held.sizes[i]:
            return False
        if self._input_cfg.compare != CompareMode.sha1:
            return True
        try:
            data = self._storage.read_bytes(batch.uri(j))
        except TransientStorageError:
            raise  # the store is failing, not the file: the runner retries the work item
        except OSError:
            return False  # sharded again, where the read failure becomes its error row
        return hashlib.sha1(data).hexdigest() == held.sha1s[i]

    def _retired_rows(self, held: _HeldColumns, retiring: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """The retired-file rows of ``(held sample, reason)``: sha1 and source read again from their shards' index
        files (only those shards, once each)."""
        rows_of: dict[str, dict[str, tuple[str, str]]] = {}
        for shard in sorted({held.shards[i] for i, _ in retiring}):
            table = pq.read_table(
                io.BytesIO(self._storage.read_bytes(join(self._output, f"{shard}.parquet"))),
                columns=["key", "sha1", "source_uri"],
            )
            columns = (table.column(c).to_pylist() for c in ("key", "sha1", "source_uri"))
            rows_of[shard] = {key: (sha1, source) for key, sha1, source in zip(*columns, strict=True)}
        rows = []
        for i, reason in retiring:
            key, shard = held.keys[i], held.shards[i]
            sha1, source = rows_of[shard][key]
            row = {"key": key, "shard": shard, "sha1": sha1, "source_uri": source, "generation": self._generation}
            rows.append({**row, "reason": reason})
        return rows


class _HeldColumns:
    """The held samples of one comparison partition, column by column over all its shards."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.shards: list[str] = []
        self.sizes: list[int] = []
        self.sha1s: list[str] = []
        self._words: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, samples: HeldSamples) -> None:
        self.keys += samples.keys
        self.shards += [samples.shard] * len(samples.keys)
        self.sizes += samples.sizes
        self.sha1s += samples.sha1s
        self._words.append((samples.high, samples.low, samples.hashed))

    def _columns(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(high, low, hashed)`` of the samples at ``rows``."""
        if len(self._words) != 1:  # joined once, then reused by every later call
            self._words = [tuple(np.concatenate([w[c] for w in self._words]) for c in range(3))]  # type: ignore[misc]
        picked = np.asarray(rows, dtype=np.int64)
        high, low, hashed = self._words[0]
        return high[picked], low[picked], hashed[picked]

    def hash_batch(self, rows: list[int], spread_bits: int, queries: bool) -> HashBatch:
        """The samples at ``rows`` that have a hash, for the near-duplicate search (all queries, or none)."""
        high, low, hashed = self._columns(rows)
        with_hash = [i for i, has in zip(rows, hashed.tolist(), strict=True) if has]
        return HashBatch(
            tuple(self.keys[i] for i in with_hash),
            tuple(self.shards[i] for i in with_hash),
            high[hashed],
            low[hashed],
            spread_bits,
            np.full(len(with_hash), queries),
        )

    def grouped(self, rows: list[int], group_of: dict[str, str]) -> list[tuple[str | None, str, str, int | None]]:
        """``(group, key, shard, hash)`` of the samples at ``rows`` that ``group_of`` puts in a group."""
        in_group = [i for i in rows if self.keys[i] in group_of]
        high, low, hashed = self._columns(in_group)
        values = [v if has else None for v, has in zip(words_hashes(high, low), hashed.tolist(), strict=True)]
        keys = [self.keys[i] for i in in_group]
        shards = [self.shards[i] for i in in_group]
        return [(group_of[k], k, s, v) for k, s, v in zip(keys, shards, values, strict=True)]

"""The last steps of ``dpmesh-shard``: duplicates from the index files, then ``_errors.parquet`` and
``_manifest.json``, written after every shard.

The manifest is the shard set's table of contents and its completion marker: it lists every shard with its
sample count and tar digest, and reconciles the input count against what was sharded and what was reported.

Nothing here holds the corpus: per shard, one small :class:`~pipelines.shard.write.ShardDone` record travels
to the manifest step; the error rows stay in the shards' markers and are streamed from there into
``_errors.parquet``; duplicate groups are found by a shuffle on the index files' sha1 column and reach the
manifest as one combined record with at most ``MAX_LISTED_GROUPS`` groups. Every record travels in the one
main output of its step (no tagged outputs, no side inputs): Beam's DaskRunner mixes tagged outputs into the
main output and recomputes a side input's whole upstream for every consumer.
"""

import io
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq

from pipelines.common.shard_set import MANIFEST_NAME, NEAR_DUPLICATES_NAME, generation_file
from pipelines.config.shard import DEFAULT_NEAR_DUPLICATE_THRESHOLD
from pipelines.config.storage import StorageConfig
from pipelines.parquet_io import parquet_bytes, read_parquet_bytes
from pipelines.shard.generations import SetState
from pipelines.shard.near_duplicates import HashBatch, group_rows, spread_bits_for
from pipelines.shard.perceptual_hash import HASH_NAME, stored_words
from pipelines.shard.write import MARKERS_FOLDER, ShardDone, marker_uri
from pipelines.storage import Storage, join
from schemas import (
    ERROR_SCHEMA,
    NEAR_DUPLICATES_SCHEMA,
    SCHEMA_VERSION,
    SHARD_RETIRED_SCHEMA,
    ErrorReason,
    table_from_rows,
    with_file_metadata,
)


logger = logging.getLogger(__name__)

ERRORS_NAME = "_errors.parquet"
MAX_LISTED_GROUPS = 10_000
_ERROR_ROWS_PER_GROUP = 65_536
_SHARDS_PER_PARTITION = 8  # rows per Parquet row group of _errors.parquet, as parquet_bytes writes them

__all__ = ["ERRORS_NAME", "MANIFEST_NAME", "ManifestRecord"]


@dataclass(frozen=True)
class ManifestRecord:
    """One fact for the manifest: ``kind`` is one of the ``*_KIND`` names below, ``value`` its payload."""

    kind: str
    value: Any


SHARD_KIND = "shard"  # a finished shard (ShardDone)
JOIN_KIND = "join"  # {"name", "status", "images"}: an annotation name that matched no or several images
FILES_LISTED_KIND = "files_listed"  # how many entries one listing task gave (int; summed)
BUCKETS_KIND = "buckets"  # the planned bucket count (int)
DUPLICATES_KIND = "duplicates"  # the combined duplicate report (see DuplicateGroupsFn)
COMPARE_KIND = "compare"  # mode=append: one comparison partition's counts (dict of ints; summed)
RETIRED_KIND = "retired"  # mode=append: rows of samples retired in one comparison partition (SHARD_RETIRED_SCHEMA)
NEAR_DUPLICATES_KIND = "near_duplicates"  # the near-duplicate groups of the live set (GroupEdgesFn's output)


@dataclass(frozen=True)
class RunContext:
    """What the manifest step knows from the launch: the set it grows, the near-duplicate threshold (bits) and
    the benchmark overlap guard's summary (None without one)."""

    state: SetState
    threshold: int
    benchmark: dict[str, Any] | None = None


def index_sha1s(
    done: ShardDone, storage_cfg: StorageConfig, output: str
) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """``(partition, [(sha1, key), ...])`` of the samples of a finished shard, read from its index file.

    Samples are spread over ``ceil(buckets / 8)`` partitions by sha1, so that one partition holds the sha1s of
    about 8 shards whatever the corpus size (bounded memory where the partition is searched), and a small
    corpus crosses the shuffle as a few lists rather than an element per image.
    """
    if not done.samples:
        return
    table = read_parquet_bytes(Storage(storage_cfg).read_bytes(join(output, f"{done.shard}.parquet")))
    partitions = max(1, math.ceil(done.buckets / _SHARDS_PER_PARTITION))
    by_partition: dict[int, list[tuple[str, str]]] = {}
    for sha1, key in zip(table.column("sha1").to_pylist(), table.column("key").to_pylist(), strict=True):
        by_partition.setdefault(int(sha1[:8], 16) % partitions, []).append((sha1, key))
    yield from sorted(by_partition.items())


def index_hashes(
    done: ShardDone, storage_cfg: StorageConfig, output: str, spread_bits: int | None, samples_per_bucket: float
) -> Iterator[HashBatch]:
    """The keys and perceptual hashes of a finished shard's samples that have one, from its index file, for the
    near-duplicate search. ``spread_bits`` None: sized from the plan's bucket count (a new set)."""
    if not done.samples:
        return
    data = Storage(storage_cfg).read_bytes(join(output, f"{done.shard}.parquet"))
    table = pq.read_table(io.BytesIO(data), columns=["key", "phash"])
    high, low, hashed = stored_words(table.column("phash"))
    keys = tuple(key for key, has in zip(table.column("key").to_pylist(), hashed.tolist(), strict=True) if has)
    spread = spread_bits_for(int(done.buckets * samples_per_bucket)) if spread_bits is None else spread_bits
    yield HashBatch(keys, (done.shard,) * len(keys), high[hashed], low[hashed], spread)


def repeated_sha1s(element: tuple[int, Iterable[list[tuple[str, str]]]]) -> Iterator[tuple[str, list[str]]]:
    """``(sha1, keys)`` of every sha1 that more than one sample of a partition holds."""
    _, lists = element
    keys_by_sha1: dict[str, list[str]] = {}
    for pairs in lists:
        for sha1, key in pairs:
            keys_by_sha1.setdefault(sha1, []).append(key)
    for sha1, keys in keys_by_sha1.items():
        if len(keys) > 1:
            yield sha1, sorted(keys)


class DuplicateGroupsFn(beam.CombineFn):  # type: ignore[misc]
    """Combines ``(sha1, keys)`` groups of byte-identical files into ``{"groups", "files", "listed"}``: counts of
    every group, and the ``MAX_LISTED_GROUPS`` groups with the smallest first keys (so memory stays bounded)."""

    def create_accumulator(self) -> tuple[int, int, list[dict[str, Any]]]:
        return 0, 0, []

    def add_input(self, acc: Any, group: tuple[str, Iterable[str]]) -> Any:
        sha1, keys = group
        listed = sorted(keys)
        return self.merge_accumulators([acc, (1, len(listed) - 1, [{"sha1": sha1, "keys": listed}])])

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        groups = files = 0
        listed: list[dict[str, Any]] = []
        for g, f, items in accumulators:
            groups, files = groups + g, files + f
            listed.extend(items)
        listed.sort(key=lambda item: item["keys"][0])
        return groups, files, listed[:MAX_LISTED_GROUPS]

    def extract_output(self, acc: Any) -> dict[str, Any]:
        groups, files, listed = acc
        return {"groups": groups, "files": files, "listed": listed}


def manifest_inputs(records: Iterable[ManifestRecord]) -> dict[str, Any]:
    """Sorts the records by kind into the keyword arguments of :func:`build_manifest` (less ``run_info``)."""
    inputs: dict[str, Any] = {"shards": [], "join_report": [], "files_listed": 0, "buckets": 1}
    inputs["duplicates"] = {"groups": 0, "files": 0, "listed": []}
    inputs["compare"] = {}
    inputs["retired"] = []
    inputs["near_duplicates"] = []
    for record in records:
        if record.kind == SHARD_KIND:
            inputs["shards"].append(record.value)
        elif record.kind == JOIN_KIND:
            inputs["join_report"].append(record.value)
        elif record.kind == FILES_LISTED_KIND:
            inputs["files_listed"] += record.value
        elif record.kind == BUCKETS_KIND:
            inputs["buckets"] = record.value
        elif record.kind == DUPLICATES_KIND:
            inputs["duplicates"] = record.value
        elif record.kind == COMPARE_KIND:
            for name, value in record.value.items():
                inputs["compare"][name] = inputs["compare"].get(name, 0) + value
        elif record.kind == RETIRED_KIND:
            inputs["retired"].extend(record.value)
        elif record.kind == NEAR_DUPLICATES_KIND:
            inputs["near_duplicates"] = record.value
        else:
            raise ValueError(f"unknown manifest record kind {record.kind!r}")
    return inputs


def build_manifest(
    *,
    shards: list[ShardDone],
    duplicates: dict[str, Any],
    join_report: list[dict[str, Any]],
    files_listed: int,
    buckets: int,
    run_info: dict[str, Any],
    compare: dict[str, int] | None = None,
    retired: list[dict[str, Any]] | None = None,
    near_duplicates: list[tuple[str, list[tuple[str, str]]]] | None = None,
    context: RunContext | None = None,
) -> dict[str, Any]:
    """The manifest document (deterministic: no timestamps, everything sorted).

    ``counts`` are this run's (this generation's); ``generations`` lists every generation with its own counts and
    files; ``shards`` every shard of every generation; ``live`` the set's live samples after this run.
    """
    context = context or RunContext(SetState(), DEFAULT_NEAR_DUPLICATE_THRESHOLD)
    compare, retired, near_duplicates = compare or {}, retired or [], near_duplicates or []
    state = context.state
    done = sorted(shards, key=lambda d: d.shard)
    summaries = [{**d.summary, "generation": state.generation} for d in done if d.summary is not None]
    sharded = sum(d.samples for d in done)
    file_errors = sum(d.file_errors for d in done)
    planned = sum(d.files for d in done)
    by_reason: Counter[str] = Counter()
    for d in done:
        by_reason.update(d.errors_by_reason)
    counts: dict[str, Any] = {
        "files_in": files_listed,
        "images_sharded": sharded,
        "files_errored": file_errors,
        "errors_by_reason": dict(sorted(by_reason.items())),
        "benchmark_overlap": by_reason.get(ErrorReason.BENCHMARK_OVERLAP.value, 0),
        "annotation_problems": sum(d.errors - d.file_errors for d in done),
        "images_annotated": sum(s["annotated"] for s in summaries),
        "persons": sum(s["persons"] for s in summaries),
        "duplicate_groups": duplicates["groups"],
        "duplicate_files": duplicates["files"],
        "annotation_names_unmatched": sum(1 for r in join_report if r["status"] == "unmatched"),
        "annotation_names_ambiguous": sum(1 for r in join_report if r["status"] == "ambiguous"),
        "shards": len(summaries),
        "image_bytes": sum(s["image_bytes"] for s in summaries),
    }
    written = sharded + file_errors == planned
    if state.appending:
        sorted_out = {k: compare.get(k, 0) for k in ("unchanged", "new", "changed", "removed", "absent_kept")}
        counts.update(sorted_out)
        held = sorted_out["unchanged"] + sorted_out["changed"] + sorted_out["removed"] + sorted_out["absent_kept"]
        listed = sorted_out["unchanged"] + sorted_out["new"] + sorted_out["changed"]
        counts["reconciled"] = (
            written
            and files_listed == listed
            and planned == sorted_out["new"] + sorted_out["changed"]
            and held == state.live_before
        )
    else:
        counts["reconciled"] = written and files_listed == planned
    reasons = Counter(r["reason"] for r in retired)
    ids = [d.shard_id for d in done]
    generation = {
        "generation": state.generation,
        "mode": "append" if state.appending else "create",
        "config_hash": run_info.get("config_hash"),
        "first_shard": state.first_shard,
        "end_shard": max(ids) + 1 if ids else state.first_shard,
        "shards": [s["shard"] for s in summaries],
        "counts": counts,
        "errors_file": errors_file_of(state.generation),
        "retired_file": generation_file(state.generation, "retired.parquet") if retired else None,
        "retired": {"superseded": reasons.get("superseded", 0), "removed": reasons.get("removed", 0)},
    }
    previous = state.previous or {}
    earlier = list(previous.get("generations") or []) if state.appending else []
    if state.appending and not earlier:  # a set made before generations existed: its one generation, implicit
        earlier = [{"generation": 0, "mode": "create", "shards": [s["shard"] for s in previous.get("shards", [])]}]
    in_groups = sum(len(members) for _, members in near_duplicates)
    return {
        **run_info,
        "schema_version": SCHEMA_VERSION,
        "num_buckets": buckets,
        "counts": counts,
        "shards": sorted([*previous.get("shards", []), *summaries], key=lambda s: s["shard"]),
        "errors_file": ERRORS_NAME,
        "duplicates": duplicates["listed"],
        "annotation_join": sorted(join_report, key=lambda r: r["name"])[:MAX_LISTED_GROUPS],
        "generations": [*earlier, generation],
        "live": {"samples": state.live_before - len(retired) + sharded},
        "near_duplicates": {
            "file": NEAR_DUPLICATES_NAME,
            "hash": HASH_NAME,
            "threshold": context.threshold,
            "groups": len(near_duplicates),
            "samples": in_groups,
        },
        "exclude": context.benchmark,
    }


def errors_file_of(generation: int) -> str:
    """Where a generation's error rows go: ``_errors.parquet`` for the first (as before generations existed)."""
    return ERRORS_NAME if generation == 0 else generation_file(generation, "errors.parquet")


class WriteManifestFn(beam.DoFn):
    """Input: the list of every :class:`ManifestRecord` of the run, so it runs once, after every shard is written.

    Writes ``_errors.parquet`` (the shards' error rows, shard by shard, streamed from their markers) and then
    ``_manifest.json``; yields the manifest.
    """

    def __init__(self, storage_cfg: StorageConfig, output: str, run_info: dict[str, Any], context: RunContext) -> None:
        self._storage_cfg = storage_cfg
        self._output = output
        self._run_info = run_info
        self._context = context

    def process(self, records: list[ManifestRecord]) -> Iterator[dict[str, Any]]:
        storage = Storage(self._storage_cfg)
        inputs = manifest_inputs(records)
        state = self._context.state
        if state.appending and not any(d.samples for d in inputs["shards"]) and not inputs["retired"]:
            # Nothing sharded, nothing retired: files reported before (corrupt, benchmark copies) are reported again
            # each time they are listed, which is no reason for a generation. Their markers go, so the next append
            # plans from the same numbers.
            logger.info(
                "dpmesh-shard: nothing new, changed or removed; the set keeps its %d generations", state.generation
            )
            self._remove_unplanned(storage, set(), state.first_shard)
            yield state.previous
            return
        # Resumed shards count as this run's (same plan, same bytes), so the manifest equals an uninterrupted run's;
        # how many were resumed is logged, not recorded.
        resumed = sum(1 for d in inputs["shards"] if d.resumed)
        if resumed:
            logger.info("dpmesh-shard: %d shards were finished by an earlier run and kept", resumed)
        manifest = build_manifest(run_info=self._run_info, context=self._context, **inputs)
        self._remove_unplanned(storage, {d.shard for d in inputs["shards"]}, state.first_shard)
        schema = with_file_metadata(ERROR_SCHEMA, **self._file_metadata())
        with_errors = sorted(d.shard for d in inputs["shards"] if d.errors)
        errors_uri = join(self._output, errors_file_of(state.generation))
        storage.write_bytes(errors_uri, self._errors_file(storage, with_errors, schema))
        retired_file = manifest["generations"][-1]["retired_file"]
        if retired_file:
            rows = sorted(inputs["retired"], key=lambda r: (r["shard"], r["key"]))
            retired_schema = with_file_metadata(SHARD_RETIRED_SCHEMA, **self._file_metadata())
            storage.write_bytes(join(self._output, retired_file), parquet_bytes(table_from_rows(rows, retired_schema)))
        groups_schema = with_file_metadata(NEAR_DUPLICATES_SCHEMA, **self._file_metadata())
        groups = table_from_rows(group_rows(inputs["near_duplicates"]), groups_schema)
        storage.write_bytes(join(self._output, NEAR_DUPLICATES_NAME), parquet_bytes(groups))
        document = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        storage.write_bytes(join(self._output, MANIFEST_NAME), document)
        yield manifest

    def _file_metadata(self) -> dict[str, str]:
        return {k: self._run_info[k] for k in ("pipeline_version", "config_hash")}

    def _remove_unplanned(self, storage: Storage, planned: set[str], first_shard: int) -> None:
        """Delete the shards an earlier, killed run wrote under a plan this run no longer has (the corpus changed
        in between): left there, a reader globbing ``shard-*.tar`` would take them for part of this set. Only
        numbers from ``first_shard`` on are this run's: earlier generations' shards are never touched."""
        for marker in list(storage.list(join(self._output, MARKERS_FOLDER))):
            name = marker.uri.rsplit("/", 1)[-1].removesuffix(".json")
            number = name.rsplit("-", 1)[-1]
            if not number.isdigit() or int(number) < first_shard:
                continue
            if marker.uri.endswith(".json") and name not in planned:
                logger.info("dpmesh-shard: removing %s, left by an earlier run under another plan", name)
                for uri in (join(self._output, f"{name}.tar"), join(self._output, f"{name}.parquet"), marker.uri):
                    storage.delete(uri)

    def _errors_file(self, storage: Storage, shards: list[str], schema: Any) -> bytes:
        """The error rows of ``shards``, read marker by marker, written in row groups (bounded memory)."""
        if not shards:
            return parquet_bytes(table_from_rows([], schema))
        buffer = io.BytesIO()
        pending: list[dict[str, Any]] = []
        with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
            for shard in shards:
                pending.extend(json.loads(storage.read_bytes(marker_uri(self._output, shard)))["errors"])
                while len(pending) >= _ERROR_ROWS_PER_GROUP:
                    writer.write_table(table_from_rows(pending[:_ERROR_ROWS_PER_GROUP], schema))
                    del pending[:_ERROR_ROWS_PER_GROUP]
            if pending:
                writer.write_table(table_from_rows(pending, schema))
        return buffer.getvalue()

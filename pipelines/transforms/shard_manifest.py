"""The last step of ``dpmesh-shard``: the errors table and ``_manifest.json``, written after every shard.

The manifest is the shard set's table of contents and its completion marker: it lists every
shard with its sample count and tar digest, and reconciles the input count against what was
sharded and what was reported.

The steps before it report to it with :class:`ManifestRecord` elements in their one main output, next
to the samples they pass on, rather than through tagged outputs and side inputs: Beam's DaskRunner
(2.77) mixes tagged outputs into the main output and recomputes a side input's whole upstream for
every consumer, which would redo the shard writes. The records of every step are flattened and
collected into one list, the single input of :class:`WriteManifestFn`.
"""

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from pipelines.config.storage import StorageConfig
from pipelines.error_rows import error_sort_key
from pipelines.parquet_io import parquet_bytes
from pipelines.storage import Storage, join
from schemas import ERROR_SCHEMA, SCHEMA_VERSION, ErrorStage, table_from_rows, with_file_metadata


MANIFEST_NAME = "_manifest.json"
ERRORS_NAME = "_errors.parquet"
# Errors at these stages mean an input file was not sharded; annotation problems are about persons.
_FILE_STAGES = {
    ErrorStage.SHARD_READ.value,
    ErrorStage.SHARD_DECODE.value,
    ErrorStage.SHARD_DEDUP.value,
    ErrorStage.SHARD_WRITE.value,
}
_MAX_LISTED_DUPLICATE_GROUPS = 10_000


@dataclass(frozen=True)
class ManifestRecord:
    """One fact for the manifest: ``kind`` is one of the ``*_KIND`` names below, ``value`` its payload."""

    kind: str
    value: Any


ERROR_KIND = "error"  # an errors-table row (dict)
DUPLICATE_GROUP_KIND = "duplicate_group"  # {"sha1", "keys"} of byte-identical files
JOIN_KIND = "join"  # {"name", "status", "images"}: an annotation name that matched no or several images
SUMMARY_KIND = "summary"  # one written shard (dict)
FILES_LISTED_KIND = "files_listed"  # how many files the listing gave (int; summed)
BUCKETS_KIND = "buckets"  # the planned bucket count (int)
# Kinds collected into a list, by the build_manifest argument they fill.
_LIST_KINDS = {
    SUMMARY_KIND: "summaries",
    ERROR_KIND: "errors",
    DUPLICATE_GROUP_KIND: "duplicate_groups",
    JOIN_KIND: "join_report",
}


def manifest_inputs(records: Iterable[ManifestRecord]) -> dict[str, Any]:
    """Sorts the records by kind into the keyword arguments of :func:`build_manifest` (less ``run_info``)."""
    inputs: dict[str, Any] = {name: [] for name in _LIST_KINDS.values()}
    inputs["files_listed"] = 0
    inputs["buckets"] = 1  # what an empty corpus plans (num_buckets of nothing): no bucket record then
    for record in records:
        if record.kind in _LIST_KINDS:
            inputs[_LIST_KINDS[record.kind]].append(record.value)
        elif record.kind == FILES_LISTED_KIND:
            inputs["files_listed"] += record.value
        elif record.kind == BUCKETS_KIND:
            inputs["buckets"] = record.value
        else:
            raise ValueError(f"unknown manifest record kind {record.kind!r}")
    return inputs


def build_manifest(
    *,
    summaries: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    duplicate_groups: list[dict[str, Any]],
    join_report: list[dict[str, Any]],
    files_listed: int,
    buckets: int,
    run_info: dict[str, Any],
) -> dict[str, Any]:
    """The manifest document (deterministic: no timestamps, everything sorted)."""
    shards = sorted(summaries, key=lambda s: s["shard"])
    file_errors = [e for e in errors if e["stage"] in _FILE_STAGES]
    sharded = sum(s["samples"] for s in shards)
    groups = sorted(duplicate_groups, key=lambda g: g["keys"][0])
    counts = {
        "files_in": files_listed,
        "images_sharded": sharded,
        "files_errored": len(file_errors),
        "reconciled": files_listed == sharded + len(file_errors),
        "errors_by_reason": dict(sorted(Counter(e["reason"] for e in file_errors).items())),
        "annotation_problems": len(errors) - len(file_errors),
        "images_annotated": sum(s["annotated"] for s in shards),
        "persons": sum(s["persons"] for s in shards),
        "duplicate_groups": len(groups),
        "duplicate_files": sum(len(g["keys"]) - 1 for g in groups),
        "annotation_names_unmatched": sum(1 for r in join_report if r["status"] == "unmatched"),
        "annotation_names_ambiguous": sum(1 for r in join_report if r["status"] == "ambiguous"),
        "shards": len(shards),
        "image_bytes": sum(s["image_bytes"] for s in shards),
    }
    return {
        **run_info,
        "schema_version": SCHEMA_VERSION,
        "num_buckets": buckets,
        "counts": counts,
        "shards": shards,
        "errors_file": ERRORS_NAME,
        "duplicates": groups[:_MAX_LISTED_DUPLICATE_GROUPS],
        "annotation_join": sorted(join_report, key=lambda r: r["name"])[:_MAX_LISTED_DUPLICATE_GROUPS],
    }


class WriteManifestFn(beam.DoFn):
    """Input: the list of every :class:`ManifestRecord` of the run, so it runs once, after every shard is written."""

    def __init__(self, storage_cfg: StorageConfig, output: str, run_info: dict[str, Any]) -> None:
        self._storage_cfg = storage_cfg
        self._output = output
        self._run_info = run_info

    def process(self, records: list[ManifestRecord]) -> Iterator[dict[str, Any]]:
        storage = Storage(self._storage_cfg)
        inputs = manifest_inputs(records)
        error_list = sorted(inputs.pop("errors"), key=error_sort_key)
        schema = with_file_metadata(
            ERROR_SCHEMA,
            pipeline_version=self._run_info["pipeline_version"],
            config_hash=self._run_info["config_hash"],
        )
        storage.write_bytes(join(self._output, ERRORS_NAME), parquet_bytes(table_from_rows(error_list, schema)))
        manifest = build_manifest(errors=error_list, run_info=self._run_info, **inputs)
        document = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        storage.write_bytes(join(self._output, MANIFEST_NAME), document)
        yield manifest

"""The last step of ``dpmesh-shard``: the errors table and ``_manifest.json``, written after every shard.

The manifest is the shard set's table of contents and its completion marker: it lists every
shard with its sample count and tar digest, and reconciles the input count against what was
sharded and what was reported.
"""

import json
from collections import Counter
from collections.abc import Iterator
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
    """Runs once, after every shard is written (its side inputs depend on all of them)."""

    def __init__(self, storage_cfg: StorageConfig, output: str, run_info: dict[str, Any]) -> None:
        self._storage_cfg = storage_cfg
        self._output = output
        self._run_info = run_info

    def process(
        self, _: Any, summaries: Any, errors: Any, duplicates: Any, join_report: Any, files_listed: int, buckets: int
    ) -> Iterator[dict[str, Any]]:
        storage = Storage(self._storage_cfg)
        error_list = sorted(errors, key=error_sort_key)
        schema = with_file_metadata(
            ERROR_SCHEMA,
            pipeline_version=self._run_info["pipeline_version"],
            config_hash=self._run_info["config_hash"],
        )
        storage.write_bytes(join(self._output, ERRORS_NAME), parquet_bytes(table_from_rows(error_list, schema)))
        manifest = build_manifest(
            summaries=list(summaries),
            errors=error_list,
            duplicate_groups=list(duplicates),
            join_report=list(join_report),
            files_listed=files_listed,
            buckets=buckets,
            run_info=self._run_info,
        )
        document = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        storage.write_bytes(join(self._output, MANIFEST_NAME), document)
        yield manifest

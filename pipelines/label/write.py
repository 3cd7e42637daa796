"""Committing one labeled shard: its three Parquet files, then its ``_done/`` marker, written last.

Each file is published atomically (see :class:`~pipelines.storage.Storage`), and the marker only after all three:
a shard with a marker is complete, a shard without one is relabeled by the next run. A shard's labels and an update
of them (:mod:`pipelines.label.update`) are committed here alike, so both give the same files for the same rows.
"""

import json
import logging
from collections.abc import Mapping
from typing import Any

from pipelines.common.label_set import marker_uri
from pipelines.common.label_stats import shard_stats
from pipelines.common.label_units import LIVE_UPDATE, ShardReport, ShardTask, shard_marker
from pipelines.error_rows import error_sort_key
from pipelines.label.annotation_rows import annotation_sort_key
from pipelines.parquet_io import parquet_bytes
from pipelines.storage import Storage, join
from schemas import ANNOTATION_SCHEMA, ERROR_SCHEMA, table_from_rows, with_file_metadata
from schemas.annotations import NEAR_DUP_GROUP


logger = logging.getLogger(__name__)


class LabeledShardWriter:
    """Writes labeled shards under ``output`` with the run's lineage in every file's metadata."""

    def __init__(self, storage: Storage, output: str, run_info: dict[str, str]) -> None:
        self._storage = storage
        self._output = output
        self._run_info = run_info
        meta = {"pipeline_version": run_info["pipeline_version"], "config_hash": run_info["config_hash"]}
        self._annotation_schema = with_file_metadata(ANNOTATION_SCHEMA, **meta)
        if run_info.get("calibration_sha256"):  # filter.calibration: which confidence model scored the rows
            self._annotation_schema = self._annotation_schema.with_metadata(
                {**self._annotation_schema.metadata, b"calibration_sha256": run_info["calibration_sha256"].encode()}
            )
        self._error_schema = with_file_metadata(ERROR_SCHEMA, **meta)

    def write(
        self,
        task: ShardTask,
        report: ShardReport,
        accepted: list[dict[str, Any]],
        rejected: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        elapsed_s: float | None = None,
        model_hosts: dict[str, dict[str, Any]] | None = None,
        *,
        live_update: bool = False,
    ) -> dict[str, Any]:
        """Sorts and writes the shard's rows, then its marker; returns the marker. ``elapsed_s``: wall seconds the
        shard took from its first read to this write (the marker's ``elapsed_s``: per-shard throughput).
        ``model_hosts``: per model kind, how it was hosted when the shard was committed
        (:class:`~pipelines.common.model_host.HostStats`: shared, concurrent_calls, callers, peak).
        ``live_update``: the rows are an earlier commit's, brought up to the task's live record (marked
        :data:`~pipelines.common.label_units.LIVE_UPDATE`).

        Every row's ``near_dup_group`` is set here, from the task's groups (null for a sample in none).
        """
        accepted = _grouped(accepted, task.near_dup_groups)
        rejected = _grouped(rejected, task.near_dup_groups)
        errors = sorted(errors, key=error_sort_key)
        marker = shard_marker(task, report, accepted, rejected, errors, self._run_info)
        if elapsed_s is not None:
            marker["elapsed_s"] = round(elapsed_s, 3)
        if model_hosts:
            marker["model_hosts"] = model_hosts
        if live_update:
            marker[LIVE_UPDATE] = True
        annotation_schema = self._annotation_schema
        if report.detector_models:  # detector=vitpose|auto: the weights that found the persons
            models = json.dumps(report.detector_models, sort_keys=True).encode()
            annotation_schema = annotation_schema.with_metadata(
                {**annotation_schema.metadata, b"detector_models": models}
            )
        tables = {
            "annotations": table_from_rows(accepted, annotation_schema),
            "rejected": table_from_rows(rejected, annotation_schema),
            "errors": table_from_rows(errors, self._error_schema),
        }
        marker["stats"] = shard_stats(tables, tables["errors"])  # what the report plots, made where the rows are
        for folder, table in tables.items():
            self._storage.write_bytes(join(self._output, folder, f"{task.name}.parquet"), parquet_bytes(table))
        self._storage.write_bytes(marker_uri(self._output, task.name), json.dumps(marker, indent=1).encode())
        if not marker["reconciled"]:
            logger.error("shard %s does not reconcile: %s", task.name, marker["counts"])
        return marker


def _grouped(rows: list[dict[str, Any]], groups: Mapping[str, str]) -> list[dict[str, Any]]:
    """``rows`` in file order, each with its image's ``near_dup_group`` (``groups``: ``{key: group}``)."""
    return sorted(({**row, NEAR_DUP_GROUP: groups.get(row["image_key"])} for row in rows), key=annotation_sort_key)

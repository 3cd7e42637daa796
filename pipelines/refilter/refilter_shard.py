"""The per-shard step of ``dpmesh-refilter``: re-score a label shard's rows with the new thresholds (the signals are
in the rows), apply the reviews that decide its persons (`pipelines.common.reviews`), write its three Parquet files
with the label run's lineage, then its marker (last; its ``review`` field counts what the reviews did)."""

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from dpmesh_core.calibration import ConfidenceCalibration
from dpmesh_core.confidence import ConfidenceSignals, FilterThresholds, combine
from pipelines.common.commit_log import ALREADY_COMMITTED, committed_marker
from pipelines.common.label_set import LABEL_RUN, index_entry, marker_uri
from pipelines.common.label_stats import shard_stats
from pipelines.common.label_summary import CommittedShard, committed_shard
from pipelines.common.label_units import IMAGES_RETIRED, PERSONS_RETIRED, ShardReport, ShardTask, shard_marker
from pipelines.common.metrics import LABEL_METRICS
from pipelines.common.reviews import Decision, apply_decisions
from pipelines.config import (
    RefilterJobConfig,
)
from pipelines.parquet_io import parquet_bytes
from pipelines.refilter.plan import is_refiltered
from pipelines.storage import Storage, join
from schemas import ANNOTATION_SCHEMA, ERROR_SCHEMA, fixed_list_to_numpy, with_file_metadata


logger = logging.getLogger(__name__)

_SIGNALS = [f.name for f in fields(ConfidenceSignals)]
"""Key of the labeling run's lineage in refilter markers, file metadata and ``_summary.json``."""
# What the refilter summary keeps of the label run's summary (its counts describe the label split, not this one).
_CARRIED_FILE_METADATA = (b"detector_models",)  # label-run facts in the Parquet metadata, copied unchanged


def count_valid_keypoints(keypoints: np.ndarray, kp_conf_threshold: float) -> np.ndarray:
    """`(..., 17, 3)` keypoints -> `(...,)` number with finite x, y and conf >= ``kp_conf_threshold``.

    As ``dpmesh_core.confidence`` counts ``n_kp_valid``; it depends on the threshold, so a new filter recounts it.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    finite = np.isfinite(kp[..., :2]).all(axis=-1)
    with np.errstate(invalid="ignore"):
        return (finite & (kp[..., 2] >= kp_conf_threshold)).sum(axis=-1)


def _verdict(
    signals: dict[str, Any],
    n_valid: int,
    thresholds: FilterThresholds,
    calibration: ConfidenceCalibration | None = None,
) -> tuple[float, str, list[str]]:
    """The one place a stored row is re-scored: ``combine`` on its signals with ``n_kp_valid`` recounted (and the
    ``filter.calibration`` confidence model, if any)."""
    return combine(ConfidenceSignals(**{**signals, "n_kp_valid": n_valid}), thresholds, calibration)


def rescore_row(
    row: dict[str, Any], thresholds: FilterThresholds, calibration: ConfidenceCalibration | None = None
) -> dict[str, Any]:
    """``row`` with ``confidence``, ``quality_tier``, ``reasons`` (and ``n_kp_valid``) under ``thresholds``."""
    n_valid = int(count_valid_keypoints(np.asarray(row["keypoints_2d"]), thresholds.kp_conf_threshold))
    confidence, tier, reasons = _verdict({name: row[name] for name in _SIGNALS}, n_valid, thresholds, calibration)
    return {**row, "n_kp_valid": n_valid, "confidence": confidence, "quality_tier": tier, "reasons": list(reasons)}


def rescore_table(
    table: pa.Table, thresholds: FilterThresholds, calibration: ConfidenceCalibration | None = None
) -> pa.Table:
    """`rescore_row` for every row of an annotation table, reading array columns without Python objects."""
    n_valid = count_valid_keypoints(
        fixed_list_to_numpy(table["keypoints_2d"], (17, 3)), thresholds.kp_conf_threshold
    ).astype(np.int32)
    signals = {name: table[name].to_pylist() for name in _SIGNALS if name != "n_kp_valid"}  # scalar columns
    verdicts = [
        _verdict({name: values[i] for name, values in signals.items()}, int(n_valid[i]), thresholds, calibration)
        for i in range(table.num_rows)
    ]
    schema = ANNOTATION_SCHEMA
    replaced = {
        "n_kp_valid": pa.array(n_valid, type=schema.field("n_kp_valid").type),
        "confidence": pa.array([v[0] for v in verdicts], type=schema.field("confidence").type),
        "quality_tier": pa.array([v[1] for v in verdicts], type=schema.field("quality_tier").type),
        "reasons": pa.array([list(v[2]) for v in verdicts], type=schema.field("reasons").type),
    }
    for name, column in replaced.items():
        table = table.set_column(table.schema.get_field_index(name), schema.field(name), column)
    return table


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in its order: columns a file of an older schema version lacks are null.

    Only nullable columns may be missing (schema minor versions add nullable columns only).

    Raises:
        ValueError: a non-nullable column is missing.
    """
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"column {field.name!r} is missing and not nullable: not a labels file of this schema")
    return pa.Table.from_arrays(columns, schema=schema)


RETIRED_COUNTS = (IMAGES_RETIRED, PERSONS_RETIRED)


def label_run_of_marker(source_marker: dict[str, Any], labels: str) -> dict[str, Any]:
    """The labeling run behind a shard: carried from a refiltered input's marker, else read off the label marker,
    with the shard set's live record its rows follow (``live_digest``, when the label marker records one), so that
    ``dpmesh-export`` can tell refiltered labels that lag their shard set as it tells labels."""
    if LABEL_RUN in source_marker:
        carried: dict[str, Any] = source_marker[LABEL_RUN]
        return carried
    run = {
        "labels": labels,
        "config_hash": source_marker.get("config_hash"),
        "pipeline_version": source_marker.get("pipeline_version"),
    }
    return {**run, "live_digest": source_marker["live_digest"]} if "live_digest" in source_marker else run


class RefilterShardFn(beam.DoFn):
    """Input: a shard name. Re-scores its labels into the new output, then writes its marker (last); outputs the
    :class:`~pipelines.common.label_summary.CommittedShard` (the marker's indexed fields, ``ALREADY_COMMITTED`` set
    when a retried work item found the shard done, and its statistics).

    Args:
        decisions: ``{shard: {sample_id: Decision}}``, the reviews the files agree on (bounded by the files' size).
    """

    def __init__(
        self,
        cfg: RefilterJobConfig,
        thresholds: FilterThresholds,
        run_info: dict[str, str],
        calibration: ConfidenceCalibration | None = None,
        decisions: dict[str, dict[str, Decision]] | None = None,
    ) -> None:
        self._cfg = cfg
        self._thresholds = thresholds
        self._run_info = run_info
        self._calibration = calibration
        self._decisions = decisions or {}

    def setup(self) -> None:
        self._storage = Storage(self._cfg.storage)

    def _table(self, folder: str, shard: str, schema: pa.Schema) -> tuple[pa.Table, dict[bytes, bytes]]:
        """The input shard's table conformed to ``schema``, and the file's own metadata."""
        data = self._storage.read_bytes(join(self._cfg.input, folder, f"{shard}.parquet"))
        table = pq.read_table(io.BytesIO(data))
        return conform(table, schema), dict(table.schema.metadata or {})

    def process(self, shard: str) -> Iterator[CommittedShard]:
        cfg = self._cfg
        source_marker = json.loads(self._storage.read_bytes(marker_uri(cfg.input, shard)))
        if not cfg.overwrite:  # checked again where it runs: a retried work item finds its shard committed
            expected = {"calibration_sha256": self._run_info.get("calibration_sha256")}
            committed = committed_marker(self._storage, cfg.output, shard, expected)
            if committed is not None and is_refiltered(committed, source_marker, self._run_info["config_hash"]):
                Metrics.counter(LABEL_METRICS, "shards_already_committed").inc()
                yield committed_shard({**index_entry(committed), ALREADY_COMMITTED: True}, committed)
                return
        label_run = label_run_of_marker(source_marker, cfg.input)
        accepted_in, accepted_meta = self._table("annotations", shard, ANNOTATION_SCHEMA)
        rejected_in, _ = self._table("rejected", shard, ANNOTATION_SCHEMA)
        errors, _ = self._table("errors", shard, ERROR_SCHEMA)
        labels = rescore_table(pa.concat_tables([accepted_in, rejected_in]), self._thresholds, self._calibration)
        labels, reviewed = apply_decisions(labels, self._decisions.get(shard, {}), self._thresholds)
        labels = labels.sort_by([("image_key", "ascending"), ("person_idx", "ascending")])
        is_reject = pc.equal(labels["quality_tier"], "reject")
        accepted, rejected = labels.filter(pc.invert(is_reject)), labels.filter(is_reject)

        meta = {"pipeline_version": self._run_info["pipeline_version"], "config_hash": self._run_info["config_hash"]}
        lineage = {LABEL_RUN.encode(): json.dumps(label_run, sort_keys=True).encode()}
        if self._run_info.get("calibration_sha256"):  # filter.calibration: which confidence model scored the rows
            lineage[b"calibration_sha256"] = self._run_info["calibration_sha256"].encode()
        carried = {k: accepted_meta[k] for k in _CARRIED_FILE_METADATA if k in accepted_meta}
        for folder, table, schema in (
            ("annotations", accepted, ANNOTATION_SCHEMA),
            ("rejected", rejected, ANNOTATION_SCHEMA),
            ("errors", errors, ERROR_SCHEMA),
        ):
            file_schema = with_file_metadata(schema, **meta)
            extra = {**lineage, **(carried if schema is ANNOTATION_SCHEMA else {})}
            file_schema = file_schema.with_metadata({**file_schema.metadata, **extra})
            data = parquet_bytes(table.replace_schema_metadata(file_schema.metadata))
            self._storage.write_bytes(join(cfg.output, folder, f"{shard}.parquet"), data)

        # The labeled shard's lineage carries over: what it was (identity), what was read, and the input counts.
        task = ShardTask(source_marker.get("shard_uri") or "", shard, source_marker.get("shard_identity") or {})
        read = source_marker.get("tar_read") or {}
        counts = Counter({k: source_marker["counts"][k] for k in ("images_in", "images_ok", "images_errored")})
        counts["persons_in"] = source_marker["counts"]["persons_in"]
        # Retired samples are counted apart by the labels (a grown shard set): carried, so the counts still reconcile.
        counts.update({k: source_marker["counts"][k] for k in RETIRED_COUNTS if k in source_marker["counts"]})
        report = ShardReport(counts, read.get("tar_bytes", 0), read.get("tar_sha1", ""))
        report.detector_models.update(source_marker.get("detector_models") or {})
        columns = ("model_id", "body_model", "body_model_sha256", "reasons", "quality_tier")
        marker = shard_marker(
            task,
            report,
            accepted.select(columns).to_pylist(),
            rejected.select(columns).to_pylist(),
            errors.select(["person_idx", "stage", "reason"]).to_pylist(),
            {**self._run_info, LABEL_RUN: label_run},
        )
        marker["live_digest"] = label_run.get("live_digest")  # the rows' live record is the labels'
        if reviewed:
            marker["review"] = reviewed
        marker["stats"] = shard_stats({"annotations": accepted, "rejected": rejected}, errors)
        self._storage.write_bytes(marker_uri(cfg.output, shard), json.dumps(marker, indent=1).encode())
        yield committed_shard(index_entry(marker), marker)  # the summary step takes it, never reads the marker back

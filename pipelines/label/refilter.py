"""``dpmesh-refilter``: re-split existing labels by new thresholds, without running the model again.

Every signal a threshold reads is stored in the annotation rows, so a new filter is a pass over the
Parquet: each accepted and rejected row is re-scored with ``dpmesh_core.confidence.combine`` and
written to the new output's ``annotations/`` or ``rejected/``; ``errors/`` rows are carried over.

**Lineage is kept, not replaced.** Rows are carried whole (``model_id``, ``shard``, ``shard_uri``, ``annotation_id``,
``body_model``...). The labeling run behind them is recorded as ``label_run`` in three places: each shard's marker
and each Parquet file's metadata (JSON ``{"labels": <label output>, "config_hash", "pipeline_version"}`` of the
label marker), and ``_summary.json`` (the label run's summary lineage: config, config hash, versions, runner,
model ids, body models). Refiltering a refiltered output carries the original ``label_run`` forward. The file
metadata's own ``config_hash`` / ``pipeline_version`` are the refilter run's (they describe these bytes); the
shard's ``shard_uri`` / ``shard_identity`` / ``tar_read`` and ``detector_models`` come from the label marker.

**Resume, like the labeler.** One element per shard; each writes its three Parquet files, then its
``_done/<shard>.json`` marker, last. A rerun skips a shard whose marker has this run's config hash and the same
source (label shard identity and label config hash), so after a kill it refilters only the missing shards; an
output holding another filter config is refused unless ``overwrite=true``, which redoes every shard.
"""

import io
import json
import logging
import time
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

import pipelines
from dpmesh_core.calibration import ConfidenceCalibration
from dpmesh_core.confidence import ConfidenceSignals, FilterThresholds, combine
from pipelines.cli import hydra_app
from pipelines.common.commit_log import committed_marker, refuse_other_units
from pipelines.common.intent import check_intent, record_intent
from pipelines.common.label_set import LABEL_RUN, fetch_markers, marker_uri, read_markers, read_summary, write_index
from pipelines.common.launch import resolve_launch
from pipelines.common.metrics import LABEL_METRICS
from pipelines.common.safe_paths import check_output_location
from pipelines.config import (
    ConfigError,
    RefilterJobConfig,
    config_hash,
    config_to_dict,
)
from pipelines.label.finish import SUMMARY_NAME, build_summary, format_summary
from pipelines.label.plan import made_otherwise
from pipelines.label.records import ShardReport, ShardTask
from pipelines.label.thresholds import calibration_lineage, filter_thresholds, load_calibration
from pipelines.label.write import shard_marker
from pipelines.parquet_io import parquet_bytes
from pipelines.storage import Storage, join
from schemas import ANNOTATION_SCHEMA, ERROR_SCHEMA, fixed_list_to_numpy, with_file_metadata


logger = logging.getLogger(__name__)

APP = "dpmesh-refilter"

_SIGNALS = [f.name for f in fields(ConfidenceSignals)]
"""Key of the labeling run's lineage in refilter markers, file metadata and ``_summary.json``."""
# What the refilter summary keeps of the label run's summary (its counts describe the label split, not this one).
_LABEL_SUMMARY_LINEAGE = (
    "created_by", "pipeline_version", "config_hash", "runner", "config", "versions", "model_ids", "body_models",
)  # fmt: skip
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


def label_run_of_marker(source_marker: dict[str, Any], labels: str) -> dict[str, Any]:
    """The labeling run behind a shard: carried from a refiltered input's marker, else read off the label marker."""
    if LABEL_RUN in source_marker:
        carried: dict[str, Any] = source_marker[LABEL_RUN]
        return carried
    return {
        "labels": labels,
        "config_hash": source_marker.get("config_hash"),
        "pipeline_version": source_marker.get("pipeline_version"),
    }


def label_run_of_summary(storage: Storage, labels: str) -> dict[str, Any]:
    """The label run's lineage from ``<labels>/_summary.json`` (carried when ``labels`` is itself refiltered).

    A label output whose run died before its summary has none: then only ``labels`` is known here (the markers and
    files still carry each shard's config hash).
    """
    summary = read_summary(storage, labels)
    if summary is None:
        return {"labels": labels, "summary": None}
    if isinstance(summary.get(LABEL_RUN), dict):
        carried: dict[str, Any] = summary[LABEL_RUN]
        return carried
    return {"labels": labels, **{k: summary[k] for k in _LABEL_SUMMARY_LINEAGE if k in summary}}


def _label_config_hash(marker: dict[str, Any]) -> Any:
    """The config hash of the labeling run behind a marker (a label marker's own, or a refilter marker's record)."""
    return (marker.get(LABEL_RUN) or {}).get("config_hash", marker.get("config_hash"))


def is_refiltered(output_marker: dict[str, Any] | None, source_marker: dict[str, Any], current_hash: str) -> bool:
    """True when ``output_marker`` already covers the source shard under this config (the shard is skipped)."""
    if output_marker is None or output_marker.get("config_hash") != current_hash:
        return False
    if output_marker.get("shard_identity") != source_marker.get("shard_identity"):
        return False  # the label shard was relabeled from a rebuilt tar since
    return bool(_label_config_hash(output_marker) == _label_config_hash(source_marker))


class RefilterShardFn(beam.DoFn):
    """Input: a shard name. Re-scores its labels into the new output, then writes its marker (last)."""

    def __init__(
        self,
        cfg: RefilterJobConfig,
        thresholds: FilterThresholds,
        run_info: dict[str, str],
        calibration: ConfidenceCalibration | None = None,
    ) -> None:
        self._cfg = cfg
        self._thresholds = thresholds
        self._run_info = run_info
        self._calibration = calibration

    def setup(self) -> None:
        self._storage = Storage(self._cfg.storage)

    def _table(self, folder: str, shard: str, schema: pa.Schema) -> tuple[pa.Table, dict[bytes, bytes]]:
        """The input shard's table conformed to ``schema``, and the file's own metadata."""
        data = self._storage.read_bytes(join(self._cfg.input, folder, f"{shard}.parquet"))
        table = pq.read_table(io.BytesIO(data))
        return conform(table, schema), dict(table.schema.metadata or {})

    def process(self, shard: str) -> Iterator[dict[str, Any]]:
        cfg = self._cfg
        source_marker = json.loads(self._storage.read_bytes(marker_uri(cfg.input, shard)))
        if not cfg.overwrite:  # checked again where it runs: a retried work item finds its shard committed
            expected = {"calibration_sha256": self._run_info.get("calibration_sha256")}
            committed = committed_marker(self._storage, cfg.output, shard, expected)
            if committed is not None and is_refiltered(committed, source_marker, self._run_info["config_hash"]):
                Metrics.counter(LABEL_METRICS, "shards_already_committed").inc()
                yield committed
                return
        label_run = label_run_of_marker(source_marker, cfg.input)
        accepted_in, accepted_meta = self._table("annotations", shard, ANNOTATION_SCHEMA)
        rejected_in, _ = self._table("rejected", shard, ANNOTATION_SCHEMA)
        errors, _ = self._table("errors", shard, ERROR_SCHEMA)
        labels = rescore_table(pa.concat_tables([accepted_in, rejected_in]), self._thresholds, self._calibration)
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
        self._storage.write_bytes(marker_uri(cfg.output, shard), json.dumps(marker, indent=1).encode())
        yield marker


def build_pipeline(
    p: beam.Pipeline,
    cfg: RefilterJobConfig,
    pending: list[str],
    thresholds: FilterThresholds,
    info: dict[str, Any],
    calibration: ConfidenceCalibration | None,
) -> None:
    """Adds the refiltering steps for the ``pending`` shard names to ``p``."""
    _ = (
        p
        | "Shards" >> beam.Create(pending)
        | "SpreadShards" >> beam.Reshuffle()
        | "Refilter" >> beam.ParDo(RefilterShardFn(cfg, thresholds, info, calibration))
    )


def refilter_config_hash(cfg: RefilterJobConfig) -> str:
    """What decides the refiltered rows: the filter (where and how the job runs changes none)."""
    return config_hash(cfg, exclude=("input", "output", "runner", "storage", "log_level", "overwrite"))


def run(cfg: RefilterJobConfig) -> dict[str, Any]:
    """Re-splits every labeled shard of ``cfg.input`` not yet refiltered into ``cfg.output``; returns the summary
    (the launch plan on a dry run, which reads and writes nothing)."""
    if cfg.runner.dry_run:
        stand_in = {"pipeline_version": pipelines.__version__, "config_hash": refilter_config_hash(cfg)}
        thresholds = filter_thresholds(cfg.filter)  # bad overrides fail a dry run too
        launch = resolve_launch(APP, cfg.runner)
        return launch.plan(lambda p: build_pipeline(p, cfg, ["shard-000000"], thresholds, stand_in, None))
    storage = Storage(cfg.storage)
    check_output_location(storage, cfg.output, {"input": cfg.input, "filter.calibration": cfg.filter.calibration})
    thresholds = filter_thresholds(cfg.filter)
    calibration = load_calibration(cfg.filter, cfg.storage)
    sources = read_markers(storage, cfg.input)
    if not sources:
        raise ConfigError(f"input={cfg.input!r} holds no labeled shards (no _done/ markers)")
    shards = sorted(sources)
    info: dict[str, Any] = {
        "pipeline_version": pipelines.__version__,
        "config_hash": refilter_config_hash(cfg),
        **calibration_lineage(calibration, cfg.filter.calibration),
    }
    done = {} if cfg.overwrite else read_markers(storage, cfg.output)
    if not cfg.overwrite and not done:  # nothing committed yet: whose unfinished files may the output hold
        check_intent(storage, cfg.output, info["config_hash"], "unfinished refiltered labels")
    foreign, differs = made_otherwise(done, info["config_hash"], info.get("calibration_sha256"))
    if foreign:
        raise refuse_other_units(cfg.output, "refiltered labels", foreign, differs)
    pending = [s for s in shards if not is_refiltered(done.get(s), sources[s], info["config_hash"])]
    logger.info(
        "%d labeled shards, %d to refilter, %d already done", len(shards), len(pending), len(shards) - len(pending)
    )
    started = time.monotonic()
    record_intent(storage, cfg.output, APP, info["config_hash"])  # before the first shard's files
    with resolve_launch(APP, cfg.runner, units=len(pending)).pipeline() as p:
        build_pipeline(p, cfg, pending, thresholds, info, calibration)
    # This run's markers are read back (an index left by an earlier run may hold older entries for them).
    written = fetch_markers(storage, [marker_uri(cfg.output, s) for s in pending])
    markers = read_markers(storage, cfg.output, known=written)
    write_index(storage, cfg.output, markers)
    summary = build_summary(
        markers=markers,
        shards_total=shards,
        processed=pending,
        elapsed_s=time.monotonic() - started,
        run_info={
            **info,
            "created_by": "dpmesh-refilter",
            "source": cfg.input,
            "config": {"filter": config_to_dict(cfg.filter)},
            LABEL_RUN: label_run_of_summary(storage, cfg.input),
        },
        thresholds=thresholds,
    )
    storage.write_bytes(join(cfg.output, SUMMARY_NAME), json.dumps(summary, indent=1, sort_keys=True).encode())
    return summary


def report(summary: dict[str, Any], cfg: RefilterJobConfig) -> str:
    """The end-of-run table."""
    return format_summary(summary, cfg.output)


main = hydra_app("dpmesh-refilter", "dpmesh_refilter", RefilterJobConfig, run, report)


if __name__ == "__main__":
    main()

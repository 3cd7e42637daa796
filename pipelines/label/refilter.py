"""``dpmesh-refilter``: re-split existing labels by new thresholds, without running the model again.

Every signal a threshold reads is stored in the annotation rows, so a new filter is a pass over the
Parquet: each accepted and rejected row is re-scored with ``dpmesh_core.confidence.combine`` and
written to the new output's ``annotations/`` or ``rejected/``; ``errors/`` rows are carried over.
The new output gets its own markers and ``_summary.json``, like a labeling run.
"""

import dataclasses
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq

import pipelines
from dpmesh_core.confidence import ConfidenceSignals, FilterThresholds, combine
from pipelines.cli import hydra_app
from pipelines.config import (
    ConfigError,
    RefilterJobConfig,
    config_hash,
    config_to_dict,
)
from pipelines.label.markers import read_markers
from pipelines.label.progress import build_summary, format_summary
from pipelines.label.records import ShardReport, ShardTask
from pipelines.label.summary import SUMMARY_NAME
from pipelines.label.thresholds import filter_thresholds
from pipelines.label.write import shard_marker
from pipelines.options import pipeline_options
from pipelines.parquet_io import parquet_bytes
from pipelines.storage import Storage, join
from schemas import ANNOTATION_SCHEMA, ERROR_SCHEMA, table_from_rows, with_file_metadata


logger = logging.getLogger(__name__)

_SIGNALS = [f.name for f in dataclasses.fields(ConfidenceSignals)]


def rescore_row(row: dict[str, Any], thresholds: FilterThresholds) -> dict[str, Any]:
    """``row`` with ``confidence``, ``quality_tier``, ``reasons`` (and ``n_kp_valid``) under ``thresholds``.

    ``n_kp_valid`` depends on the keypoint confidence threshold, so it is recounted from ``keypoints_2d``
    (finite x, y and confidence >= ``kp_conf_threshold``, as ``dpmesh_core.confidence`` counts it).
    """
    keypoints = np.asarray(row["keypoints_2d"], dtype=np.float64)
    finite = np.isfinite(keypoints[:, :2]).all(axis=1)
    n_valid = int((finite & (keypoints[:, 2] >= thresholds.kp_conf_threshold)).sum())
    signals = ConfidenceSignals(**{**{name: row[name] for name in _SIGNALS}, "n_kp_valid": n_valid})
    confidence, tier, reasons = combine(signals, thresholds)
    return {**row, "n_kp_valid": n_valid, "confidence": confidence, "quality_tier": tier, "reasons": list(reasons)}


class RefilterShardFn(beam.DoFn):
    """Input: a shard name. Re-scores its labels into the new output, then writes its marker."""

    def __init__(self, cfg: RefilterJobConfig, thresholds: FilterThresholds, run_info: dict[str, str]) -> None:
        self._cfg = cfg
        self._thresholds = thresholds
        self._run_info = run_info

    def setup(self) -> None:
        self._storage = Storage(self._cfg.storage)

    def _rows(self, folder: str, shard: str) -> list[dict[str, Any]]:
        data = self._storage.read_bytes(join(self._cfg.input, folder, f"{shard}.parquet"))
        rows: list[dict[str, Any]] = pq.read_table(io.BytesIO(data)).to_pylist()
        return rows

    def process(self, shard: str) -> Iterator[dict[str, Any]]:
        source_marker = json.loads(self._storage.read_bytes(join(self._cfg.input, "_done", f"{shard}.json")))
        rows = [
            rescore_row(r, self._thresholds) for r in self._rows("annotations", shard) + self._rows("rejected", shard)
        ]
        rows.sort(key=lambda r: (r["image_key"], r["person_idx"]))
        accepted = [r for r in rows if r["quality_tier"] != "reject"]
        rejected = [r for r in rows if r["quality_tier"] == "reject"]
        errors = self._rows("errors", shard)
        meta = {"pipeline_version": self._run_info["pipeline_version"], "config_hash": self._run_info["config_hash"]}
        for folder, folder_rows, schema in (
            ("annotations", accepted, ANNOTATION_SCHEMA),
            ("rejected", rejected, ANNOTATION_SCHEMA),
            ("errors", errors, ERROR_SCHEMA),
        ):
            table = table_from_rows(folder_rows, with_file_metadata(schema, **meta))
            self._storage.write_bytes(join(self._cfg.output, folder, f"{shard}.parquet"), parquet_bytes(table))
        # The labeled shard's lineage carries over: what it was (identity), what was read, and the input counts.
        task = ShardTask(source_marker.get("shard_uri") or "", shard, source_marker.get("shard_identity") or {})
        read = source_marker.get("tar_read") or {}
        counts = Counter({k: source_marker["counts"][k] for k in ("images_in", "images_ok", "images_errored")})
        counts["persons_in"] = source_marker["counts"]["persons_in"]
        report = ShardReport(counts, read.get("tar_bytes", 0), read.get("tar_sha1", ""))
        marker = shard_marker(task, report, accepted, rejected, errors, self._run_info)
        self._storage.write_bytes(
            join(self._cfg.output, "_done", f"{shard}.json"), json.dumps(marker, indent=1).encode()
        )
        yield marker


def run(cfg: RefilterJobConfig) -> dict[str, Any]:
    """Re-splits every labeled shard of ``cfg.input`` into ``cfg.output`` and returns the summary."""
    thresholds = filter_thresholds(cfg.filter)
    storage = Storage(cfg.storage)
    shards = sorted(read_markers(storage, cfg.input))
    if not shards:
        raise ConfigError(f"input={cfg.input!r} holds no labeled shards (no _done/ markers)")
    if read_markers(storage, cfg.output) and not cfg.overwrite:
        raise ConfigError(f"output={cfg.output!r} already holds labels; choose another output or pass overwrite=true")
    info = {
        "pipeline_version": pipelines.__version__,
        "config_hash": config_hash(cfg, exclude=("input", "output", "runner", "storage", "log_level", "overwrite")),
    }
    started = time.monotonic()
    with beam.Pipeline(options=pipeline_options(cfg.runner, job_name="dpmesh-refilter")) as p:
        _ = p | "Shards" >> beam.Create(shards) | "Refilter" >> beam.ParDo(RefilterShardFn(cfg, thresholds, info))
    summary = build_summary(
        markers=read_markers(storage, cfg.output),
        shards_total=shards,
        processed=shards,
        elapsed_s=time.monotonic() - started,
        run_info={
            **info,
            "created_by": "dpmesh-refilter",
            "source": cfg.input,
            "config": {"filter": config_to_dict(cfg.filter)},
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

"""The end of ``dpmesh-label``: what its ``_summary.json`` records about the run, and the pipeline's last step that
writes it (:class:`pipelines.common.label_summary.WriteLabelSummary`, shared with ``dpmesh-refilter``)."""

from typing import Any

import pipelines
from dpmesh_core.confidence import FilterThresholds
from pipelines.common.label_summary import WriteLabelSummary, WriteSummaryFn
from pipelines.config import LabelJobConfig, config_hash, config_to_dict


def run_info(cfg: LabelJobConfig) -> dict[str, Any]:
    """What markers and the summary record about the run (no secrets: configs hold none)."""
    return {"pipeline_version": pipelines.__version__, "config_hash": config_hash(cfg)}


def summary_run_info(cfg: LabelJobConfig) -> dict[str, Any]:
    """What the summary records about the run besides counts: lineage, runner and the content config."""
    config = {k: v for k, v in config_to_dict(cfg).items() if k in ("input", "output", "model", "filter", "detector")}
    return {**run_info(cfg), "created_by": "dpmesh-label", "runner": cfg.runner.name.value, "config": config}


def write_summary(
    cfg: LabelJobConfig,
    shards_total: list[str],
    lineage: dict[str, Any],
    thresholds: FilterThresholds,
    started_at: float,
) -> WriteLabelSummary:
    """The last step: ``_summary.json`` over every shard of ``shards_total`` (``lineage``: the calibration's)."""
    run_info = {**summary_run_info(cfg), **lineage}
    return WriteLabelSummary(WriteSummaryFn(cfg.storage, cfg.output, shards_total, run_info, thresholds, started_at))

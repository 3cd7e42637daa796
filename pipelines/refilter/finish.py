"""The end of ``dpmesh-refilter``: what its ``_summary.json`` records (the filter, the reviews it applied, and the
lineage of the labeling run behind it), written by the pipeline's own last step
(:class:`pipelines.common.label_summary.WriteLabelSummary`, shared with ``dpmesh-label``)."""

from typing import Any

from dpmesh_core.confidence import FilterThresholds
from pipelines.common.label_set import LABEL_RUN, read_summary
from pipelines.common.label_summary import WriteLabelSummary, WriteSummaryFn
from pipelines.config import RefilterJobConfig, config_to_dict
from pipelines.storage import Storage


_LABEL_SUMMARY_LINEAGE = (
    "created_by", "pipeline_version", "config_hash", "runner", "config", "versions", "model_ids", "body_models",
)  # fmt: skip


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


def write_summary(
    cfg: RefilterJobConfig,
    shards_total: list[str],
    info: dict[str, Any],
    label_run: dict[str, Any],
    thresholds: FilterThresholds,
    started_at: float,
    review: dict[str, Any] | None = None,
) -> WriteLabelSummary:
    """The last step: ``_summary.json`` over every labeled shard of the input (``info``: lineage and config hash;
    ``label_run``: :func:`label_run_of_summary` of the input; ``review``: `pipelines.common.reviews.review_record`
    of the review files, to which the summary adds the shards' counts)."""
    config = config_to_dict(cfg)
    run_info = {
        **info,
        "created_by": "dpmesh-refilter",
        "source": cfg.input,
        "config": {name: config[name] for name in ("filter", "review", "review_conflicts")},
        LABEL_RUN: label_run,
        **({"review": review} if review is not None else {}),
    }
    return WriteLabelSummary(WriteSummaryFn(cfg.storage, cfg.output, shards_total, run_info, thresholds, started_at))

"""What ``dpmesh-refilter``'s summary carries of the labeling run behind it (its lineage)."""

from typing import Any

from pipelines.common.label_set import (
    LABEL_RUN,
    read_summary,
)
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

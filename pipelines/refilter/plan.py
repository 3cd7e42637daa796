"""Which shards ``dpmesh-refilter`` has done: a marker with this run's config over the same label shard."""

from typing import Any

from pipelines.common.label_set import (
    LABEL_RUN,
)


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

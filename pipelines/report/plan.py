"""What a report of a label output reads, and what it must compute first.

A label output's markers carry their shard's statistics (`pipelines.common.label_stats`) and the marker index holds
them, so the report's plan is: the summary, the markers (one index object plus the markers the index lacks), and the
shards whose markers predate statistics: those are the report's pending work, computed shard by shard in a Beam
step (`pipelines.report.steps`), never by loading every row in one process.
"""

import dataclasses
import logging
from typing import Any

from pipelines.common.label_set import read_markers, read_summary
from pipelines.common.label_stats import MergedStats, StatsError
from pipelines.config import ConfigError
from pipelines.storage import Storage


logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ReportPlan:
    """The label output as the report reads it.

    Attributes:
        uri: The label output folder.
        summary: ``_summary.json``, or None when the run never wrote one (it died before its last step).
        markers: The indexed marker fields (`pipelines.common.label_set.INDEXED_FIELDS`) by shard name.
        stats: The statistics of every shard whose marker carries them, merged.
        pending: Shards whose markers carry no statistics (labeled before they existed), in name order.
    """

    uri: str
    summary: dict[str, Any] | None
    markers: dict[str, dict[str, Any]]
    stats: MergedStats
    pending: list[str]


def plan_report(storage: Storage, uri: str) -> ReportPlan:
    """Reads the summary and markers of the label output at ``uri`` and merges the statistics they carry.

    Raises:
        ConfigError: ``uri`` holds no labeled shards, or a marker's statistics are not in a format this version
            reads.
    """
    markers = read_markers(storage, uri)
    if not markers:
        raise ConfigError(
            f"input.labels={uri!r} holds no labeled shards (no _done/ markers): is it a dpmesh-label output?"
        )
    stats = MergedStats()
    pending = []
    for shard, marker in sorted(markers.items()):
        if not isinstance(marker.get("stats"), dict):
            pending.append(shard)
            continue
        try:
            stats.add(shard, marker["stats"])
        except StatsError as exc:
            raise ConfigError(f"input.labels={uri!r}: {exc}; relabel with this version") from exc
    if pending:
        logger.info("%d of %d shards carry no statistics: computing them from their rows", len(pending), len(markers))
    return ReportPlan(uri, read_summary(storage, uri), markers, stats, pending)

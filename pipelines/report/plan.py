"""What a report of a label output reads, and what it must compute first.

A label output's markers carry their shard's statistics (`pipelines.common.label_stats`), and the last step of the
run that wrote them merged them into ``_stats.json`` (`pipelines.common.merged_stats`, bounded in size whatever the
number of shards). The report's plan: the summary, the markers (one index object plus the markers the index lacks),
that merge, and the shards it does not cover (a run that died before its last step, markers written before
statistics existed): those are the report's pending work, merged shard by shard in a Beam step
(`pipelines.report.steps`), never by loading every row in one process.
"""

import dataclasses
import logging
from typing import Any

from pipelines.common.label_set import read_markers, read_summary
from pipelines.common.merged_stats import STATS_FILE, MergedStats, read_stats_file, still_valid
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
        stats: The merged statistics of ``_stats.json`` (the shards it covers), or empty.
        pending: Shards ``_stats.json`` does not cover, in name order.
    """

    uri: str
    summary: dict[str, Any] | None
    markers: dict[str, dict[str, Any]]
    stats: MergedStats
    pending: list[str]


def plan_report(storage: Storage, uri: str) -> ReportPlan:
    """Reads the summary and markers of the label output at ``uri`` and merges the statistics they carry.

    Raises:
        ConfigError: ``uri`` holds no labeled shards.
    """
    markers = read_markers(storage, uri)
    if not markers:
        raise ConfigError(
            f"input.labels={uri!r} holds no labeled shards (no _done/ markers): is it a dpmesh-label output?"
        )
    merged = read_stats_file(storage, uri)
    if merged is not None and not still_valid(merged, markers, set()):
        # A shard it covers was committed again or removed since: its rows are in the merge and cannot be taken out.
        logger.info("%s/%s no longer matches the markers: every shard's statistics are merged again", uri, STATS_FILE)
        merged = None
    stats = merged.stats if merged is not None else MergedStats()
    pending = sorted(set(markers) - set(merged.covers if merged is not None else ()))
    if pending:
        logger.info("%d of %d shards are not in %s: merging their statistics", len(pending), len(markers), STATS_FILE)
    return ReportPlan(uri, read_summary(storage, uri), markers, stats, pending)

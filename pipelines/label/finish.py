"""The end of ``dpmesh-label``: the run's ``_summary.json`` (built by :mod:`pipelines.common.label_summary`).

The summary is written by the pipeline's own last step (:class:`WriteSummaryFn`), not by the launcher: the
launching machine may not survive a long Dataflow or Spark job. The step gathers the names of the shards this run
labeled (small records, the only thing it waits for; shards themselves never wait for it), takes the other markers
from the marker index (reading only those it lacks), rewrites the index and writes the summary: totals over every
shard marker (earlier, resumed runs included), this run's throughput, how its models were hosted, and versions.
"""

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from dpmesh_core.confidence import FilterThresholds
from pipelines.common.commit_log import ALREADY_COMMITTED
from pipelines.common.label_set import SUMMARY_NAME, read_markers, write_index
from pipelines.common.label_summary import build_summary
from pipelines.config.storage import StorageConfig
from pipelines.storage import Storage, join


class WriteSummaryFn(beam.DoFn):
    """Input: the list of the indexed marker fields of the shards this run labeled (once, possibly empty).

    Args:
        shards_total: Names of every shard of the input (labeled earlier or now).
        run_info: Lineage and config recorded in the summary.
        started_at: Wall-clock time (s since the epoch) the driver launched the run, for the throughput.
    """

    def __init__(
        self,
        storage_cfg: StorageConfig,
        output: str,
        shards_total: list[str],
        run_info: dict[str, Any],
        thresholds: FilterThresholds,
        started_at: float,
    ) -> None:
        self._storage_cfg = storage_cfg
        self._output = output
        self._shards_total = shards_total
        self._run_info = run_info
        self._thresholds = thresholds
        self._started_at = started_at

    def process(self, labeled: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        storage = Storage(self._storage_cfg)
        entries = list(labeled)
        # Shards a retried or recomputed work item found committed (by an earlier attempt of this run): done, kept.
        already = sorted(e["shard"] for e in entries if e.get(ALREADY_COMMITTED))
        known = {e["shard"]: {k: v for k, v in e.items() if k != ALREADY_COMMITTED} for e in entries}
        processed = sorted(known)
        markers = read_markers(storage, self._output, known=known)
        write_index(storage, self._output, markers)
        summary = build_summary(
            markers=markers,
            shards_total=self._shards_total,
            processed=processed,
            elapsed_s=max(time.time() - self._started_at, 0.0),
            run_info=self._run_info,
            thresholds=self._thresholds,
        )
        summary["shards"]["already_committed"] = len(already)
        document = json.dumps(summary, indent=1, sort_keys=True).encode()
        storage.write_bytes(join(self._output, SUMMARY_NAME), document)
        yield summary

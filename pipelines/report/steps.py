"""The report's one Beam step: the statistics of the shards the label output's ``_stats.json`` does not cover.

    Create(shards) -> Reshuffle -> ShardStats (the marker's statistics; for a marker written before they existed,
                   `shard_stats` of the shard's rows) -> MergeStats (combine) -> WriteStats (<report>/label_stats.json)

Each worker reads one shard at a time and keeps only its statistics; the merge is a combine of bounded mergeable
accumulators (Beam merges partial results where they are made). The driver reads the one merged object.
"""

import io
import json
import logging
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common.label_set import ERRORS_FOLDER, ROW_FOLDERS, fetch_markers, marker_uri
from pipelines.common.label_stats import StatsError, shard_stats
from pipelines.common.merged_stats import MergedStats, MergeStatsFn, ShardStats
from pipelines.common.safe_paths import check_segment
from pipelines.config.storage import StorageConfig
from pipelines.storage import ObjectNotFoundError, Storage, join


logger = logging.getLogger(__name__)

STATS_NAME = "label_stats.json"
"""The report folder's record of the statistics it plots (`MergedStats.to_json`), over every shard."""


def read_shard_tables(storage: Storage, labels: str, shard: str) -> tuple[dict[str, pa.Table], pa.Table | None]:
    """The shard's accepted and rejected rows (by folder, in file order) and its error rows; a file that is not
    there (a shard whose every person errored has no rows) is left out."""
    tables: dict[str, pa.Table] = {}
    errors = None
    for folder in (*ROW_FOLDERS, ERRORS_FOLDER):
        uri = join(labels, folder, check_segment(f"{shard}.parquet", "shard name"))
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        except (ObjectNotFoundError, FileNotFoundError):
            continue
        if folder == ERRORS_FOLDER:
            errors = table
        else:
            tables[folder] = table
    return tables, errors


class ShardStatsFn(beam.DoFn):
    """Input: a shard name. Outputs its :class:`ShardStats`: its marker's, or those of its rows (`shard_stats`) when
    the marker carries none in this version's format."""

    def __init__(self, storage_cfg: StorageConfig, labels: str) -> None:
        self._storage_cfg = storage_cfg
        self._labels = labels

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)

    def process(self, shard: str) -> Iterator[ShardStats]:
        marker = fetch_markers(self._storage, [marker_uri(self._labels, check_segment(shard, "shard name"))])[shard]
        if isinstance(marker.get("stats"), dict):
            try:
                MergedStats().add(shard, marker["stats"])  # read before it is merged: a cache, checked like input
                yield ShardStats(shard, marker["stats"])
                return
            except StatsError as exc:  # another version, or edited: the rows are the truth
                logger.warning("%s: %s; computed again from its rows", shard, exc)
        tables, errors = read_shard_tables(self._storage, self._labels, shard)
        yield ShardStats(shard, shard_stats(tables, errors))


class WriteStatsFn(beam.DoFn):
    """Input: the merged statistics (once). Writes them to ``<output>/label_stats.json``."""

    def __init__(self, storage_cfg: StorageConfig, output: str) -> None:
        self._storage_cfg = storage_cfg
        self._output = output

    def process(self, merged: MergedStats) -> Iterator[str]:
        uri = join(self._output, STATS_NAME)
        Storage(self._storage_cfg).write_bytes(uri, json.dumps(merged.to_json(), sort_keys=True).encode())
        yield uri


def build_pipeline(p: beam.Pipeline, storage_cfg: StorageConfig, labels: str, shards: list[str], output: str) -> None:
    """Adds the statistics of ``shards`` of the label output ``labels``, merged into ``<output>/label_stats.json``."""
    _ = (
        p
        | "Shards" >> beam.Create(shards)
        | "SpreadShards" >> beam.Reshuffle()
        | "ShardStats" >> beam.ParDo(ShardStatsFn(storage_cfg, labels))
        | "MergeStats" >> beam.CombineGlobally(MergeStatsFn())
        | "WriteStats" >> beam.ParDo(WriteStatsFn(storage_cfg, output))
    )

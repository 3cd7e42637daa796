"""The per-unit steps of ``dpmesh-eval``: split a group of label files by bucket (`SplitLabelsFn`), and join one
bucket's label rows to its ground truth (`JoinBucketFn`). Their settings (`EvalSettings`) are resolved on the
driver; resources (storage clients, body models) are made in ``setup()`` where the steps run.

* `SplitLabelsFn` (one label group in): with one bucket it reads nothing and hands the group's files on; with
  several it reads each file's evaluation columns and writes the rows of each bucket to
  ``<work>/labels/b<bucket>/g<group>-<k>.parquet`` (with ``_order``, ``_shard`` and ``_has_signals`` columns: where
  each row came from). Out: ``(bucket, LabelPiece)``, small records.
* `JoinBucketFn` (one bucket and its pieces in): loads the bucket's ground truth (at most about ``bucket_persons``
  persons), reads its label pieces a batch at a time, computes the matched persons' errors (vectorised), writes them
  to ``<output>/persons/part-<bucket>.parquet`` and hands on the bucket's `EvalPartial` summary.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from pipelines.config.storage import StorageConfig
from pipelines.eval.buckets import bucket_of, label_identity
from pipelines.eval.ground_truth_files import parquet_file, read_batches
from pipelines.eval.ground_truth_table import GroundTruthTable
from pipelines.eval.join import BucketJoin
from pipelines.eval.label_columns import COLUMNS, SIGNALS, LabelColumns, read_label_table
from pipelines.eval.meshes import BodyModelFiles, MeshBuilder, load_h36m_regressor, load_meshes
from pipelines.eval.plan import LABEL_BATCH_ROWS, LabelFile, LabelGroup
from pipelines.eval.summary import EvalPartial, SummaryLimits
from pipelines.eval.work_files import BucketWriters
from pipelines.storage import Storage, join
from schemas.eval_persons import EVAL_PERSONS_SCHEMA


EVAL_METRICS = "dpmesh_eval"  # Beam metrics namespace of dpmesh-eval's steps
PERSONS_FOLDER = "persons"
_ORDER, _SHARD, _HAS_SIGNALS = "_order", "_shard", "_has_signals"
HELD_TABLES = 256  # small files' batches joined at once at most (each Arrow table costs a few kB of objects)


@dataclass(frozen=True)
class EvalSettings:
    """What the per-unit steps need, resolved on the driver.

    Attributes:
        storage: the storage config. output: the ``output`` folder. work: this run's work folder.
        buckets: how many buckets the join has; rule: the bucket identity rule (`pipelines.eval.buckets`).
        ground_truth_parts: bucket -> the ground-truth files holding its persons.
        body_models: the SMPL files for meshes (None: joints only). h36m_regressor: its URI, or None.
        limits: the summaries' bounds.
    """

    storage: StorageConfig
    output: str
    work: str
    buckets: int
    rule: str
    ground_truth_parts: dict[int, tuple[str, ...]]
    body_models: BodyModelFiles | None
    h36m_regressor: str | None
    limits: SummaryLimits


@dataclass(frozen=True)
class LabelPiece:
    """Label rows of one bucket from one label group: the group's label files themselves (one bucket), or the
    files the split step wrote for this bucket."""

    group: int
    files: tuple[LabelFile, ...] = ()
    split: tuple[str, ...] = ()


def _read_columns(storage: Storage, uri: str) -> Iterator[pa.Table]:
    """A label Parquet file's evaluation columns, `LABEL_BATCH_ROWS` rows at a time."""
    with parquet_file(storage, uri) as parquet:
        names = set(parquet.schema_arrow.names)
        wanted = [c for c in (*COLUMNS, _ORDER, _SHARD, _HAS_SIGNALS) if c in names]
        for batch in parquet.iter_batches(batch_size=LABEL_BATCH_ROWS, columns=wanted):
            # Without the file's field metadata (column descriptions, kB per column): batches of small files are
            # held together before they are joined.
            yield pa.Table.from_arrays(batch.columns, names=batch.schema.names)


def _with_origin(table: pa.Table, f: LabelFile, start: int) -> pa.Table:
    """``table`` (rows ``start``... of label file ``f``) with the columns that say where each row came from."""
    n = table.num_rows
    has_signals = all(name in table.column_names for name in SIGNALS)
    return (
        table.append_column(_ORDER, pa.array(f.order_base + start + np.arange(n, dtype=np.int64)))
        .append_column(_SHARD, pa.array([f.name] * n, pa.string()))
        .append_column(_HAS_SIGNALS, pa.array(np.full(n, has_signals)))
    )


class SplitLabelsFn(beam.DoFn):
    """In: a `LabelGroup`. Out: ``(bucket, LabelPiece)`` for every bucket its rows fall in (module docstring)."""

    def __init__(self, settings: EvalSettings) -> None:
        self._settings = settings

    def setup(self) -> None:
        self._storage = Storage(self._settings.storage)

    def process(self, group: LabelGroup) -> Iterator[tuple[int, LabelPiece]]:
        s = self._settings
        if s.buckets == 1:
            yield 0, LabelPiece(group.index, files=group.files)
            return
        with BucketWriters(self._storage, join(s.work, "labels"), f"g{group.index:06d}") as writers:
            for f in group.files:
                start = 0
                for table in _read_columns(self._storage, f.uri):
                    table = _with_origin(table, f, start)
                    start += table.num_rows
                    ids = [table[c].to_pylist() if c in table.column_names else [None] * table.num_rows
                           for c in ("sample_id", "image_key", "source_uri")]  # fmt: skip
                    of = np.fromiter(
                        (bucket_of(label_identity(s.rule, *row), s.buckets) for row in zip(*ids, strict=True)),
                        dtype=np.int64,
                        count=table.num_rows,
                    )
                    for b in np.unique(of).tolist():
                        writers.write(b, table.filter(pa.array(of == b)))
            pieces = writers.finish()
        for b, uris in pieces.items():
            Metrics.counter(EVAL_METRICS, "label_pieces_written").inc(len(uris))
            yield b, LabelPiece(group.index, split=uris)


class JoinBucketFn(beam.DoFn):
    """In: ``(bucket, [LabelPiece, ...])``. Out: the bucket's `EvalPartial` (module docstring)."""

    def __init__(self, settings: EvalSettings) -> None:
        self._settings = settings

    def setup(self) -> None:
        s = self._settings
        self._storage = Storage(s.storage)
        self._meshes: MeshBuilder | None = load_meshes(self._storage, s.body_models)
        num_vertices = self._meshes.num_vertices if self._meshes else 0
        self._h36m = load_h36m_regressor(self._storage, s.h36m_regressor, num_vertices)

    def _ground_truth(self, bucket: int) -> GroundTruthTable:
        parts = self._settings.ground_truth_parts.get(bucket, ())
        return GroundTruthTable.concat(
            [batch.persons for uri in parts for batch in read_batches(self._storage, uri)]
        )  # problems were counted on the driver

    def _tables(self, piece: LabelPiece) -> Iterator[pa.Table]:
        """A piece's label rows with their origin columns, record batch by record batch."""
        for f in piece.files:
            start = 0
            for table in _read_columns(self._storage, f.uri):
                yield _with_origin(table, f, start)
                start += table.num_rows
        for uri in piece.split:
            yield from _read_columns(self._storage, uri)

    def _label_batches(self, pieces: list[LabelPiece]) -> Iterator[tuple[LabelColumns, bool]]:
        """``(rows, whether their files have an occlusion_level column)``, about `LABEL_BATCH_ROWS` at a time: the
        batches of small files (a shard of one person) are put together, so each join step is worth its cost."""
        held: list[pa.Table] = []
        rows = 0

        def flush() -> Iterator[tuple[LabelColumns, bool]]:
            nonlocal rows
            if held:
                table = pa.concat_tables(held)
                held.clear()
                rows = 0
                yield self._columns(table), "occlusion_level" in table.column_names

        for piece in pieces:
            for table in self._tables(piece):
                if held and not table.schema.equals(held[0].schema):
                    yield from flush()
                held.append(table)
                rows += table.num_rows
                if rows >= LABEL_BATCH_ROWS or len(held) >= HELD_TABLES:
                    yield from flush()
        yield from flush()

    @staticmethod
    def _columns(table: pa.Table) -> LabelColumns:
        return read_label_table(
            table,
            table[_ORDER].to_numpy(),
            table[_SHARD].to_pylist(),
            table[_HAS_SIGNALS].to_numpy(zero_copy_only=False),
        )

    def process(self, element: tuple[int, Iterable[LabelPiece]]) -> Iterator[EvalPartial]:
        bucket, pieces = element
        s = self._settings
        join_ = BucketJoin(self._ground_truth(bucket), EvalPartial(s.limits), self._meshes, self._h36m)
        matched = 0
        # The bucket's persons go to a local file first (row group by row group), then to storage in one upload: a
        # large bucket is never held in memory whole.
        with tempfile.TemporaryDirectory(prefix="dpmesh-eval-") as scratch:
            local = os.path.join(scratch, "persons.parquet")
            with pq.ParquetWriter(local, EVAL_PERSONS_SCHEMA, compression="zstd") as writer:
                for labels, has_occlusion in self._label_batches(sorted(pieces, key=lambda p: p.group)):
                    batch = join_.add(labels, has_occlusion)
                    if len(batch.labels):
                        writer.write_table(batch.persons_table())
                        matched += len(batch.labels)
            if matched:
                self._storage.upload_file(local, join(s.output, PERSONS_FOLDER, f"part-{bucket:05d}.parquet"))
        Metrics.counter(EVAL_METRICS, "label_rows").inc(join_.partial.counts["label_rows"])
        Metrics.counter(EVAL_METRICS, "persons_matched").inc(matched)
        Metrics.counter(EVAL_METRICS, "buckets_joined").inc()
        yield join_.partial

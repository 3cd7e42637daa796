"""Label rows as the evaluation reads them: the columns it needs, as arrays (`LabelColumns`), from a label Parquet
table, however hand-edited.

A label output is read as written by ``dpmesh-label`` / ``dpmesh-refilter`` (fixed-size float32 lists, one row per
person); a file edited by hand may hold other types, nulls or lists of another length: such a value is read as NaN
(the person is counted as non-finite, never fails the run), a confidence that is not a number as NaN, and a file
without the signal columns gives persons without signals (left out of the calibration fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa

from dpmesh_core.confidence import ConfidenceSignals
from schemas import fixed_list_to_numpy


SIGNALS: tuple[str, ...] = tuple(f.name for f in fields(ConfidenceSignals))
ID_COLUMNS = ("sample_id", "image_key", "person_idx", "source_uri")
ARRAY_COLUMNS = (("joints_3d", 72), ("global_orient", 3), ("body_pose", 69), ("betas", 10))
COLUMNS: tuple[str, ...] = (
    *ID_COLUMNS, *(name for name, _ in ARRAY_COLUMNS), "confidence", "quality_tier", "occlusion_level", *SIGNALS,
)  # fmt: skip
"""The label columns the evaluation reads (those a file lacks are absent, see `LabelColumns`)."""


@dataclass(frozen=True)
class LabelColumns:
    """``N`` label rows.

    Attributes:
        sample_id, image_key, person_idx, source_uri: the join values as read (any type; None where null).
        joints: `(N, 72)` SMPL-24 joints, metres, camera frame. pose: `(N, 72)` global_orient + body_pose, rad.
            betas: `(N, 10)`. All float64, NaN where missing or malformed.
        confidence: `(N,)` float64, NaN where not a number.
        quality_tier: the tier text of each row (``str`` of the value).
        occlusion_level: per row ``str(value or "unknown")``; None when the file has no such column.
        signals: `(N, 12)` float64 `SIGNALS` values, NaN where null; signals_null: `(N, 12)` True where null.
        has_signals: `(N,)` True where the row's file has every signal column.
        order: `(N,)` int64: the row's place in the label output (`order_key`), for stable, documented orders.
        shard: the name of the label file each row was read from (without ``.parquet``).
    """

    sample_id: list[Any]
    image_key: list[Any]
    person_idx: list[Any]
    source_uri: list[Any]
    joints: np.ndarray
    pose: np.ndarray
    betas: np.ndarray
    confidence: np.ndarray
    quality_tier: list[str]
    occlusion_level: list[str] | None
    signals: np.ndarray
    signals_null: np.ndarray
    has_signals: np.ndarray
    order: np.ndarray
    shard: list[str]

    def __len__(self) -> int:
        return int(self.order.shape[0])

    def take(self, rows: np.ndarray) -> LabelColumns:
        """The rows at ``rows`` (indices), in that order."""
        picked = rows.tolist()
        return LabelColumns(
            sample_id=[self.sample_id[i] for i in picked],
            image_key=[self.image_key[i] for i in picked],
            person_idx=[self.person_idx[i] for i in picked],
            source_uri=[self.source_uri[i] for i in picked],
            joints=self.joints[rows],
            pose=self.pose[rows],
            betas=self.betas[rows],
            confidence=self.confidence[rows],
            quality_tier=[self.quality_tier[i] for i in picked],
            occlusion_level=None if self.occlusion_level is None else [self.occlusion_level[i] for i in picked],
            signals=self.signals[rows],
            signals_null=self.signals_null[rows],
            has_signals=self.has_signals[rows],
            order=self.order[rows],
            shard=[self.shard[i] for i in picked],
        )


def order_key(folder_rank: int, file_rank: int, row: np.ndarray | int) -> np.ndarray:
    """The place of rows in a label output: ``annotations/`` files (rank 0) before ``rejected/`` (1), files in name
    order, rows in file order: what reading the output file by file sees. Packed in an int64: folder << 62 | file
    << 32 | row."""
    return (np.int64(folder_rank) << 62) | (np.int64(file_rank) << 32) | np.asarray(row, dtype=np.int64)


def _finite_number(value: Any) -> float:
    """A real number as float; NaN for anything else (None, text, a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _array(table: pa.Table, name: str, size: int) -> np.ndarray:
    """A list column as `(N, size)` float64; rows that are null, of another length or not numbers are NaN."""
    n = table.num_rows
    if name not in table.column_names:
        return np.full((n, size), np.nan)
    column = table[name]
    try:  # the written form: fixed-size numeric lists without nulls, read without Python objects
        values = fixed_list_to_numpy(column, (size,))
        if np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_:
            return values.astype(np.float64)
    except (ValueError, TypeError, pa.ArrowException):
        pass
    out = np.full((n, size), np.nan)
    for i, value in enumerate(column.to_pylist()):
        try:
            row = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            continue
        if row.size == size:
            out[i] = row
    return out


def _scalars(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A scalar column as ``(float64 values, null mask)``; not-a-number values are NaN and not null."""
    n = table.num_rows
    if name not in table.column_names:
        return np.full(n, np.nan), np.ones(n, bool)
    column = table[name]
    null = column.is_null().to_numpy(zero_copy_only=False)
    kind = column.type
    if (pa.types.is_floating(kind) or pa.types.is_integer(kind)) and not pa.types.is_boolean(kind):
        values = column.to_numpy().astype(np.float64) if column.null_count == 0 else np.array(
            [math.nan if v is None else float(v) for v in column.to_pylist()]
        )  # fmt: skip
        return values, null
    return np.array([_finite_number(v) for v in column.to_pylist()], dtype=np.float64), null


def _values(table: pa.Table, name: str) -> list[Any]:
    return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows


def read_label_table(
    table: pa.Table, order: np.ndarray, shard: list[str], has_signals: np.ndarray | None = None
) -> LabelColumns:
    """The evaluation's columns of a label table.

    Args:
        table: label rows (annotation schema, or any subset of `COLUMNS`).
        order: `(N,)` int64 `order_key` of each row. shard: each row's label file name.
        has_signals: `(N,)` whether each row's source file had every signal column; None: this table's own
            columns decide for every row.
    """
    n = table.num_rows
    signals = np.full((n, len(SIGNALS)), np.nan)
    signals_null = np.ones((n, len(SIGNALS)), dtype=bool)
    for j, name in enumerate(SIGNALS):
        signals[:, j], signals_null[:, j] = _scalars(table, name)
    if has_signals is None:
        has_signals = np.full(n, all(name in table.column_names for name in SIGNALS))
    occlusion = None
    if "occlusion_level" in table.column_names:
        occlusion = [str(v or "unknown") for v in table["occlusion_level"].to_pylist()]
    arrays = {name: _array(table, name, size) for name, size in ARRAY_COLUMNS}
    return LabelColumns(
        sample_id=_values(table, "sample_id"),
        image_key=_values(table, "image_key"),
        person_idx=_values(table, "person_idx"),
        source_uri=_values(table, "source_uri"),
        joints=arrays["joints_3d"],
        pose=np.concatenate([arrays["global_orient"], arrays["body_pose"]], axis=1),
        betas=arrays["betas"],
        confidence=_scalars(table, "confidence")[0],
        quality_tier=[str(v) for v in _values(table, "quality_tier")],
        occlusion_level=occlusion,
        signals=signals,
        signals_null=signals_null,
        has_signals=np.asarray(has_signals, dtype=bool),
        order=np.asarray(order, dtype=np.int64),
        shard=list(shard),
    )

"""Evaluate label rows against ground truth in one process: the API for small sets in hand (a notebook, a test).

``dpmesh-eval`` runs the same computation as a Beam pipeline whose memory stays bounded (`pipelines.eval.job`);
this module runs it on rows already in memory, with the same code: the join (`pipelines.eval.join`), the
vectorised errors (`pipelines.eval.person_errors`) and the summary (`pipelines.eval.summary`), whose figures are
exact up to its bounds (every figure of a set of up to 2,048 persons per group is).

* `evaluate_labels` (label output URI + ground-truth URI -> `EvaluationResult`), or `evaluate_rows` on rows in hand;
* `EvaluationResult.to_dict` (the document ``dpmesh-eval`` writes as ``eval.json``) and `read_evaluation` (that
  document back from storage, checked against its schema in `pipelines.eval.document`);
* `format_markdown` (the table ``dpmesh-eval`` prints and writes as ``eval.md``), from a result or its dict.

Label rows are read from ``<labels>/annotations/*.parquet`` and, unless excluded, ``<labels>/rejected/*.parquet``
(rejected persons are where a confidence must be low, so they belong in its evaluation). A label's SMPL-24 joints
are its stored ``joints_3d``; vertices (PVE, LSP-14) come from its SMPL parameters through the body model.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.common.label_set import ROW_FOLDERS
from pipelines.eval.ground_truth import (
    GroundTruthIndex,
    GroundTruthPerson,
    GroundTruthRowError,
    ground_truth_uris,
    read_parquet_ground_truth,
)
from pipelines.eval.ground_truth_table import GroundTruthTable
from pipelines.eval.join import BucketJoin
from pipelines.eval.label_columns import COLUMNS, SIGNALS, LabelColumns
from pipelines.eval.meshes import MeshBuilder
from pipelines.eval.plan import PROBLEM_EXAMPLES
from pipelines.eval.pw3d import sequence_file_persons
from pipelines.eval.result import EvaluationResult, format_markdown, read_evaluation
from pipelines.eval.summary import EvalPartial, SummaryLimits, finish
from pipelines.storage import Storage, join


__all__ = [
    "EvaluationResult", "MeshBuilder", "evaluate_labels", "evaluate_rows", "format_markdown", "read_evaluation",
    "read_ground_truth", "read_label_rows",
]  # fmt: skip


def _label_values(row: dict[str, Any], name: str, size: int) -> np.ndarray:
    """A label row's ``name`` as ``size`` float64 values; all NaN when absent or malformed (a hand-edited Parquet),
    so the person is counted as non-finite instead of failing the run."""
    try:
        values = np.asarray(row.get(name), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.empty(0)
    return values if values.size == size else np.full(size, math.nan)


def _finite_number(value: Any) -> float:
    """A real number as float; NaN for anything else (None, text, a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def label_columns_of_rows(rows: list[dict[str, Any]]) -> tuple[LabelColumns, bool]:
    """Label rows in hand (dicts of any types, as read with ``to_pylist``) as `LabelColumns`, in their order, and
    whether any row has an ``occlusion_level`` key (then rows without one count as ``unknown``)."""
    n = len(rows)
    has_occlusion = any("occlusion_level" in r for r in rows)
    signals = np.full((n, len(SIGNALS)), np.nan)
    signals_null = np.ones((n, len(SIGNALS)), dtype=bool)
    for i, row in enumerate(rows):
        for j, name in enumerate(SIGNALS):
            if row.get(name) is not None:
                signals[i, j], signals_null[i, j] = _finite_number(row[name]), False
    columns = LabelColumns(
        sample_id=[r.get("sample_id") for r in rows],
        image_key=[r.get("image_key") for r in rows],
        person_idx=[r.get("person_idx") for r in rows],
        source_uri=[r.get("source_uri") for r in rows],
        joints=np.array([_label_values(r, "joints_3d", 72) for r in rows]).reshape(n, 72),
        pose=np.array(
            [np.concatenate([_label_values(r, "global_orient", 3), _label_values(r, "body_pose", 69)]) for r in rows]
        ).reshape(n, 72),
        betas=np.array([_label_values(r, "betas", 10) for r in rows]).reshape(n, 10),
        confidence=np.array([_finite_number(r.get("confidence")) for r in rows], dtype=np.float64),
        quality_tier=[str(r.get("quality_tier")) for r in rows],
        occlusion_level=[str(r.get("occlusion_level") or "unknown") for r in rows] if has_occlusion else None,
        signals=signals,
        signals_null=signals_null,
        has_signals=np.array([all(name in r for name in SIGNALS) for r in rows], dtype=bool),
        order=np.arange(n, dtype=np.int64),
        shard=[""] * n,
    )
    return columns, has_occlusion


def evaluate_rows(
    rows: Iterable[dict[str, Any]],
    ground_truth: GroundTruthIndex,
    *,
    meshes: MeshBuilder | None = None,
    h36m_regressor: np.ndarray | None = None,
    error_metric: str = "pa_mpjpe_mm",
    sparsification_steps: int = 20,
    labels: str = "",
    ground_truth_uri: str = "",
    limits: SummaryLimits | None = None,
) -> EvaluationResult:
    """Join label rows to ground truth and compute every metric and breakdown.

    Args:
        rows: label rows (annotation schema columns; ``occlusion_level`` optional).
        ground_truth: the ground-truth persons, indexed.
        meshes: body models for vertices (PVE, LSP-14, ground truth given as SMPL parameters).
        h36m_regressor: `(17, V)` for the LSP-14 metrics.
        error_metric: the headline metric of the confidence quality (falls back to ``mpjpe_mm`` / the first
            computed metric when it cannot be computed).
        limits: the summary's bounds; default: every person listed, samples of the job's defaults.
    """
    rows = list(rows)
    columns, has_occlusion = label_columns_of_rows(rows)
    limits = limits or SummaryLimits(persons_json_max=len(rows))
    bucket = BucketJoin(
        GroundTruthTable.from_persons(ground_truth.persons), EvalPartial(limits), meshes, h36m_regressor
    )
    bucket.add(columns, has_occlusion)
    return finish(
        bucket.partial,
        ground_truth_persons=len(ground_truth),
        ground_truth_problems={"counts": dict(ground_truth.problems), "examples": list(ground_truth.examples)},
        error_metric=error_metric,
        sparsification_steps=sparsification_steps,
        labels=labels,
        ground_truth_uri=ground_truth_uri,
    )


def read_label_rows(storage: Storage, labels: str, include_rejected: bool = True) -> list[dict[str, Any]]:
    """The label rows of a ``dpmesh-label`` / ``dpmesh-refilter`` output, in file then row order (the columns the
    evaluation reads)."""
    rows: list[dict[str, Any]] = []
    for folder in ROW_FOLDERS if include_rejected else ROW_FOLDERS[:1]:
        for info in storage.list_top(join(labels, folder)):
            if not info.uri.endswith(".parquet"):
                continue
            table = pq.read_table(io.BytesIO(storage.read_bytes(info.uri)))
            rows.extend(table.select([c for c in COLUMNS if c in table.column_names]).to_pylist())
    return rows


def read_ground_truth(storage: Storage, uri: str) -> GroundTruthIndex:
    """Ground truth from Parquet (the documented layout) and/or 3DPW sequence ``.pkl`` files under ``uri``.

    Rows that cannot be used are counted by reason in the index's ``problems`` (never cut to fit).

    Raises:
        ValueError: no ground-truth file found, a file that cannot be read as its format (a pickle that would run
            code is one), or two persons with the same join key (`DuplicateGroundTruthError`); the message names
            the file.
    """
    uris = ground_truth_uris(storage, uri, (".parquet", ".pkl"))
    if not uris:
        raise ValueError(f"no ground truth (*.parquet or 3DPW *.pkl) at {uri!r}")
    parquet = [u for u in uris if u.endswith(".parquet")]
    read: list[GroundTruthPerson | GroundTruthRowError] = list(read_parquet_ground_truth(storage, parquet))
    for pkl in (u for u in uris if u.endswith(".pkl")):
        read.extend(sequence_file_persons(pkl, storage.read_bytes(pkl)))
    persons = [p for p in read if isinstance(p, GroundTruthPerson)]
    problems = [p for p in read if isinstance(p, GroundTruthRowError)]
    return GroundTruthIndex(
        persons, dict(Counter(p.reason for p in problems)), [str(p) for p in problems[:PROBLEM_EXAMPLES]]
    )


def evaluate_labels(
    labels: str,
    ground_truth: str,
    *,
    storage: Storage | None = None,
    meshes: MeshBuilder | None = None,
    h36m_regressor: np.ndarray | None = None,
    include_rejected: bool = True,
    error_metric: str = "pa_mpjpe_mm",
    sparsification_steps: int = 20,
) -> EvaluationResult:
    """Read a label output and its ground truth (local paths by default) and evaluate (see `evaluate_rows`)."""
    storage = storage or Storage()
    return evaluate_rows(
        read_label_rows(storage, labels, include_rejected),
        read_ground_truth(storage, ground_truth),
        meshes=meshes,
        h36m_regressor=h36m_regressor,
        error_metric=error_metric,
        sparsification_steps=sparsification_steps,
        labels=labels,
        ground_truth_uri=ground_truth,
    )

"""Joining label rows to ground truth held in memory, and what the join gives: the errors of the matched persons
(vectorised), their summary (`pipelines.eval.summary.EvalPartial`) and their per-person records.

One `BucketJoin` holds the ground truth of one bucket (or of a whole small evaluation) and takes the bucket's label
rows a batch at a time, so memory is the bucket's ground truth plus one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.eval.ground_truth import JoinKeys
from pipelines.eval.ground_truth_table import GroundTruthTable
from pipelines.eval.label_columns import LabelColumns
from pipelines.eval.meshes import MeshBuilder
from pipelines.eval.person_errors import METRICS, MatchedErrors, matched_errors
from pipelines.eval.summary import EvalPartial
from schemas.eval_persons import EVAL_PERSONS_SCHEMA


@dataclass(frozen=True)
class JoinedBatch:
    """The matched rows of one label batch: the rows, their ground-truth positions and their errors."""

    labels: LabelColumns
    ground_truth_rows: np.ndarray
    errors: MatchedErrors

    def persons_table(self) -> pa.Table:
        """The rows as `schemas.eval_persons.EVAL_PERSONS_SCHEMA` records."""
        labels, errors = self.labels, self.errors
        occlusion: list[str | None] = [None] * len(labels)
        if labels.occlusion_level is not None:
            occlusion = list(labels.occlusion_level)
        columns = {
            "sample_id": [str(s) for s in labels.sample_id],
            "shard": labels.shard,
            "label_set": ["rejected" if o >> 62 else "annotations" for o in labels.order.tolist()],
            "quality_tier": labels.quality_tier,
            "confidence": pa.array(labels.confidence, pa.float64(), mask=~np.isfinite(labels.confidence)),
            "occlusion_level": occlusion,
        }
        for name in METRICS:
            value = errors.values[name]
            columns[name] = pa.array(value, pa.float64(), mask=~np.isfinite(value))
        return pa.table(columns, schema=EVAL_PERSONS_SCHEMA)


class BucketJoin:
    """The ground truth of one bucket, matched against label batches.

    Args:
        ground_truth: the bucket's usable persons.
        meshes, h36m_regressor: as `pipelines.eval.person_errors.matched_errors`.
        partial: the summary the matched persons are added to.

    Raises:
        DuplicateGroundTruthError: two ground-truth persons with one key (checked before a run too).
    """

    def __init__(
        self,
        ground_truth: GroundTruthTable,
        partial: EvalPartial,
        meshes: MeshBuilder | None = None,
        h36m_regressor: np.ndarray | None = None,
    ) -> None:
        self.ground_truth = ground_truth
        self.keys = JoinKeys(ground_truth.join_keys())
        self.partial = partial
        self._meshes = meshes
        self._h36m = h36m_regressor
        self._matched = np.zeros(len(ground_truth), dtype=bool)

    def add(self, labels: LabelColumns, has_occlusion: bool) -> JoinedBatch:
        """Matches a batch of label rows, adds them to the summary, returns the matched ones.

        ``has_occlusion``: whether the rows' files have an ``occlusion_level`` column.
        """
        find = self.keys.find
        positions = np.fromiter(
            (
                -1 if (p := find(s, k, i, u)) is None else p
                for s, k, i, u in zip(labels.sample_id, labels.image_key, labels.person_idx, labels.source_uri,
                                      strict=True)
            ),
            dtype=np.int64,
            count=len(labels),
        )  # fmt: skip
        rows = np.flatnonzero(positions >= 0)
        matched, gt_rows = labels.take(rows), positions[rows]
        gt = self.ground_truth.take(gt_rows)
        errors = matched_errors(matched.joints, matched.pose, matched.betas, gt, self._meshes, self._h36m)
        newly = np.unique(gt_rows[~self._matched[gt_rows]])
        self._matched[newly] = True
        self.partial.add_rows(len(labels), has_occlusion)
        self.partial.add_matched(matched, errors, int(newly.size))
        return JoinedBatch(matched, gt_rows, errors)

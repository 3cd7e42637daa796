"""Every computable metric of a batch of matched persons (label against its ground truth), as arrays.

Which metrics a person has (`MatchedErrors.applies`) depends on its ground truth only:

* ``mpjpe_mm``, ``pa_mpjpe_mm``: ground-truth joints are known (given, or built from its SMPL parameters);
* ``pve_mm``: a body model is given and the ground truth has SMPL parameters;
* ``lsp14_*``: as ``pve_mm``, and an H36M regressor is given.

A metric that applies is NaN where the label's values are non-finite or malformed (the person is then counted as
non-finite and left out of the figures). Meshes are built in chunks of `MESH_CHUNK` persons, so memory stays
bounded whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.eval import metrics as m
from pipelines.eval.ground_truth_table import GENDER_CODES, GroundTruthTable
from pipelines.eval.meshes import MeshBuilder


# Metric names, in report order; "lsp14_*" need an H36M regressor, "pve_mm" and "lsp14_*" a body model.
METRICS: tuple[str, ...] = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "lsp14_mpjpe_mm", "lsp14_pa_mpjpe_mm")
# Persons whose meshes are built at once: 2 x 64 x 6890 x 3 float64 vertices is ~21 MB.
MESH_CHUNK = 64
# Persons whose joint errors are computed at once: the Procrustes temporaries stay near 10 MB per array.
JOINT_CHUNK = 8192


@dataclass(frozen=True)
class MatchedErrors:
    """Errors of ``N`` matched persons.

    Attributes:
        values: metric -> `(N,)` mm; NaN where the metric does not apply or its inputs are non-finite.
        applies: metric -> `(N,)` bool, whether the metric is computable for the person (see module docstring).
    """

    values: dict[str, np.ndarray]
    applies: dict[str, np.ndarray]

    @property
    def any_metric(self) -> np.ndarray:
        """`(N,)` True where at least one metric applies."""
        n = len(next(iter(self.values.values())))
        out = np.zeros(n, dtype=bool)
        for applies in self.applies.values():
            out |= applies
        return out

    @property
    def all_finite(self) -> np.ndarray:
        """`(N,)` True where every metric that applies is finite."""
        n = len(next(iter(self.values.values())))
        out = np.ones(n, dtype=bool)
        for name, applies in self.applies.items():
            out &= ~applies | np.isfinite(self.values[name])
        return out


def matched_errors(
    joints: np.ndarray,
    pose: np.ndarray,
    betas: np.ndarray,
    gt: GroundTruthTable,
    meshes: MeshBuilder | None = None,
    h36m_regressor: np.ndarray | None = None,
) -> MatchedErrors:
    """The errors of ``N`` labels against their ground truth (row ``i`` of ``gt`` is the ground truth of label ``i``).

    Args:
        joints: `(N, 72)` label SMPL-24 joints, metres, camera frame (NaN where malformed).
        pose: `(N, 72)` label axis-angle pose (global orientation first), rad; betas: `(N, 10)`.
        gt: `N` ground-truth persons.
        meshes: body models (PVE, LSP-14, ground truth given as SMPL parameters).
        h36m_regressor: `(17, V)` for the LSP-14 metrics.
    """
    n = len(gt)
    nan = np.full(n, np.nan)
    gt_joints = gt.joints.reshape(n, 24, 3).copy()
    meshed = gt.has_smpl & (meshes is not None)
    values = {name: nan.copy() for name in METRICS}
    applies = {name: np.zeros(n, dtype=bool) for name in METRICS}
    applies["pve_mm"] = meshed.copy()
    if h36m_regressor is not None:
        applies["lsp14_mpjpe_mm"] = applies["lsp14_pa_mpjpe_mm"] = meshed.copy()
    if meshes is not None:
        for start in range(0, n, MESH_CHUNK):
            rows = start + np.flatnonzero(meshed[start : start + MESH_CHUNK])
            if rows.size:
                _mesh_metrics(rows, pose, betas, gt, gt_joints, meshes, h36m_regressor, values)
    with_joints = gt.has_joints | meshed
    applies["mpjpe_mm"] = applies["pa_mpjpe_mm"] = with_joints
    pred = np.asarray(joints, np.float64).reshape(n, 24, 3)
    rows = np.flatnonzero(with_joints)
    for start in range(0, rows.size, JOINT_CHUNK):
        chunk = rows[start : start + JOINT_CHUNK]
        values["mpjpe_mm"][chunk] = m.mpjpe_mm_batch(pred[chunk], gt_joints[chunk])
        values["pa_mpjpe_mm"][chunk] = m.pa_mpjpe_mm_batch(pred[chunk], gt_joints[chunk])
    return MatchedErrors(values=values, applies=applies)


def _mesh_metrics(
    rows: np.ndarray,
    pose: np.ndarray,
    betas: np.ndarray,
    gt: GroundTruthTable,
    gt_joints: np.ndarray,
    meshes: MeshBuilder,
    h36m_regressor: np.ndarray | None,
    values: dict[str, np.ndarray],
) -> None:
    """PVE and LSP-14 of the persons at ``rows`` (all with SMPL ground truth), written into ``values``; their
    ground-truth joints, where not given, become those of the ground-truth mesh (in ``gt_joints``)."""
    gt_vertices = np.empty((rows.size, meshes.num_vertices, 3))
    gt_smpl_joints = np.empty((rows.size, 24, 3))
    for code, gender in enumerate(GENDER_CODES):
        of_gender = gt.gender[rows] == code
        if of_gender.any():
            smpl = gt.smpl[rows[of_gender]]
            pose72 = smpl[:, :72]
            gt_vertices[of_gender], gt_smpl_joints[of_gender] = meshes.meshes(pose72, smpl[:, 72:], gender)
    no_joints = ~gt.has_joints[rows]
    gt_joints[rows[no_joints]] = gt_smpl_joints[no_joints]
    label_pose, label_betas = np.asarray(pose, np.float64)[rows], np.asarray(betas, np.float64)[rows]
    finite = np.isfinite(label_pose).all(axis=1) & np.isfinite(label_betas).all(axis=1)
    if not finite.any():
        return
    pred_vertices, pred_joints = meshes.meshes(label_pose[finite], label_betas[finite])
    done = rows[finite]
    gv, gj = gt_vertices[finite], gt_smpl_joints[finite]
    values["pve_mm"][done] = m.pve_mm_batch(pred_vertices, gv, pred_joints[:, 0], gj[:, 0])
    if h36m_regressor is not None:
        values["lsp14_mpjpe_mm"][done] = m.lsp14_mpjpe_mm_batch(pred_vertices, gv, h36m_regressor)
        values["lsp14_pa_mpjpe_mm"][done] = m.lsp14_pa_mpjpe_mm_batch(pred_vertices, gv, h36m_regressor)

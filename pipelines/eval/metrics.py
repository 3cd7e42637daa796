"""Per-person 3D errors in mm: MPJPE (pelvis-aligned), PA-MPJPE (similarity Procrustes), PVE (pelvis-aligned).

Conventions (as DPMesh, JOTR and 3DCrowdNet evaluate 3DPW; pseudolabel_anchors.md §5):

* MPJPE: subtract each side's pelvis joint, then the mean Euclidean distance over the joints, x 1000.
* PA-MPJPE: align the prediction onto the ground truth by the least-squares similarity (scale, rotation,
  translation; `dpmesh_core.flip.pa_mpjpe_mm`, the one implementation in the project), then the mean distance.
* PVE: mean per-vertex distance after subtracting each mesh's SMPL pelvis (joint 0 of the SMPL regressor); no
  rotation or scale alignment.
* Joint sets: ``smpl24`` (the 24 SMPL joints, pelvis = joint 0) and ``lsp14`` (17 H36M joints regressed from the
  mesh with an H36M regressor `(17, 6890)`, pelvis = H36M joint 0, then the 14 evaluation joints `H36M_EVAL_14`).

Every function returns NaN (never raises) when an input holds a non-finite value, so one broken label cannot
poison an aggregate silently: callers count and drop NaN errors.
"""

from __future__ import annotations

import numpy as np

from dpmesh_core.flip import pa_mpjpe_mm


# H36M joint indices of the 14 LSP evaluation joints: hips, knees, ankles, neck (thorax), head top, shoulders,
# elbows, wrists (DPMesh dataloader/PW3D.py `h36m_eval_joint`).
H36M_EVAL_14: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16)
H36M_PELVIS = 0
SMPL_PELVIS = 0


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 2 or p.shape[1] != 3 or p.shape[0] < 1:
        raise ValueError(f"expected two (N, 3) arrays of the same shape, got {p.shape} and {g.shape}")
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        return None
    return p, g


def mpjpe_mm(pred: np.ndarray, gt: np.ndarray, pelvis: int = SMPL_PELVIS) -> float:
    """Pelvis-aligned mean per-joint position error.

    Args:
        pred, gt: `(J, 3)` joints, metres, same frame and joint order.
        pelvis: index of the root joint subtracted from each side.

    Returns:
        mm; NaN if any value is non-finite.
    """
    pair = _pair(pred, gt)
    if pair is None:
        return float("nan")
    p, g = pair
    return float(np.linalg.norm((p - p[pelvis]) - (g - g[pelvis]), axis=1).mean() * 1000.0)


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Procrustes-aligned MPJPE (scale, rotation, translation) of `(J, 3)` metres; mm, NaN if non-finite."""
    pair = _pair(pred, gt)
    if pair is None:
        return float("nan")
    return pa_mpjpe_mm(pair[1], pair[0])  # aligns its second argument onto the first


def pve_mm(
    pred_vertices: np.ndarray, gt_vertices: np.ndarray, pred_pelvis: np.ndarray, gt_pelvis: np.ndarray
) -> float:
    """Per-vertex error after subtracting each mesh's pelvis.

    Args:
        pred_vertices, gt_vertices: `(V, 3)` metres, same topology and frame.
        pred_pelvis, gt_pelvis: `(3,)` each mesh's SMPL joint 0, metres.

    Returns:
        mm; NaN if any value is non-finite.
    """
    pair = _pair(pred_vertices, gt_vertices)
    if pair is None or not (np.isfinite(pred_pelvis).all() and np.isfinite(gt_pelvis).all()):
        return float("nan")
    p, g = pair
    return float(np.linalg.norm((p - pred_pelvis) - (g - gt_pelvis), axis=1).mean() * 1000.0)


def lsp14(vertices: np.ndarray, h36m_regressor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 14 LSP evaluation joints and the H36M pelvis regressed from a mesh.

    Args:
        vertices: `(V, 3)` metres; h36m_regressor: `(17, V)`.

    Returns:
        ``(joints (14, 3), pelvis (3,))``, metres. MPJPE on LSP-14 subtracts this pelvis, which is not one of
        the 14.
    """
    h36m = np.asarray(h36m_regressor, dtype=np.float64) @ np.asarray(vertices, dtype=np.float64)
    return h36m[list(H36M_EVAL_14)], h36m[H36M_PELVIS]


def lsp14_mpjpe_mm(pred_vertices: np.ndarray, gt_vertices: np.ndarray, h36m_regressor: np.ndarray) -> float:
    """MPJPE on the 14 LSP joints, each side aligned at its own H36M pelvis; mm, NaN if non-finite."""
    pj, pp = lsp14(pred_vertices, h36m_regressor)
    gj, gp = lsp14(gt_vertices, h36m_regressor)
    pair = _pair(pj, gj)
    if pair is None or not (np.isfinite(pp).all() and np.isfinite(gp).all()):
        return float("nan")
    return float(np.linalg.norm((pj - pp) - (gj - gp), axis=1).mean() * 1000.0)


def lsp14_pa_mpjpe_mm(pred_vertices: np.ndarray, gt_vertices: np.ndarray, h36m_regressor: np.ndarray) -> float:
    """PA-MPJPE on the 14 LSP joints; mm, NaN if non-finite."""
    return pa_mpjpe(lsp14(pred_vertices, h36m_regressor)[0], lsp14(gt_vertices, h36m_regressor)[0])

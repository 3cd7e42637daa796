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
poison an aggregate silently: callers count and drop NaN errors. Each metric has one implementation, batched
(``*_batch``: `(B, ...)` in, `(B,)` mm out, NaN for the rows with a non-finite value; one stacked SVD for PA-MPJPE);
the per-person functions call it with a batch of one.
"""

from __future__ import annotations

import numpy as np

from dpmesh_core.flip import similarity_align_batch


# H36M joint indices of the 14 LSP evaluation joints: hips, knees, ankles, neck (thorax), head top, shoulders,
# elbows, wrists (DPMesh dataloader/PW3D.py `h36m_eval_joint`).
H36M_EVAL_14: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16)
H36M_PELVIS = 0
SMPL_PELVIS = 0


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two `(N, 3)` float64 arrays of one shape.

    Raises:
        ValueError: other shapes.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 2 or p.shape[1] != 3 or p.shape[0] < 1:
        raise ValueError(f"expected two (N, 3) arrays of the same shape, got {p.shape} and {g.shape}")
    return p, g


def _finite_rows(*arrays: np.ndarray) -> np.ndarray:
    """`(B,)` True where every value of the row is finite in every array (each `(B, ...)`)."""
    ok = np.ones(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    return ok


def _mean_distance_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`(B, N, 3)` twice → `(B,)` mean Euclidean distance, mm."""
    result: np.ndarray = np.linalg.norm(a - b, axis=2).mean(axis=1) * 1000.0
    return result


def mpjpe_mm_batch(pred: np.ndarray, gt: np.ndarray, pelvis: int = SMPL_PELVIS) -> np.ndarray:
    """Pelvis-aligned MPJPE of `(B, J, 3)` joints, metres → `(B,)` mm (NaN where a row is non-finite)."""
    p, g = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    out = np.full(p.shape[0], np.nan)
    ok = _finite_rows(p, g)
    p, g = p[ok], g[ok]
    out[ok] = _mean_distance_mm(p - p[:, pelvis : pelvis + 1], g - g[:, pelvis : pelvis + 1])
    return out


def pa_mpjpe_mm_batch(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """PA-MPJPE of `(B, J, 3)` joints, metres: each prediction aligned onto its ground truth by the least-squares
    similarity (`dpmesh_core.flip.similarity_align_batch`, one stacked SVD) → `(B,)` mm, NaN where non-finite."""
    p, g = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    out = np.full(p.shape[0], np.nan)
    ok = _finite_rows(p, g)
    out[ok] = _mean_distance_mm(similarity_align_batch(p[ok], g[ok]), g[ok])
    return out


def pve_mm_batch(
    pred_vertices: np.ndarray, gt_vertices: np.ndarray, pred_pelvis: np.ndarray, gt_pelvis: np.ndarray
) -> np.ndarray:
    """PVE of `(B, V, 3)` meshes after subtracting each mesh's `(B, 3)` pelvis, metres → `(B,)` mm."""
    p, g = np.asarray(pred_vertices, np.float64), np.asarray(gt_vertices, np.float64)
    pp, gp = np.asarray(pred_pelvis, np.float64), np.asarray(gt_pelvis, np.float64)
    out = np.full(p.shape[0], np.nan)
    ok = _finite_rows(p, g, pp, gp)
    out[ok] = _mean_distance_mm(p[ok] - pp[ok, None], g[ok] - gp[ok, None])
    return out


def lsp14_batch(vertices: np.ndarray, h36m_regressor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(B, V, 3)` meshes, `(17, V)` regressor → ``(joints (B, 14, 3), H36M pelvis (B, 3))``, metres. MPJPE on
    LSP-14 subtracts this pelvis, which is not one of the 14."""
    h36m = np.asarray(h36m_regressor, dtype=np.float64) @ np.asarray(vertices, dtype=np.float64)
    return h36m[:, list(H36M_EVAL_14)], h36m[:, H36M_PELVIS]


def lsp14_mpjpe_mm_batch(pred_vertices: np.ndarray, gt_vertices: np.ndarray, regressor: np.ndarray) -> np.ndarray:
    """MPJPE on the 14 LSP joints, each side aligned at its own H36M pelvis → `(B,)` mm."""
    pj, pp = lsp14_batch(pred_vertices, regressor)
    gj, gp = lsp14_batch(gt_vertices, regressor)
    out = np.full(pj.shape[0], np.nan)
    ok = _finite_rows(pj, gj, pp, gp)
    out[ok] = _mean_distance_mm(pj[ok] - pp[ok, None], gj[ok] - gp[ok, None])
    return out


def lsp14_pa_mpjpe_mm_batch(pred_vertices: np.ndarray, gt_vertices: np.ndarray, regressor: np.ndarray) -> np.ndarray:
    """PA-MPJPE on the 14 LSP joints → `(B,)` mm."""
    return pa_mpjpe_mm_batch(lsp14_batch(pred_vertices, regressor)[0], lsp14_batch(gt_vertices, regressor)[0])


def mpjpe_mm(pred: np.ndarray, gt: np.ndarray, pelvis: int = SMPL_PELVIS) -> float:
    """Pelvis-aligned mean per-joint position error.

    Args:
        pred, gt: `(J, 3)` joints, metres, same frame and joint order.
        pelvis: index of the root joint subtracted from each side.

    Returns:
        mm; NaN if any value is non-finite.
    """
    p, g = _pair(pred, gt)
    return float(mpjpe_mm_batch(p[None], g[None], pelvis)[0])


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Procrustes-aligned MPJPE (scale, rotation, translation) of `(J, 3)` metres; mm, NaN if non-finite."""
    p, g = _pair(pred, gt)
    return float(pa_mpjpe_mm_batch(p[None], g[None])[0])


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
    p, g = _pair(pred_vertices, gt_vertices)
    pp, gp = np.asarray(pred_pelvis, np.float64).reshape(1, 3), np.asarray(gt_pelvis, np.float64).reshape(1, 3)
    return float(pve_mm_batch(p[None], g[None], pp, gp)[0])


def lsp14(vertices: np.ndarray, h36m_regressor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 14 LSP evaluation joints `(14, 3)` and the H36M pelvis `(3,)` of one `(V, 3)` mesh (`lsp14_batch`)."""
    joints, pelvis = lsp14_batch(np.asarray(vertices)[None], h36m_regressor)
    return joints[0], pelvis[0]


def lsp14_mpjpe_mm(pred_vertices: np.ndarray, gt_vertices: np.ndarray, h36m_regressor: np.ndarray) -> float:
    """MPJPE on the 14 LSP joints, each side aligned at its own H36M pelvis; mm, NaN if non-finite."""
    p, g = np.asarray(pred_vertices)[None], np.asarray(gt_vertices)[None]
    return float(lsp14_mpjpe_mm_batch(p, g, h36m_regressor)[0])


def lsp14_pa_mpjpe_mm(pred_vertices: np.ndarray, gt_vertices: np.ndarray, h36m_regressor: np.ndarray) -> float:
    """PA-MPJPE on the 14 LSP joints; mm, NaN if non-finite."""
    p, g = np.asarray(pred_vertices)[None], np.asarray(gt_vertices)[None]
    return float(lsp14_pa_mpjpe_mm_batch(p, g, h36m_regressor)[0])

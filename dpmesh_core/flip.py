"""Flip test-time consistency: mirrored model inputs, the SMPL pose un-flip and PA-MPJPE (pure numpy).

The ``flip_pa_mpjpe_mm`` signal is the disagreement between the prediction on a person's crop and the un-flipped
prediction on the horizontally mirrored crop (pseudolabel_anchors.md §3, "flip consistency"). This module holds
the pure steps; `dpmesh_core.prediction.predict_persons(..., flip=True)` runs them around the model::

    persons_f = [flip_person_inputs(p, geometry) for p in persons]
    out_f = model(**batch_inputs(persons_f, device, dtype))             # same model, mirrored batch
    pose = unflip_pose(out_f.smpl_pose.cpu().numpy())                   # (B, 72), back in the original frame
    verts = model.body_model(torch.from_numpy(pose), out_f.smpl_shape, torch.zeros(B, 3))
    joints_f = model.body_model.joints30(verts)[:, :24].numpy()         # SMPL-24, metres
    flip_pa_mpjpe_mm = flip_consistency_mm(preds[i].joints_3d, joints_f[i])

Translation is irrelevant (PA-MPJPE removes a similarity transform), so the flipped run's camera is never used.

Conventions (numbers for the official geometry, S = 256 px crops and a G = 32 keypoint grid; other sizes come
from the model's `CropGeometry`):

* Crop pixels: `dpmesh_core.preprocessing` warps with OpenCV's convention, crop pixel ``i`` holds the image at
  crop coordinate ``i``. Reversing the pixel columns therefore maps crop coordinate ``x_px`` to ``S - 1 - x_px``
  (``255 - x_px``), i.e. ``x -> (S - 1) G / S - x`` (``31.875 - x``) in the model's grid units
  (``x_grid = x_px G / S``). This is the exact mirror of the crop array, so keypoints stay on the image content
  they marked. (It is not bit-identical to re-cropping a mirrored full image: DPMesh's affine puts the box centre at
  crop coordinate S/2 = 128, not 127.5, so that crop would sit 1 crop px = 0.125 grid units to the right; the flip
  test only needs a self-consistent mirrored input.)
* Mirroring the camera frame is ``M = diag(-1, 1, 1)``: a rotation ``R(w)`` becomes ``M R(w) M = R(-M w)``, i.e.
  the axis-angle ``(wx, wy, wz) -> (wx, -wy, -wz)``; for SMPL's local joint rotations the same holds because the
  template is left/right symmetric about its x = 0 plane. With the left/right joint swap this is the standard
  SMPL pose flip, and it is an involution.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpmesh_core.config import CropGeometry
from dpmesh_core.joints import SMPL24_JOINTS, SMPL30_JOINTS
from dpmesh_core.preprocessing import PersonInputs


def _swap_side(name: str) -> str:
    if name.startswith("L_"):
        return "R_" + name[2:]
    if name.startswith("R_"):
        return "L_" + name[2:]
    return name


def mirror_permutation(names: tuple[str, ...]) -> tuple[int, ...]:
    """Index of each joint's left/right mirror (``L_x`` <-> ``R_x``, others fixed) within ``names``."""
    return tuple(names.index(_swap_side(n)) for n in names)


SMPL24_FLIP_PERM: tuple[int, ...] = mirror_permutation(SMPL24_JOINTS)
"""Left/right swap of the 24 SMPL joints: (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, ...)."""
SMPL30_FLIP_PERM: tuple[int, ...] = mirror_permutation(SMPL30_JOINTS)
"""Left/right swap of the 30-joint input set (eyes and ears included)."""


def _crop_flip(crop_size: int) -> np.ndarray:
    """Crop-pixel mirror as a homogeneous `(3, 3)` affine: x -> (S - 1) - x, y -> y. Its own inverse."""
    return np.array([[-1.0, 0.0, crop_size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def _grid_flip_offset(geometry: CropGeometry) -> float:
    """The mirror's offset in grid units, ``x -> offset - x``: (S - 1) G / S (31.875 for 256 px and 32)."""
    return (geometry.crop_size - 1) * geometry.heatmap_size / geometry.crop_size


def _homogeneous(affine: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(affine, dtype=np.float64), [0.0, 0.0, 1.0]])


def flip_person_inputs(p: PersonInputs, geometry: CropGeometry) -> PersonInputs:
    """Horizontally mirrored model inputs: crop, 30 keypoints (left/right swapped), mask and crop affines.

    Keypoints: ``x -> 31.875 - x`` (grid units, official geometry; see the module docstring), rows permuted with
    `SMPL30_FLIP_PERM`. Mask: the permuted mask and-ed with the model's inside test ``0 <= x, y < G`` on the new
    coordinates, so a joint in the last crop pixel column (``x > 31.875``) is masked after the flip; otherwise
    flipping twice is the identity. ``img2crop`` /
    ``crop2img`` are composed with the crop mirror (they map full-image px to flipped-crop px and back), while
    ``bbox_xywh``, ``focal`` and ``image_hw`` are unchanged: the geometry is valid for the crop camera only, and a
    full-image camera solved from the flipped prediction is meaningless.

    Args:
        p: inputs from `dpmesh_core.preprocessing.prepare_person`.
        geometry: the crop geometry `p` was prepared with (the model's `config.crop_geometry`).

    Returns:
        New `PersonInputs` (arrays copied, float32 as the originals).
    """
    perm = list(SMPL30_FLIP_PERM)
    grid = geometry.heatmap_size
    joints = np.asarray(p.joints, dtype=np.float32)[perm].copy()
    joints[:, 0] = np.float32(_grid_flip_offset(geometry)) - joints[:, 0]
    x, y = joints[:, 0], joints[:, 1]
    inside = (x >= 0) & (x < grid) & (y >= 0) & (y < grid)
    mask = (np.asarray(p.joints_mask, dtype=np.float32)[perm, 0] > 0) & inside
    crop_flip = _crop_flip(geometry.crop_size)
    img2crop = (crop_flip @ _homogeneous(p.img2crop))[:2]
    crop2img = (_homogeneous(p.crop2img) @ crop_flip)[:2]
    return dataclasses.replace(
        p,
        image=np.ascontiguousarray(p.image[:, :, ::-1]),
        joints=joints,
        joints_mask=mask.astype(np.float32)[:, None],
        img2crop=img2crop.astype(np.float32),
        crop2img=crop2img.astype(np.float32),
        bbox_xywh=np.asarray(p.bbox_xywh, dtype=np.float32).copy(),
    )


def unflip_pose(pose72: np.ndarray) -> np.ndarray:
    """SMPL pose of the mirrored body: joints permuted left/right, axis-angle y and z negated (an involution).

    Args:
        pose72: `(..., 72)` axis-angle, root first (SMPL-24 order).

    Returns:
        `(..., 72)` array of the input's float dtype.

    Raises:
        ValueError: last dimension is not 72.
    """
    pose = np.asarray(pose72)
    if pose.shape[-1] != 72:
        raise ValueError(f"pose72: expected shape (..., 72), got {pose.shape}")
    aa = pose.reshape(*pose.shape[:-1], 24, 3)[..., list(SMPL24_FLIP_PERM), :]
    out = aa * np.array([1.0, -1.0, -1.0], dtype=aa.dtype if np.issubdtype(aa.dtype, np.floating) else np.float64)
    result: np.ndarray = out.reshape(pose.shape)
    return result


def similarity_align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Umeyama similarity (scale, rotation, translation) least-squares alignment of ``source`` onto ``target``.

    Args:
        source, target: `(N, 3)` corresponding points.

    Returns:
        `(N, 3)` float64 aligned source. A degenerate source (all points equal) gets scale 0 (the target centroid).
    """
    aligned: np.ndarray = similarity_align_batch(np.asarray(source)[None], np.asarray(target)[None])[0]
    return aligned


def similarity_align_batch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`similarity_align` of a batch at once: one stacked SVD instead of a Python loop per pair.

    Args:
        source, target: `(B, N, 3)` corresponding points, finite.

    Returns:
        `(B, N, 3)` float64, each ``source[b]`` aligned onto ``target[b]``; a degenerate source (all its points
        equal) gets scale 0 (the target centroid).
    """
    src = np.asarray(source, dtype=np.float64)
    tgt = np.asarray(target, dtype=np.float64)
    mu_s, mu_t = src.mean(axis=1, keepdims=True), tgt.mean(axis=1, keepdims=True)
    xs, xt = src - mu_s, tgt - mu_t
    var_s = (xs**2).sum(axis=(1, 2))
    u, sing, vt = np.linalg.svd(np.swapaxes(xs, 1, 2) @ xt)  # K = sum_i xs_i xt_i^T, per pair
    d = np.ones((src.shape[0], 3))
    sign = np.sign(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2)))
    d[:, -1] = np.where(sign == 0, 1.0, sign)  # no reflections
    rot = np.swapaxes(vt, 1, 2) @ (d[:, :, None] * np.swapaxes(u, 1, 2))
    degenerate = var_s <= 1e-18
    scale = np.where(degenerate, 0.0, (sing * d).sum(axis=1) / np.where(degenerate, 1.0, var_s))
    aligned: np.ndarray = (scale[:, None, None] * xs) @ np.swapaxes(rot, 1, 2) + mu_t
    return aligned


def pa_mpjpe_mm(a: np.ndarray, b: np.ndarray) -> float:
    """Procrustes-aligned mean per-joint position error: ``b`` aligned onto ``a`` by a similarity transform.

    Args:
        a: `(N, 3)` reference joints, metres.
        b: `(N, 3)` joints to align, metres.

    Returns:
        Mean Euclidean distance after alignment, mm; NaN if any input is non-finite (never raises on values).

    Raises:
        ValueError: shapes differ or are not `(N, 3)` with N >= 1.
    """
    ref = np.asarray(a, dtype=np.float64)
    other = np.asarray(b, dtype=np.float64)
    if ref.shape != other.shape or ref.ndim != 2 or ref.shape[1] != 3 or ref.shape[0] < 1:
        raise ValueError(f"pa_mpjpe_mm: expected two (N, 3) arrays, got {ref.shape} and {other.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(other).all()):
        return float("nan")
    aligned = similarity_align(other, ref)
    return float(np.linalg.norm(aligned - ref, axis=1).mean() * 1000.0)


def flip_consistency_mm(joints_a: np.ndarray, joints_b_flipped_back: np.ndarray) -> float:
    """``flip_pa_mpjpe_mm``: PA-MPJPE (mm) between the original SMPL-24 joints and those of the un-flipped pose.

    Args:
        joints_a: `(24, 3)` joints of the prediction on the original crop (``PersonPrediction.joints_3d``), m.
        joints_b_flipped_back: `(24, 3)` body-model joints of ``unflip_pose(pose on the flipped crop)``, m.
    """
    return pa_mpjpe_mm(joints_a, joints_b_flipped_back)

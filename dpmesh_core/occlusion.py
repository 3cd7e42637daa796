"""Per-person occlusion metadata (pure numpy): keypoint visibility counts, joints in the image, crowd index, level.

Fills the occlusion columns of ``schemas.annotations``; every threshold lives in :mod:`schemas.occlusion`. With
``kp`` the person's input COCO-17 keypoints ``(x px, y px, conf)``:

* visibility of each keypoint (`keypoint_visibility`): for ``keypoint_source == 'annotations'`` the stored conf is
  the COCO flag mapped by ``COCO_VISIBILITY_CONFIDENCE`` (v = 2 -> 1.0 visible, v = 1 -> 0.5 occluded, v = 0 -> 0
  missing); for detected keypoints the ViTPose score: ``>= DETECTOR_VISIBLE_MIN_SCORE`` visible,
  ``>= DETECTOR_OCCLUDED_MIN_SCORE`` occluded, else missing. Non-finite x, y or conf is missing.
  ``n_kp_visible + n_kp_occluded + n_kp_missing == 17``. A keypoint is *present* when visible or occluded.
* ``joints_in_image_frac``: the 24 ``joints_3d`` projected with ``K`` exactly as ``joints_2d_proj`` is
  (``u = f x / (z + 1e-4) + c_x``, ``v = f y / (z + 1e-4) + c_y``); a joint counts inside when ``z + 1e-4 > 0``
  and ``0 <= u < W``, ``0 <= v < H``. SMPL-24 rather than COCO-17 because it covers the body (spine, hands, feet)
  and not five face points, and because the reprojection covers joints no annotator could label (outside the
  image); the COCO-17 counterpart is ``truncation``.
* ``crowd_index`` (CrowdPose, Li et al. CVPR 2019, per person): ``N_b / N_a`` with ``N_a`` this person's present
  keypoints inside its own ``bbox_xyxy`` and ``N_b`` the other persons' present keypoints inside that box (bounds
  inclusive); None when ``N_a == 0``. CrowdPose's image-level index is the mean of this over the persons.
* ``occlusion_level``: ``schemas.occlusion.OCCLUSION_LEVEL_RULE``.

The maximum IoU with another person is ``crowding_iou`` (``dpmesh_core.confidence``), not repeated here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas.annotations import KeypointSource
from schemas.occlusion import (
    ANNOTATION_OCCLUDED_MIN_CONF,
    ANNOTATION_VISIBLE_MIN_CONF,
    DETECTOR_OCCLUDED_MIN_SCORE,
    DETECTOR_VISIBLE_MIN_SCORE,
    HEAVY_MAX_JOINTS_IN_IMAGE,
    HEAVY_MIN_CROWD_INDEX,
    HEAVY_MIN_HIDDEN_KP,
    KP_MISSING,
    KP_OCCLUDED,
    KP_VISIBLE,
    NONE_MAX_CROWD_INDEX,
    NONE_MAX_HIDDEN_KP,
    NONE_MIN_JOINTS_IN_IMAGE,
    OcclusionLevel,
)


PROJECTION_Z_GUARD = 1e-4
"""Added to z before dividing, as ``dpmesh_core.geometry.perspective_projection`` does (the official guard)."""


@dataclass(frozen=True)
class OcclusionSignals:
    """The occlusion columns of ``schemas.annotations`` (formulas in the module docstring)."""

    n_kp_visible: int
    n_kp_occluded: int
    n_kp_missing: int
    joints_in_image_frac: float
    crowd_index: float | None
    occlusion_level: str


def keypoint_visibility(keypoints_2d: np.ndarray, keypoint_source: str) -> np.ndarray:
    """Visibility class of each keypoint: ``KP_VISIBLE`` (2), ``KP_OCCLUDED`` (1) or ``KP_MISSING`` (0).

    Args:
        keypoints_2d: `(..., 17, 3)` x px, y px, conf (annotations) or score (detector).
        keypoint_source: a ``KeypointSource`` value; anything but ``annotations`` reads conf as a detector score.

    Returns:
        `(..., 17)` int8.
    """
    kp = np.asarray(keypoints_2d, dtype=np.float64)
    conf = kp[..., 2]
    finite = np.isfinite(kp).all(axis=-1)
    if keypoint_source == KeypointSource.ANNOTATIONS.value:
        visible_min, occluded_min = ANNOTATION_VISIBLE_MIN_CONF, ANNOTATION_OCCLUDED_MIN_CONF
    else:
        visible_min, occluded_min = DETECTOR_VISIBLE_MIN_SCORE, DETECTOR_OCCLUDED_MIN_SCORE
    with np.errstate(invalid="ignore"):
        classes = np.where(conf >= visible_min, KP_VISIBLE, np.where(conf >= occluded_min, KP_OCCLUDED, KP_MISSING))
    return np.where(finite, classes, KP_MISSING).astype(np.int8)


def joints_in_image_fraction(
    joints_3d: np.ndarray, focal_length: float, principal_point: np.ndarray, image_hw: tuple[int, int]
) -> float:
    """Fraction 0-1 of the camera-frame joints whose projection lies inside the image; NaN if any is non-finite.

    Args:
        joints_3d: `(J, 3)` m, full-image camera frame (OpenCV axes).
        focal_length: px; principal_point: `(2,)` px (c_x, c_y).
        image_hw: (H, W) px.
    """
    joints = np.asarray(joints_3d, dtype=np.float64)
    if not np.isfinite(joints).all() or not math.isfinite(focal_length):
        return math.nan
    height, width = image_hw
    z = joints[:, 2] + PROJECTION_Z_GUARD
    in_front = z > 0
    safe_z = np.where(in_front, z, 1.0)
    principal = np.asarray(principal_point, dtype=np.float64)
    u = joints[:, 0] / safe_z * focal_length + principal[0]
    v = joints[:, 1] / safe_z * focal_length + principal[1]
    inside = in_front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return float(inside.mean())


def _in_box(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """`(..., 2)` points inside the xyxy box, bounds inclusive."""
    x, y = points[..., 0], points[..., 1]
    inside: np.ndarray = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    return inside


def crowd_index(
    keypoints_2d: np.ndarray,
    bbox_xyxy: np.ndarray,
    other_keypoints: np.ndarray,
    keypoint_source: str,
) -> float | None:
    """CrowdPose crowd index of one person: other persons' present keypoints in its box / its own (module docstring).

    Args:
        keypoints_2d: `(17, 3)` this person's keypoints; bbox_xyxy: `(4,)` its box, px.
        other_keypoints: `(K, 17, 3)` the other persons of the image (K may be 0), same source.
        keypoint_source: how to read the conf column (`keypoint_visibility`).

    Returns:
        ``N_b / N_a``, or None when ``N_a == 0`` (undefined) or the box is non-finite.
    """
    box = np.asarray(bbox_xyxy, dtype=np.float64)
    if not np.isfinite(box).all():
        return None
    own = np.asarray(keypoints_2d, dtype=np.float64)
    others = np.asarray(other_keypoints, dtype=np.float64).reshape(-1, 17, 3)
    own_present = keypoint_visibility(own, keypoint_source) != KP_MISSING
    n_own = int((own_present & _in_box(own[:, :2], box)).sum())
    if n_own == 0:
        return None
    others_present = keypoint_visibility(others, keypoint_source) != KP_MISSING
    n_others = int((others_present & _in_box(others[..., :2], box)).sum())
    return n_others / n_own


def occlusion_level(n_hidden: int, crowd: float | None, joints_in_image_frac: float) -> str:
    """``none`` / ``partial`` / ``heavy`` (``schemas.occlusion.OCCLUSION_LEVEL_RULE``).

    A NaN ``joints_in_image_frac`` (non-finite prediction) can never be ``none``.
    """
    crowd_value = 0.0 if crowd is None else crowd
    if (
        n_hidden >= HEAVY_MIN_HIDDEN_KP
        or crowd_value >= HEAVY_MIN_CROWD_INDEX
        or joints_in_image_frac < HEAVY_MAX_JOINTS_IN_IMAGE
    ):
        return OcclusionLevel.HEAVY.value
    if (
        n_hidden <= NONE_MAX_HIDDEN_KP
        and crowd_value < NONE_MAX_CROWD_INDEX
        and joints_in_image_frac >= NONE_MIN_JOINTS_IN_IMAGE
    ):
        return OcclusionLevel.NONE.value
    return OcclusionLevel.PARTIAL.value


def compute_occlusion(
    keypoints_2d: np.ndarray,
    keypoint_source: str,
    bbox_xyxy: np.ndarray,
    other_keypoints: np.ndarray,
    joints_3d: np.ndarray,
    focal_length: float,
    principal_point: np.ndarray,
    image_hw: tuple[int, int],
) -> OcclusionSignals:
    """Every occlusion column of one person (arguments as in the functions above). Never raises on NaN values."""
    visibility = keypoint_visibility(keypoints_2d, keypoint_source)
    n_visible = int((visibility == KP_VISIBLE).sum())
    n_occluded = int((visibility == KP_OCCLUDED).sum())
    n_missing = int((visibility == KP_MISSING).sum())
    in_image = joints_in_image_fraction(joints_3d, focal_length, principal_point, image_hw)
    crowd = crowd_index(keypoints_2d, bbox_xyxy, other_keypoints, keypoint_source)
    return OcclusionSignals(
        n_kp_visible=n_visible,
        n_kp_occluded=n_occluded,
        n_kp_missing=n_missing,
        joints_in_image_frac=in_image,
        crowd_index=crowd,
        occlusion_level=occlusion_level(n_occluded + n_missing, crowd, in_image),
    )

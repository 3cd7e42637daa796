"""Keypoint visibility encoding and occlusion thresholds: the one home of the numbers behind the occlusion columns.

``schemas.annotations`` states them in the field metadata and ``dpmesh_core.occlusion`` computes the columns from
them, so the text a consumer reads and the code that fills the column cannot drift apart. Constants only (the
schemas layer holds no logic beyond table building).
"""

from __future__ import annotations

from enum import Enum


COCO_VISIBILITY_CONFIDENCE: dict[int, float] = {0: 0.0, 1: 0.5, 2: 1.0}
"""COCO visibility flag ``v`` -> the confidence stored in ``keypoints_2d[:, 2]`` for annotated persons.

``v = 2`` labelled and visible, ``v = 1`` labelled but occluded (its position is known, so it still counts as a
valid DPMesh input), ``v = 0`` not labelled (x = y = 0 in COCO files).
"""

# Keypoint classes (the values of ``dpmesh_core.occlusion.keypoint_visibility``), COCO's own 0/1/2.
KP_MISSING, KP_OCCLUDED, KP_VISIBLE = 0, 1, 2

ANNOTATION_VISIBLE_MIN_CONF = 0.75
"""Annotated keypoints: conf >= 0.75 is visible (v = 2, stored 1.0); the midpoint between the stored 0.5 and 1."""
ANNOTATION_OCCLUDED_MIN_CONF = 0.25
"""Annotated keypoints: 0.25 <= conf < 0.75 is occluded (v = 1, stored 0.5); below is missing (v = 0, stored 0)."""

DETECTOR_VISIBLE_MIN_SCORE = 0.5
"""Detected keypoints (ViTPose): score >= 0.5 counts as visible. A heuristic, not a visibility label: top-down pose
models score occluded joints lower, but a low score may also be a wrong detection."""
DETECTOR_OCCLUDED_MIN_SCORE = 0.3
"""Detected keypoints: 0.3 <= score < 0.5 counts as occluded (located, weakly seen); below 0.3 as missing. 0.3 is
4D-Humans' keypoint validity threshold (the default ``filter.kp_conf_threshold``), fixed here so that the counts
mean the same thing whatever filter a run used."""


class OcclusionLevel(str, Enum):
    """Coarse occlusion class of a person (``occlusion_level``); rule in `OCCLUSION_LEVEL_RULE`."""

    NONE = "none"
    PARTIAL = "partial"
    HEAVY = "heavy"


OCCLUSION_LEVELS: frozenset[str] = frozenset(level.value for level in OcclusionLevel)

# occlusion_level thresholds. hidden = n_kp_occluded + n_kp_missing (of the 17 COCO keypoints).
NONE_MAX_HIDDEN_KP = 2  # none: at most 2 of 17 keypoints not visible (a turned head hides an ear or eye)
HEAVY_MIN_HIDDEN_KP = 9  # heavy: more than half of the 17 keypoints not visible
NONE_MAX_CROWD_INDEX = 0.1  # none: crowd_index < 0.1 (null counts as 0: no own keypoint in the box to compare)
HEAVY_MIN_CROWD_INDEX = 1.0  # heavy: as many other persons' keypoints in the box as own ones, or more
NONE_MIN_JOINTS_IN_IMAGE = 1.0  # none: every SMPL joint projects inside the image
HEAVY_MAX_JOINTS_IN_IMAGE = 0.5  # heavy: fewer than half of the SMPL joints project inside the image

OCCLUSION_LEVEL_RULE = (
    f"hidden = n_kp_occluded + n_kp_missing; 'heavy' if hidden >= {HEAVY_MIN_HIDDEN_KP} or crowd_index >= "
    f"{HEAVY_MIN_CROWD_INDEX} or joints_in_image_frac < {HEAVY_MAX_JOINTS_IN_IMAGE}; else 'none' if hidden <= "
    f"{NONE_MAX_HIDDEN_KP} and crowd_index < {NONE_MAX_CROWD_INDEX} (null counts as 0) and joints_in_image_frac >= "
    f"{NONE_MIN_JOINTS_IN_IMAGE}; else 'partial'"
)
"""The ``occlusion_level`` rule in words, built from the constants above (used in the field metadata and README)."""

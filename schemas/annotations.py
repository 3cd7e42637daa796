"""Per-person SMPL pseudo-labels: ``annotations/`` (accepted) and ``rejected/`` (same schema, non-empty ``reasons``).

Conventions (DESIGN.md 3.3, pseudolabel_anchors.md section 2):

* SMPL **neutral** body model, 10 betas, rotations as **axis-angle in radians**.
* 3D quantities in **metres** in the **full-image camera frame with OpenCV axes** (x right, y down,
  z forward); the intrinsics are ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` with ``f = focal_length``
  and ``(cx, cy) = principal_point``. ``transl`` is SMPL's own ``transl`` argument: it moves the SMPL
  origin, not the pelvis, so ``smpl(global_orient, body_pose, betas, transl)`` gives camera-frame vertices.
* 2D quantities in **full-image pixels** (after EXIF orientation), origin top-left, x right, y down.
* Matrices are nested fixed-size lists, row-major: ``keypoints_2d`` is 17 lists of ``(x, y, conf)`` in
  COCO-17 order (:data:`COCO17_KEYPOINT_NAMES`), so ``np.asarray(column.to_pylist())`` has shape
  ``(N, 17, 3)``. A keypoint is *valid* when x, y are finite and conf >= the filter's keypoint threshold.
* Only persons the model labelled have rows (finite outputs); every other person is an errors row.
"""

from __future__ import annotations

from enum import Enum

import pyarrow as pa

from schemas.metadata import (
    FRAME_CAMERA,
    FRAME_IMAGE,
    FRAME_SMPL_PARENT,
    fixed_list,
    fixed_matrix,
    make_field,
    make_schema,
    string_list,
)


ANNOTATIONS_SCHEMA_NAME = "annotations"

COCO17_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
"""Order of ``keypoints_2d`` and ``joints_2d_proj`` rows (COCO person keypoints)."""

SMPL24_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)  # fmt: skip
"""Order of ``joints_3d`` rows (SMPL kinematic tree; ``body_pose`` covers joints 1..23)."""


class KeypointSource(str, Enum):
    """Where the input box and 2D keypoints came from (``keypoint_source``)."""

    ANNOTATIONS = "annotations"
    VITPOSE = "vitpose"


class QualityTier(str, Enum):
    """Label quality (``quality_tier``), the string form of the anchors' 0..3 tiers.

    ``gold`` (3, high) and ``silver`` (2) are usable as SMPL supervision; ``bronze`` (1) keeps the 2D
    evidence but SMPL should be switched off (4D-Humans' ``has_body_pose = 0`` practice); ``reject``
    (0) rows go to ``rejected/`` with non-empty ``reasons``.
    """

    GOLD = "gold"
    SILVER = "silver"
    BRONZE = "bronze"
    REJECT = "reject"


QUALITY_TIERS: frozenset[str] = frozenset(tier.value for tier in QualityTier)

_F32 = pa.float32()

_IDENTITY = [
    make_field("sample_id", pa.string(), "'<image_key>_p<person_idx>', unique per person across the corpus."),
    make_field("image_key", pa.string(), "Dot-free sample key of the image (WebDataset __key__)."),
    make_field("shard", pa.string(), "Input shard name, e.g. 'shard-000003'."),
    make_field("source_uri", pa.string(), "URI of the original image file."),
    make_field("image_width", pa.int32(), "Image width after EXIF orientation.", unit="px", frame=FRAME_IMAGE),
    make_field("image_height", pa.int32(), "Image height after EXIF orientation.", unit="px", frame=FRAME_IMAGE),
    make_field("person_idx", pa.int32(), "0-based person index within the image (input annotation order)."),
]

_INPUTS = [
    make_field(
        "bbox_xyxy", fixed_list(_F32, 4), "Person box (x1, y1, x2, y2) from the source.", unit="px", frame=FRAME_IMAGE
    ),
    make_field(
        "crop_bbox_xywh",
        fixed_list(_F32, 4),
        "Square crop fed to DPMesh (x, y, w, h), w == h, from the valid keypoints x1.2, squared, x1.1; "
        "may extend past the image.",
        unit="px",
        frame=FRAME_IMAGE,
    ),
    make_field(
        "keypoints_2d",
        fixed_matrix(_F32, 17, 3),
        "Input COCO-17 keypoints, 17 rows of (x px, y px, confidence 0-1); conf 0 for missing.",
        unit="px",
        frame=FRAME_IMAGE,
    ),
    make_field("keypoint_source", pa.string(), "Source of box and keypoints: 'annotations' or 'vitpose'."),
    make_field(
        "det_score",
        _F32,
        "Person detector score 0-1; null when keypoint_source is 'annotations'.",
        unit="1",
        nullable=True,
    ),
]

_SMPL = [
    make_field(
        "global_orient", fixed_list(_F32, 3), "SMPL root rotation, axis-angle.", unit="rad", frame=FRAME_CAMERA
    ),
    make_field(
        "body_pose",
        fixed_list(_F32, 69),
        "SMPL joints 1..23 rotations, axis-angle, 23 x 3 flattened.",
        unit="rad",
        frame=FRAME_SMPL_PARENT,
    ),
    make_field("betas", fixed_list(_F32, 10), "SMPL neutral shape coefficients (in prior std units).", unit="1"),
    make_field(
        "transl",
        fixed_list(_F32, 3),
        "SMPL transl (moves the SMPL origin, not the pelvis).",
        unit="m",
        frame=FRAME_CAMERA,
    ),
    make_field(
        "focal_length",
        _F32,
        "Focal length fx = fy of the full image; sqrt(H^2 + W^2) by default.",
        unit="px",
        frame=FRAME_IMAGE,
    ),
    make_field(
        "principal_point", fixed_list(_F32, 2), "(cx, cy); image centre by default.", unit="px", frame=FRAME_IMAGE
    ),
    make_field(
        "joints_3d",
        fixed_matrix(_F32, 24, 3),
        "SMPL-24 joints of the posed mesh (SMPL24_JOINT_NAMES order), 24 rows of (x, y, z).",
        unit="m",
        frame=FRAME_CAMERA,
    ),
    make_field(
        "joints_2d_proj",
        fixed_matrix(_F32, 17, 2),
        "COCO-17 joints of the posed mesh projected with K, 17 rows of (x, y), same order as keypoints_2d.",
        unit="px",
        frame=FRAME_IMAGE,
    ),
]

_SIGNALS = [
    make_field(
        "reproj_err_px",
        _F32,
        "Mean Euclidean distance between joints_2d_proj and keypoints_2d over the valid keypoints.",
        unit="px",
        frame=FRAME_IMAGE,
    ),
    make_field("reproj_err_norm", _F32, "reproj_err_px / box_size_px.", unit="1"),
    make_field("n_kp_valid", pa.int32(), "Number of valid input keypoints (of 17).", unit="count"),
    make_field("kp_conf_mean", _F32, "Mean confidence of the 17 input keypoints, missing ones counting 0.", unit="1"),
    make_field(
        "vposer_z_norm", _F32, "L2 norm of the 32-d VPoser latent behind body_pose (prior ~ sqrt(32)).", unit="1"
    ),
    make_field("betas_absmax", _F32, "max |betas_i|; the anchors distrust shapes above 3.", unit="1"),
    make_field(
        "joint_consistency_mm",
        _F32,
        "Mean distance between DPMesh's decoder joints (joint_img head) and the matching SMPL joints, root-aligned.",
        unit="mm",
    ),
    make_field("truncation", _F32, "Fraction 0-1 of the 17 joints_2d_proj outside the image.", unit="1"),
    make_field("box_size_px", _F32, "max(width, height) of bbox_xyxy.", unit="px", frame=FRAME_IMAGE),
    make_field(
        "crowding_iou", _F32, "Largest IoU of bbox_xyxy with another person's box in the image; 0 if alone.", unit="1"
    ),
    make_field(
        "flip_pa_mpjpe_mm",
        _F32,
        "PA-MPJPE between the prediction and the un-flipped prediction on the flipped crop; null when flip test off.",
        unit="mm",
        nullable=True,
    ),
]

_VERDICT = [
    make_field("confidence", _F32, "Combined label confidence, 0 (worst) to 1 (best).", unit="1"),
    make_field("quality_tier", pa.string(), "One of gold, silver, bronze, reject (schemas.annotations.QualityTier)."),
    make_field("reasons", string_list(), "Filter rules that rejected the label; empty for accepted rows."),
    make_field("model_id", pa.string(), "Content hash of the model weights that produced the label."),
    make_field("schema_version", pa.string(), "schemas.SCHEMA_VERSION of the writer."),
]

ANNOTATION_SCHEMA: pa.Schema = make_schema(
    ANNOTATIONS_SCHEMA_NAME,
    [*_IDENTITY, *_INPUTS, *_SMPL, *_SIGNALS, *_VERDICT],
    extra_metadata={
        "body_model": "smpl_neutral_10_betas",
        "rotation": "axis_angle_rad",
        "keypoints_2d_names": ",".join(COCO17_KEYPOINT_NAMES),
        "joints_3d_names": ",".join(SMPL24_JOINT_NAMES),
    },
)
"""Arrow schema of ``annotations/`` and ``rejected/``: one row per labelled person."""

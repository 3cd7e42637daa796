"""Per-person SMPL pseudo-labels: ``annotations/`` (accepted) and ``rejected/`` (same schema, non-empty ``reasons``).

Conventions (DESIGN.md 3.3, pseudolabel_anchors.md section 2); each is also stated in the metadata of the field it
concerns, which is what a consumer of the Parquet reads:

* SMPL **neutral** body model, 10 betas, rotations as **axis-angle in radians**. Which body produced a row is in
  ``body_model`` / ``body_model_sha256`` (the tiny test model runs a synthetic random body, named as such).
* 3D quantities in **metres** in the **full-image camera frame with OpenCV axes** (x right, y down,
  z forward); the intrinsics are ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` with ``f = focal_length``
  and ``(cx, cy) = principal_point``. ``transl`` is SMPL's own ``transl`` argument: it moves the SMPL
  origin, not the pelvis, so ``smpl(global_orient, body_pose, betas, transl)`` gives camera-frame vertices.
* ``joints_3d`` is SMPL's ``J_regressor`` applied to the **posed** vertices (after pose blend shapes and skinning),
  not smplx's ``output.joints[:, :24]`` (the regressor applied to the shaped rest-pose mesh, then carried by the
  kinematic chain): not the same points (0.27 m apart on the tiny model's synthetic body, issue 12).
* Projections (``joints_2d_proj``) are ``u = f x / (z + 1e-4) + cx``, ``v = f y / (z + 1e-4) + cy``: the official
  code's ``1e-4`` m guard on z, kept for parity.
* 2D quantities in **full-image pixels** (after EXIF orientation), origin top-left, x right, y down.
* Matrices are nested fixed-size lists, row-major: ``keypoints_2d`` is 17 lists of ``(x, y, conf)`` in
  COCO-17 order (:data:`COCO17_KEYPOINT_NAMES`). Read a column as one array without Python objects with
  :func:`schemas.arrays.fixed_list_to_numpy` (``fixed_list_to_numpy(table["keypoints_2d"], (17, 3))`` has shape
  ``(N, 17, 3)``). A keypoint is *valid* when x, y are finite and conf >= the filter's keypoint threshold.
* Only persons the model labelled have rows (finite outputs); every other person is an errors row.
* Schema 1.1.0 added the lineage and occlusion columns (``_LINEAGE``, ``_OCCLUSION``) after the 1.0.0 ones, all
  nullable: files written at 1.0.0 read with this schema get nulls there (e.g. DuckDB ``union_by_name``).
* Schema 1.2.0 added ``review`` (nullable): a reviewer's decision, which ``dpmesh-refilter review=`` writes; and
  after it ``near_dup_group`` (nullable, last): the near-duplicate group of the person's image in its shard set.
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
from schemas.occlusion import (
    COCO_VISIBILITY_CONFIDENCE,
    DETECTOR_OCCLUDED_MIN_SCORE,
    DETECTOR_VISIBLE_MIN_SCORE,
    OCCLUSION_LEVEL_RULE,
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
_VISIBILITY_TEXT = ", ".join(f"v={v} -> {c:g}" for v, c in sorted(COCO_VISIBILITY_CONFIDENCE.items(), reverse=True))

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
        "Square crop fed to DPMesh (x, y, w, h), w == h: the extent of the keypoints with conf > 0.05, enlarged "
        "x1.2 about its centre, clipped to the image ([0, W-1] x [0, H-1]) before squaring, squared to its longer "
        "side about the clipped box's centre, x1.1. The clipping comes first (as in the official code), so for a "
        "truncated person the crop is centred on the visible part; the final square may extend past the image "
        "(zero padding).",
        unit="px",
        frame=FRAME_IMAGE,
    ),
    make_field(
        "keypoints_2d",
        fixed_matrix(_F32, 17, 3),
        "Input COCO-17 keypoints, 17 rows of (x px, y px, conf 0-1). keypoint_source 'annotations': conf encodes "
        f"the COCO visibility flag ({_VISIBILITY_TEXT}: visible, labelled but occluded, not labelled), so "
        "occluded keypoints are inputs at conf 0.5; 'vitpose': conf is the pose model's score. conf 0 for missing.",
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
        "SMPL transl (moves the SMPL origin, not the pelvis). Converted from DPMesh's crop camera (focal f, principal "
        "point at the crop centre) by keeping f, scaling depth t_z' = t_z * S / crop side (S the model's input crop, "
        "256 px for DPMesh) and shifting x, y by "
        "(crop centre - image centre) * t_z' / f. Exact for every point at the root depth t_z'; a joint d m deeper "
        "lands about (crop centre - image centre) * d / t_z' px away from where the crop camera saw it, so for "
        "off-centre crops the full-image reprojection of the limbs is approximate (3-5 % of the box side measured "
        "in issue 12).",
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
        "SMPL-24 joints (SMPL24_JOINT_NAMES order), 24 rows of (x, y, z): the body model's J_regressor applied to "
        "the posed vertices (after pose blend shapes and skinning), as the official DPMesh code does; not smplx's "
        "output.joints[:, :24] (regressor on the rest mesh, then posed), which are different points.",
        unit="m",
        frame=FRAME_CAMERA,
    ),
    make_field(
        "joints_2d_proj",
        fixed_matrix(_F32, 17, 2),
        "COCO-17 joints of the posed mesh (body joints from the J_regressor rows, face from mesh vertices) projected "
        "with K, 17 rows of (x, y), same order as keypoints_2d: u = f * x / (z + 1e-4) + cx, v = f * y / (z + 1e-4) "
        "+ cy (the official code's 1e-4 m guard on z).",
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
        "crowding_iou",
        _F32,
        "Largest IoU of bbox_xyxy with another person's box in the image; 0 if alone. The 'maximum IoU with another "
        "person' occlusion measure (not repeated in the occlusion columns).",
        unit="1",
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
    make_field(
        "model_id",
        pa.string(),
        "Id of the weights that produced the label: 'sha256:<first 16 hex of the checkpoint file's sha256>' (kept "
        "by dpmesh-convert / from_pretrained), 'tiny-seed<N>' for the tiny test model.",
    ),
    make_field("schema_version", pa.string(), "schemas.SCHEMA_VERSION of the writer."),
]

_NEW_IN_1_1 = "Null in files written before schema 1.1.0."

_LINEAGE = [
    make_field(
        "shard_uri",
        pa.string(),
        f"URI of the shard tar the image was read from (the label run's input.shards); kept by dpmesh-refilter. "
        f"{_NEW_IN_1_1}",
        nullable=True,
    ),
    make_field(
        "annotation_id",
        pa.string(),
        "Id of the source annotation (the sample JSON's persons[i].annotation_id, e.g. COCO's annotation id, as "
        f"text); null for detected persons and annotations without an id. {_NEW_IN_1_1}",
        nullable=True,
    ),
    make_field(
        "body_model",
        pa.string(),
        "Body model that produced the mesh: 'smpl_neutral_10_betas' (the checkpoint's SMPL neutral, or "
        "model.smpl_model), or 'synthetic_random_body_<N>v' for the tiny test model's random body (not SMPL: its "
        f"parameters are not SMPL parameters). {_NEW_IN_1_1}",
        nullable=True,
    ),
    make_field(
        "body_model_sha256",
        pa.string(),
        "sha256 (hex) of the body-model arrays as loaded (dpmesh_core.body_identity.body_model_sha256: v_template, "
        "shapedirs (10 betas), posedirs, J_regressor, weights, faces, head-top regressor if any; name, dtype, shape "
        f"and bytes of each), the same whichever file carried them. {_NEW_IN_1_1}",
        nullable=True,
    ),
]

_KP_CLASSES = (
    "keypoint_source 'annotations': visible = v=2 (conf 1), occluded = v=1 (conf 0.5), missing = v=0 (conf 0); "
    f"detected keypoints: visible = score >= {DETECTOR_VISIBLE_MIN_SCORE}, occluded = {DETECTOR_OCCLUDED_MIN_SCORE} "
    f"<= score < {DETECTOR_VISIBLE_MIN_SCORE}, missing below (a heuristic: pose models score hidden joints lower). "
    "Non-finite keypoints are missing. visible + occluded + missing = 17."
)

_OCCLUSION = [
    make_field(
        "n_kp_visible", pa.int32(), f"Input keypoints (of 17) that are visible. {_KP_CLASSES} {_NEW_IN_1_1}",
        unit="count", nullable=True,
    ),
    make_field(
        "n_kp_occluded", pa.int32(), f"Input keypoints (of 17) located but occluded (see n_kp_visible). {_NEW_IN_1_1}",
        unit="count", nullable=True,
    ),
    make_field(
        "n_kp_missing", pa.int32(), f"Input keypoints (of 17) not located (see n_kp_visible). {_NEW_IN_1_1}",
        unit="count", nullable=True,
    ),
    make_field(
        "joints_in_image_frac",
        _F32,
        "Fraction 0-1 of the 24 joints_3d whose projection with K (u = f x / (z + 1e-4) + cx, likewise v) is inside "
        "the image (z + 1e-4 > 0, 0 <= u < W, 0 <= v < H): how much of the body, as the model completes it, is in "
        f"the frame. truncation is the COCO-17 counterpart. {_NEW_IN_1_1}",
        unit="1",
        nullable=True,
    ),
    make_field(
        "crowd_index",
        _F32,
        "CrowdPose crowd index of this person (Li et al., CVPR 2019): N_b / N_a, N_a = this person's located "
        "(visible or occluded) keypoints inside its bbox_xyxy, N_b = other persons' located keypoints inside that "
        "box (bounds inclusive). 0 alone; >= 1 when others' joints outnumber its own in its box. Null when N_a = 0. "
        f"CrowdPose's image index is the mean over the image's persons. {_NEW_IN_1_1}",
        unit="1",
        nullable=True,
    ),
    make_field(
        "occlusion_level",
        pa.string(),
        f"'none', 'partial' or 'heavy' (schemas.occlusion.OcclusionLevel): {OCCLUSION_LEVEL_RULE}. {_NEW_IN_1_1}",
        nullable=True,
    ),
]  # fmt: skip

REVIEW_ACCEPT = "accept"
REVIEW_REJECT = "reject"
REVIEW_DECISIONS: tuple[str, ...] = (REVIEW_ACCEPT, REVIEW_REJECT)
"""Values of ``review`` (a person someone looked at); null = not reviewed."""
REVIEWED_REJECT = "reviewed_reject"
"""The reason a reviewer's reject adds to ``reasons``."""

_REVIEW = [
    make_field(
        "review",
        pa.string(),
        f"A person's review, applied by dpmesh-refilter review=<review.json>: '{REVIEW_ACCEPT}' (kept whatever its "
        f"score, in the tier its confidence earns) or '{REVIEW_REJECT}' (in rejected/, reasons include "
        f"'{REVIEWED_REJECT}'); carried by later refilters. Null when nobody reviewed it. Null in files written "
        "before schema 1.2.0.",
        nullable=True,
    ),
]

NEAR_DUP_GROUP = "near_dup_group"
"""Column: the near-duplicate group of the row's image (dpmesh-label sets it from the shard set's groups)."""

_LIVE_SET = [
    make_field(
        NEAR_DUP_GROUP,
        pa.string(),
        "Near-duplicate group of the person's image in its shard set, across generations: the group's smallest "
        "sample key (dpmesh-shard's _near_duplicates.parquet; images whose perceptual hashes differ in at most "
        "near_duplicates.threshold bits). Rows of one group show near-identical images: keep a group on one side "
        "of a train/validation split. Null when the image is in no group, and in files written before schema 1.2.0.",
        nullable=True,
    ),
]

ANNOTATION_SCHEMA: pa.Schema = make_schema(
    ANNOTATIONS_SCHEMA_NAME,
    [*_IDENTITY, *_INPUTS, *_SMPL, *_SIGNALS, *_VERDICT, *_LINEAGE, *_OCCLUSION, *_REVIEW, *_LIVE_SET],
    extra_metadata={
        "rotation": "axis_angle_rad",
        "keypoints_2d_names": ",".join(COCO17_KEYPOINT_NAMES),
        "joints_3d_names": ",".join(SMPL24_JOINT_NAMES),
    },
)
"""Arrow schema of ``annotations/`` and ``rejected/``: one row per labelled person."""

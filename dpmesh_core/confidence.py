"""Per-person confidence signals, combined confidence, quality tier and reason codes (pure numpy).

Every signal fills the ``schemas.annotations`` column of the same name; every hard gate reads only stored columns,
so thresholds can be re-tuned on the Parquet output without re-running the model (style G9). Anchors:
``pseudolabel_anchors.md`` section 3 ("Store every signal. Assign tiers, do not hard-drop.").

Signals (`compute_signals`), with ``kp`` the input COCO-17 keypoints ``(x, y, conf)`` and ``proj`` the 17
``joints_2d_proj``, both in full-image px:

* ``valid_k`` = x, y finite and ``conf_k >= kp_conf_threshold``; ``n_kp_valid = sum_k valid_k``.
* ``kp_conf_mean = (1/17) sum_k conf_k`` with a non-finite conf counting 0 (missing keypoints have conf 0).
* ``reproj_err_px = mean_{k valid} ||proj_k - kp_k||_2`` (unweighted); NaN when ``n_kp_valid == 0`` (undefined).
* ``box_size_px = max(x2 - x1, y2 - y1)`` of ``bbox_xyxy``.
* ``reproj_err_norm = reproj_err_px / max(box_size_px, 1)``; the 1 px floor only keeps degenerate boxes finite
  (they fail ``small_box`` anyway).
* ``vposer_z_norm = ||z||_2`` of the 32-d VPoser latent; ``betas_absmax = max_i |beta_i|``.
* ``joint_consistency_mm``: decoder ``joint_img[:, :2]`` against ``smpl_joints15_img`` (both in [0, 1] of the crop),
  root-aligned (the pelvis, joint 0, subtracted from both), converted to metres at the person's depth with the crop
  camera, ``d_m = d_crop_px * t_z / f`` with ``d_crop_px = 256 * d_unit``, ``t_z = cam_trans_crop[2]`` and ``f``
  the focal length (the crop camera uses the full-image focal and a 256 px crop), then averaged over the 14
  non-root joints, in mm. Approximation: a weak-perspective conversion (every joint at the root depth) and only the
  image-plane components; the decoder's depth code (``joint_img[:, 2]``) is not compared because the SMPL-side
  depth of ``Head_top`` is not part of `PersonPrediction`.
* ``truncation`` = fraction of the 17 ``proj`` outside the image, inside meaning ``0 <= x < W`` and ``0 <= y < H``
  (pixel ``i`` covers coordinate ``i``, the convention of `dpmesh_core.preprocessing`).
* ``crowding_iou = max_j IoU(bbox_xyxy, other_j)`` over the other persons' boxes; 0 when alone (non-finite or
  degenerate other boxes are ignored).
* ``det_score`` and ``flip_pa_mpjpe_mm`` are passed through (None when not available).

A prediction with any non-finite output array poisons all model-derived signals (``reproj_err_px``,
``reproj_err_norm``, ``vposer_z_norm``, ``betas_absmax``, ``joint_consistency_mm``, ``truncation``) to NaN, so a
NaN anywhere in the outputs can never pass as a finite signal.

Combined confidence (`combine`) is a product of per-signal scores, each in (0, 1], equal to 1 while the signal is
good and decaying exponentially past a soft point:

* lower-is-better signal ``x``: ``s = exp(-max(0, x - soft) / scale)``;
* higher-is-better signal ``x``: ``s = exp(-max(0, soft - x) / scale)``;
* ``confidence = prod_signals s`` (a signal that is None, i.e. not measured, contributes 1; an undefined
  ``reproj_err_norm`` with ``n_kp_valid == 0`` contributes 0).

The ``(soft, scale)`` pairs are the fixed module constant `SCORE_SCALES` (not the thresholds), so the
``confidence`` column means the same thing whatever filter a run used. The confidence is monotone (non-increasing
in every lower-is-better signal, non-decreasing in every higher-is-better one) and deterministic. The terms were
tuned to rank true error on a controlled-error benchmark (see the comment on `SCORE_SCALES`).

Calibrated confidence: given a `dpmesh_core.calibration.ConfidenceCalibration` (fitted on ground truth by
``dpmesh-eval fit_confidence=true``), ``confidence = sigmoid(b + sum_i w_i log s_i)`` with ``s_i`` the same
per-signal scores and ``w_i >= 0``: the probability that the label's error is below the calibration's cut, still
monotone in every signal. Gates, reasons and the tier rule are unchanged.

Tier and reasons: each failed hard gate of `FilterThresholds` adds its reason code (in `REASON_CODES` order); a
confidence below ``bronze_min`` adds ``low_confidence``. Any reason ⇒ ``reject``; otherwise ``gold`` if
``confidence >= gold_min``, ``silver`` if ``>= silver_min``, else ``bronze``. Gates keep inclusive bounds
(``n_kp_valid >= min_kp_valid``, ``betas_absmax <= max_betas_abs``, ...). A non-finite signal (other than the
undefined reprojection error above) gives ``(0.0, "reject", ["non_finite_output"])`` under every threshold set,
``no_thresholds()`` included: non-finite outputs are never written as labels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import numpy as np

from dpmesh_core.person_prediction import PersonPrediction
from schemas.annotations import QualityTier


# Reason codes (the `reasons` column), one per hard gate.
FEW_KEYPOINTS = "few_keypoints"
SMALL_BOX = "small_box"
IMPLAUSIBLE_BETAS = "implausible_betas"
HIGH_REPROJECTION_ERROR = "high_reprojection_error"
IMPLAUSIBLE_POSE = "implausible_pose"
INCONSISTENT_JOINTS = "inconsistent_joints"
TRUNCATED = "truncated"
FLIP_INCONSISTENT = "flip_inconsistent"
LOW_DET_SCORE = "low_det_score"
LOW_CONFIDENCE = "low_confidence"
NON_FINITE_OUTPUT = "non_finite_output"
REASON_CODES: tuple[str, ...] = (
    FEW_KEYPOINTS, SMALL_BOX, IMPLAUSIBLE_BETAS, HIGH_REPROJECTION_ERROR, IMPLAUSIBLE_POSE, INCONSISTENT_JOINTS,
    TRUNCATED, FLIP_INCONSISTENT, LOW_DET_SCORE, LOW_CONFIDENCE, NON_FINITE_OUTPUT,
)  # fmt: skip


# (signal, soft, scale, higher_is_better): the confidence terms (module docstring). Only the ratios of the scales
# decide the ranking (scaling every scale by k raises the confidence to the power 1/k); their common size sets where
# the tiers fall. Tuned on seeds 0-3 of the controlled-error benchmark (tests/dpmesh_core/
# test_confidence_ranking.py), checked on held-out seeds 4-15. What the tuning found:
# * the reprojection error ranks best of all signals and varies mostly below the old soft point (0.03, the median):
#   its term now starts at 0, so it orders every person, not only the worst half;
# * evidence signals (keypoint count, box size) carry little once the reprojection is known, so their terms are
#   weak (their hard gates do the work); kp_conf_mean, truncation and crowding_iou lowered the ranking and are not
#   terms (truncation is still a hard gate, kp_conf_mean a stored column, crowding_iou a stored tag, anchors §3);
# * det_score and flip_pa_mpjpe_mm are absent from the benchmark: their terms are the earlier hand-set ones.
SCORE_SCALES: tuple[tuple[str, float, float, bool], ...] = (
    ("n_kp_valid", 12.0, 144.0, True),  # 8 valid → 0.97: the few_keypoints gate does the work
    ("box_size_px", 50.0, 600.0, True),  # 25 px → 0.96: the small_box gate does the work
    ("det_score", 0.8, 0.3, True),  # 0.5 → 0.37; None → 1
    ("reproj_err_norm", 0.0, 0.06, False),  # 0.01 of the box → 0.85; 0.05 → 0.43; 0.1 (the gate) → 0.19
    ("vposer_z_norm", 7.0, 6.0, False),  # 10 → 0.61 (prior mean ≈ sqrt(32) ≈ 5.7)
    ("betas_absmax", 2.0, 4.5, False),  # 3 → 0.80
    ("joint_consistency_mm", 50.0, 1500.0, False),  # 150 mm → 0.94
    ("flip_pa_mpjpe_mm", 30.0, 60.0, False),  # 100 mm → 0.31; None → 1
)


@dataclass(frozen=True)
class FilterThresholds:
    """Hard gates and tier cut-offs; defaults are the anchors' recommended gates (pseudolabel_anchors.md §3).

    Attributes:
        kp_conf_threshold: keypoint validity confidence (4D-Humans' 0.3).
        min_kp_valid: minimum valid COCO-17 keypoints (8: the anchors' stricter variant of the 4DH rule).
        min_box_px: minimum ``box_size_px`` (50 px, SMPLer-X / anchors; applied to the longer box side).
        max_betas_abs: maximum ``betas_absmax`` (3: 4DH, EFT, 3DCrowdNet).
        max_reproj_norm: maximum ``reproj_err_norm`` (0.1 of the box). DPMesh is conditioned on these keypoints,
            so a healthy fit reprojects within a few % of the box; 10 % means the mesh ignored its own input.
        max_vposer_z_norm: maximum ``vposer_z_norm`` (10). Under the N(0, I) prior ``||z||`` in 32-d concentrates
            at ≈ sqrt(32) ≈ 5.7 with std ≈ 0.7; 10 is ≈ 6 std out, far off the pose manifold.
        max_joint_consistency_mm: maximum ``joint_consistency_mm`` (150 mm, about 3× DPMesh's PA-MPJPE on
            occluded 3DPW: the keypoint and SMPL branches then disagree about the body).
        max_truncation: maximum ``truncation`` (0.5: more than half of the body projected outside the image).
        max_flip_pa_mpjpe_mm: maximum ``flip_pa_mpjpe_mm`` when measured (100 mm, ≈ 2× DPMesh's PA-MPJPE).
        min_det_score: minimum ``det_score``, applied only when a detector score exists (0.5, 4DH/CameraHMR).
        gold_min, silver_min, bronze_min: tier cut-offs on the combined confidence; below ``bronze_min`` the
            person is rejected with ``low_confidence``.
    """

    kp_conf_threshold: float = 0.3
    min_kp_valid: int = 8
    min_box_px: float = 50.0
    max_betas_abs: float = 3.0
    max_reproj_norm: float = 0.1
    max_vposer_z_norm: float = 10.0
    max_joint_consistency_mm: float = 150.0
    max_truncation: float = 0.5
    max_flip_pa_mpjpe_mm: float = 100.0
    min_det_score: float = 0.5
    gold_min: float = 0.75
    silver_min: float = 0.45
    bronze_min: float = 0.15

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check ranges and ordering.

        Raises:
            ValueError: naming the first offending field and its value.
        """
        unit = ("kp_conf_threshold", "min_det_score", "gold_min", "silver_min", "bronze_min")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"FilterThresholds.{f.name}={value!r}: expected a number")
            if value < 0:
                raise ValueError(f"FilterThresholds.{f.name}={value!r}: must be >= 0")
            if f.name in unit and value > 1:
                raise ValueError(f"FilterThresholds.{f.name}={value!r}: must be in [0, 1]")
        if not isinstance(self.min_kp_valid, int) or self.min_kp_valid > 17:
            raise ValueError(f"FilterThresholds.min_kp_valid={self.min_kp_valid!r}: expected an int in [0, 17]")
        if not self.bronze_min <= self.silver_min <= self.gold_min:
            raise ValueError(
                f"FilterThresholds.silver_min={self.silver_min!r}: tier cut-offs need bronze_min <= silver_min <= "
                f"gold_min (got {self.bronze_min}, {self.silver_min}, {self.gold_min})"
            )


def default_thresholds() -> FilterThresholds:
    """The anchors' recommended gates (the class defaults)."""
    return FilterThresholds()


def strict_thresholds() -> FilterThresholds:
    """Every gate at least as strict as `default_thresholds` (EFT-strict, CamSMPLify-like), for precise sets."""
    return FilterThresholds(
        kp_conf_threshold=0.5, min_kp_valid=12, min_box_px=100.0, max_betas_abs=2.0, max_reproj_norm=0.05,
        max_vposer_z_norm=8.0, max_joint_consistency_mm=80.0, max_truncation=0.2, max_flip_pa_mpjpe_mm=60.0,
        min_det_score=0.7, gold_min=0.85, silver_min=0.6, bronze_min=0.3,
    )  # fmt: skip


def no_thresholds() -> FilterThresholds:
    """Filter off: no hard gate and ``bronze_min = 0``; only non-finite outputs are rejected. Tiers stay graded."""
    inf = math.inf
    return FilterThresholds(
        min_kp_valid=0, min_box_px=0.0, max_betas_abs=inf, max_reproj_norm=inf, max_vposer_z_norm=inf,
        max_joint_consistency_mm=inf, max_truncation=inf, max_flip_pa_mpjpe_mm=inf, min_det_score=0.0, bronze_min=0.0,
    )  # fmt: skip


@dataclass(frozen=True)
class ConfidenceSignals:
    """The per-person signal columns of ``schemas.annotations`` (formulas in the module docstring)."""

    reproj_err_px: float
    reproj_err_norm: float
    n_kp_valid: int
    kp_conf_mean: float
    vposer_z_norm: float
    betas_absmax: float
    joint_consistency_mm: float
    truncation: float
    box_size_px: float
    crowding_iou: float
    flip_pa_mpjpe_mm: float | None
    det_score: float | None


@dataclass(frozen=True)
class ScoredPerson:
    """Signals plus the verdict columns ``confidence``, ``quality_tier`` (a `QualityTier` value) and ``reasons``."""

    signals: ConfidenceSignals
    confidence: float
    quality_tier: str
    reasons: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        """True unless the tier is ``reject`` (then ``reasons`` is non-empty)."""
        return self.quality_tier != QualityTier.REJECT.value

    def as_row(self) -> dict[str, object]:
        """The schema columns this module fills, by column name (``reasons`` as a list)."""
        row: dict[str, object] = asdict(self.signals)
        row.update(confidence=self.confidence, quality_tier=self.quality_tier, reasons=list(self.reasons))
        return row


def _as_array(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    return arr


def _outputs_finite(pred: PersonPrediction) -> bool:
    arrays = (
        pred.global_orient, pred.body_pose, pred.betas, pred.transl, pred.focal_length, pred.principal_point,
        pred.joints_3d, pred.coco17_3d, pred.joints_2d_proj, pred.vposer_z, pred.joint_img, pred.smpl_joints15_img,
        pred.crop_bbox_xywh, pred.cam_trans_crop, pred.vertices,
    )  # fmt: skip
    return all(bool(np.isfinite(np.asarray(a, dtype=np.float64)).all()) for a in arrays)


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with each of K boxes, all xyxy px.

    Args:
        box: `(4,)`; others: `(K, 4)`.

    Returns:
        `(K,)` float64 IoU; 0 where the union is empty, NaN where a box is non-finite.
    """
    b = np.asarray(box, dtype=np.float64)
    o = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(b[2], o[:, 2]) - np.maximum(b[0], o[:, 0]), 0.0, None)
    ih = np.clip(np.minimum(b[3], o[:, 3]) - np.maximum(b[1], o[:, 1]), 0.0, None)
    inter = iw * ih
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    area_o = np.clip(o[:, 2] - o[:, 0], 0.0, None) * np.clip(o[:, 3] - o[:, 1], 0.0, None)
    union = area_b + area_o - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.where(np.isfinite(o).all(axis=1) & np.isfinite(b).all(), iou, np.nan)


def joint_consistency_mm(
    joint_img: np.ndarray, smpl_joints15_img: np.ndarray, box_side_px: float, depth_m: float, focal: float
) -> float:
    """Root-aligned mean image-plane distance between decoder and SMPL joints, in mm at the person's depth.

    Args:
        joint_img: `(15, 2+)` decoder joints, x, y in [0, 1] of the crop (extra columns ignored).
        smpl_joints15_img: `(15, 2)` SMPL-derived joints in [0, 1] of the crop, same `GRAPH15_JOINTS` order.
        box_side_px: side of the square crop box in full-image px (``crop_bbox_xywh[2]``), which [0, 1] spans.
        depth_m: full-image camera depth of the body (``transl[2]``), m.
        focal: full-image focal length, px.

    Returns:
        Mean over the 14 non-root joints of ``||d|| * box_side_px * depth_m / focal * 1000``. The model's crop
        size does not enter: with crop side S, ``transl[2] = cam_trans_crop[2] * S / box_side_px``
        (`dpmesh_core.geometry.crop_to_full_camera`), so this equals ``||d|| * S * cam_trans_crop[2] / focal``.
    """
    dec = np.asarray(joint_img, dtype=np.float64)[:, :2]
    smpl = np.asarray(smpl_joints15_img, dtype=np.float64)[:, :2]
    diff = (dec - dec[:1]) - (smpl - smpl[:1])
    dist_px = np.linalg.norm(diff[1:], axis=1) * box_side_px
    return float(dist_px.mean() * depth_m / focal * 1000.0)


def compute_signals(
    pred: PersonPrediction,
    keypoints_2d: np.ndarray,
    image_hw: tuple[int, int],
    bbox_xyxy: np.ndarray,
    other_boxes: np.ndarray,
    det_score: float | None,
    kp_conf_threshold: float,
    flip_pa_mpjpe_mm: float | None = None,
) -> ConfidenceSignals:
    """Every per-person signal of the schema (formulas in the module docstring). Never raises on NaN values.

    Args:
        pred: the model's full-image prediction of this person.
        keypoints_2d: `(17, 3)` input COCO-17 keypoints (x px, y px, conf).
        image_hw: (H, W) of the full image.
        bbox_xyxy: `(4,)` this person's box, px.
        other_boxes: `(K, 4)` xyxy boxes of the other persons of the image (K may be 0).
        det_score: detector score 0-1, or None (annotation keypoints).
        kp_conf_threshold: keypoint validity threshold (`FilterThresholds.kp_conf_threshold`).
        flip_pa_mpjpe_mm: flip-consistency PA-MPJPE (`dpmesh_core.flip`), or None when the flip test is off.

    Raises:
        ValueError: wrong array shapes (a programming error, not a data error).
    """
    kp = _as_array("keypoints_2d", keypoints_2d, (17, 3))
    proj = _as_array("pred.joints_2d_proj", pred.joints_2d_proj, (17, 2))
    box = _as_array("bbox_xyxy", bbox_xyxy, (4,))
    others = np.asarray(other_boxes, dtype=np.float64).reshape(-1, 4)
    height, width = image_hw

    conf = np.where(np.isfinite(kp[:, 2]), kp[:, 2], 0.0)
    valid = np.isfinite(kp[:, :2]).all(axis=1) & (conf >= kp_conf_threshold)
    n_valid = int(valid.sum())
    box_size = float(np.max([box[2] - box[0], box[3] - box[1]]))  # NaN-propagating, unlike builtin max
    iou = box_iou(box, others)
    iou = iou[np.isfinite(iou)]

    if _outputs_finite(pred):
        err = np.linalg.norm(proj[valid] - kp[valid, :2], axis=1)
        reproj = float(err.mean()) if n_valid else math.nan
        inside = (proj[:, 0] >= 0) & (proj[:, 0] < width) & (proj[:, 1] >= 0) & (proj[:, 1] < height)
        truncation = float(1.0 - inside.mean())
        vposer = float(np.linalg.norm(np.asarray(pred.vposer_z, dtype=np.float64)))
        betas = float(np.abs(np.asarray(pred.betas, dtype=np.float64)).max())
        side = float(np.asarray(pred.crop_bbox_xywh, dtype=np.float64)[2])
        depth = float(np.asarray(pred.transl, dtype=np.float64)[2])
        consistency = joint_consistency_mm(
            pred.joint_img, pred.smpl_joints15_img, side, depth, float(pred.focal_length)
        )
    else:
        reproj = truncation = vposer = betas = consistency = math.nan
    return ConfidenceSignals(
        reproj_err_px=reproj,
        reproj_err_norm=reproj / max(box_size, 1.0) if math.isfinite(box_size) else math.nan,
        n_kp_valid=n_valid,
        kp_conf_mean=float(conf.mean()),
        vposer_z_norm=vposer,
        betas_absmax=betas,
        joint_consistency_mm=consistency,
        truncation=truncation,
        box_size_px=box_size,
        crowding_iou=float(iou.max()) if iou.size else 0.0,
        flip_pa_mpjpe_mm=None if flip_pa_mpjpe_mm is None else float(flip_pa_mpjpe_mm),
        det_score=None if det_score is None else float(det_score),
    )


def _has_non_finite(s: ConfidenceSignals) -> bool:
    for f in fields(s):
        value = getattr(s, f.name)
        if value is None or math.isfinite(value):
            continue
        undefined_reproj = f.name in ("reproj_err_px", "reproj_err_norm") and s.n_kp_valid == 0 and math.isnan(value)
        if not undefined_reproj:
            return True
    return False


def signal_scores(signals: ConfidenceSignals) -> dict[str, float]:
    """The per-signal factors of the confidence (`SCORE_SCALES`), each in [0, 1]; missing signals score 1."""
    scores: dict[str, float] = {}
    for name, soft, scale, higher_is_better in SCORE_SCALES:
        value = getattr(signals, name)
        if value is None:
            scores[name] = 1.0
        elif math.isnan(value):
            scores[name] = 0.0  # undefined (no valid keypoint): no evidence, no confidence
        else:
            excess = soft - value if higher_is_better else value - soft
            scores[name] = math.exp(-max(0.0, excess) / scale)
    return scores


def _failed_gates(s: ConfidenceSignals, t: FilterThresholds) -> list[str]:
    reasons = []
    if s.n_kp_valid < t.min_kp_valid:
        reasons.append(FEW_KEYPOINTS)
    if s.box_size_px < t.min_box_px:
        reasons.append(SMALL_BOX)
    if s.betas_absmax > t.max_betas_abs:
        reasons.append(IMPLAUSIBLE_BETAS)
    if s.reproj_err_norm > t.max_reproj_norm:  # False for the undefined (NaN) case: few_keypoints covers it
        reasons.append(HIGH_REPROJECTION_ERROR)
    if s.vposer_z_norm > t.max_vposer_z_norm:
        reasons.append(IMPLAUSIBLE_POSE)
    if s.joint_consistency_mm > t.max_joint_consistency_mm:
        reasons.append(INCONSISTENT_JOINTS)
    if s.truncation > t.max_truncation:
        reasons.append(TRUNCATED)
    if s.flip_pa_mpjpe_mm is not None and s.flip_pa_mpjpe_mm > t.max_flip_pa_mpjpe_mm:
        reasons.append(FLIP_INCONSISTENT)
    if s.det_score is not None and s.det_score < t.min_det_score:
        reasons.append(LOW_DET_SCORE)
    return reasons


class Calibration(Protocol):
    """What scoring needs of a calibration (`dpmesh_core.calibration.ConfidenceCalibration` is one): a confidence
    from the signals. A protocol, so that the calibration module (which builds on this one) is not imported here."""

    def confidence(self, signals: ConfidenceSignals) -> float: ...


def combine(
    signals: ConfidenceSignals, thresholds: FilterThresholds, calibration: Calibration | None = None
) -> tuple[float, str, list[str]]:
    """Combined confidence, quality tier and reason codes (formulas in the module docstring). Never raises on NaN.

    Args:
        signals: the person's stored signals.
        thresholds: hard gates and tier cut-offs.
        calibration: a fitted `dpmesh_core.calibration.ConfidenceCalibration` replacing the fixed product of
            scores (the gates, reasons and tier rule stay the same; the cut-offs then apply to its probability).

    Returns:
        ``(confidence in [0, 1], QualityTier value, reasons in REASON_CODES order)``; reasons is empty iff the
        tier is not ``reject``.
    """
    if _has_non_finite(signals):
        return 0.0, QualityTier.REJECT.value, [NON_FINITE_OUTPUT]
    if calibration is not None:
        confidence = calibration.confidence(signals)
    else:
        confidence = float(math.prod(signal_scores(signals).values()))
    reasons = _failed_gates(signals, thresholds)
    if confidence < thresholds.bronze_min:
        reasons.append(LOW_CONFIDENCE)
    tier = QualityTier.REJECT.value if reasons else graded_tier(confidence, thresholds)
    return confidence, tier, reasons


def graded_tier(confidence: float, thresholds: FilterThresholds) -> str:
    """The accepted tier a confidence (0-1) earns under the cut-offs: ``gold`` at ``>= gold_min``, ``silver`` at
    ``>= silver_min``, else ``bronze`` (also below ``bronze_min``: the gates and that floor are `combine`'s to
    reject; a label kept despite them, such as a reviewer's accept, is graded by this rule alone)."""
    if confidence >= thresholds.gold_min:
        return QualityTier.GOLD.value
    if confidence >= thresholds.silver_min:
        return QualityTier.SILVER.value
    return QualityTier.BRONZE.value


def score_person(
    pred: PersonPrediction,
    keypoints_2d: np.ndarray,
    image_hw: tuple[int, int],
    bbox_xyxy: np.ndarray,
    other_boxes: np.ndarray,
    thresholds: FilterThresholds,
    det_score: float | None = None,
    flip_pa_mpjpe_mm: float | None = None,
    calibration: Calibration | None = None,
) -> ScoredPerson:
    """`compute_signals` at ``thresholds.kp_conf_threshold``, then `combine` (arguments as in `compute_signals`
    and `combine`)."""
    signals = compute_signals(
        pred, keypoints_2d, image_hw, bbox_xyxy, other_boxes, det_score, thresholds.kp_conf_threshold, flip_pa_mpjpe_mm
    )
    confidence, tier, reasons = combine(signals, thresholds, calibration)
    return ScoredPerson(signals=signals, confidence=confidence, quality_tier=tier, reasons=tuple(reasons))

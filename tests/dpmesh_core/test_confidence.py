"""Per-person confidence signals, combined confidence, tiers and reason codes (hand-computed values)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from dpmesh_core.confidence import (
    FEW_KEYPOINTS,
    FLIP_INCONSISTENT,
    HIGH_REPROJECTION_ERROR,
    IMPLAUSIBLE_BETAS,
    IMPLAUSIBLE_POSE,
    INCONSISTENT_JOINTS,
    LOW_CONFIDENCE,
    LOW_DET_SCORE,
    NON_FINITE_OUTPUT,
    REASON_CODES,
    SCORE_SCALES,
    SMALL_BOX,
    TRUNCATED,
    ConfidenceSignals,
    FilterThresholds,
    box_iou,
    combine,
    compute_signals,
    default_thresholds,
    no_thresholds,
    score_person,
    strict_thresholds,
)
from dpmesh_core.person_prediction import PersonPrediction
from schemas.annotations import ANNOTATION_SCHEMA, QUALITY_TIERS


H, W = 480, 640
BOX = np.array([100.0, 50.0, 300.0, 450.0])  # box_size_px = 400
NO_OTHERS = np.zeros((0, 4))


def _keypoints(conf: float = 0.9) -> np.ndarray:
    xy = np.stack([150.0 + 7.0 * np.arange(17), 100.0 + 20.0 * np.arange(17)], axis=1)
    return np.concatenate([xy, np.full((17, 1), conf)], axis=1)


def _pred(**overrides: Any) -> PersonPrediction:
    """A finite prediction whose reprojection equals `_keypoints()` and whose SMPL joints match the decoder."""
    joint_img = np.stack([np.linspace(0.2, 0.8, 15), np.linspace(0.1, 0.9, 15), np.full(15, 0.5)], axis=1)
    vposer_z = np.zeros(32)
    vposer_z[:2] = (3.0, 4.0)  # norm 5
    betas = np.zeros(10)
    betas[1] = -1.5
    fields: dict[str, Any] = {
        "global_orient": np.zeros(3), "body_pose": np.zeros(69), "betas": betas, "transl": np.array([0, 0, 5.0]),
        "focal_length": 1000.0, "principal_point": np.array([W / 2, H / 2]), "joints_3d": np.zeros((24, 3)),
        "coco17_3d": np.zeros((17, 3)), "joints_2d_proj": _keypoints()[:, :2].copy(), "vposer_z": vposer_z,
        "joint_img": joint_img, "smpl_joints15_img": joint_img[:, :2].copy(),
        "crop_bbox_xywh": np.array([80.0, 30.0, 440.0, 440.0]), "cam_trans_crop": np.array([0.0, 0.0, 5.0]),
        "vertices": np.zeros((8, 3)),
    }  # fmt: skip
    fields.update(overrides)
    return PersonPrediction(**fields)


def _signals(pred: PersonPrediction | None = None, **kwargs: Any) -> ConfidenceSignals:
    args: dict[str, Any] = {
        "keypoints_2d": _keypoints(), "image_hw": (H, W), "bbox_xyxy": BOX, "other_boxes": NO_OTHERS,
        "det_score": None, "kp_conf_threshold": 0.3,
    }  # fmt: skip
    args.update(kwargs)
    return compute_signals(pred or _pred(), **args)


GOOD = ConfidenceSignals(
    reproj_err_px=4.0, reproj_err_norm=0.01, n_kp_valid=17, kp_conf_mean=0.9, vposer_z_norm=5.0, betas_absmax=1.0,
    joint_consistency_mm=20.0, truncation=0.0, box_size_px=400.0, crowding_iou=0.0, flip_pa_mpjpe_mm=None,
    det_score=None,
)  # fmt: skip


# --- signals ---------------------------------------------------------------------------------------------------------


def test_perfect_prediction_signals() -> None:
    s = _signals()
    assert s.reproj_err_px == 0.0
    assert s.reproj_err_norm == 0.0
    assert s.n_kp_valid == 17
    assert s.kp_conf_mean == pytest.approx(0.9)
    assert s.vposer_z_norm == pytest.approx(5.0)
    assert s.betas_absmax == pytest.approx(1.5)
    assert s.joint_consistency_mm == pytest.approx(0.0, abs=1e-9)
    assert s.truncation == 0.0
    assert s.box_size_px == 400.0
    assert s.crowding_iou == 0.0
    assert s.flip_pa_mpjpe_mm is None
    assert s.det_score is None


def test_known_offset_gives_known_reprojection_error() -> None:
    s = _signals(_pred(joints_2d_proj=_keypoints()[:, :2] + np.array([3.0, 4.0])))
    assert s.reproj_err_px == pytest.approx(5.0)
    assert s.reproj_err_norm == pytest.approx(5.0 / 400.0)


def test_only_valid_keypoints_enter_the_reprojection_error() -> None:
    kp = _keypoints()
    kp[:5, 2] = 0.2  # below the 0.3 threshold
    kp[5, :2] = np.nan  # confident but not finite: invalid
    proj = kp[:, :2].copy()
    proj[:5] += 100.0  # far off, but on invalid keypoints
    proj[5] = (0.0, 0.0)
    proj[6] += (6.0, 8.0)  # one valid keypoint off by 10 px
    s = _signals(_pred(joints_2d_proj=proj), keypoints_2d=kp)
    assert s.n_kp_valid == 11
    assert s.reproj_err_px == pytest.approx(10.0 / 11)
    assert s.kp_conf_mean == pytest.approx((12 * 0.9 + 5 * 0.2) / 17)


def test_keypoint_threshold_is_inclusive_and_missing_conf_counts_zero() -> None:
    kp = _keypoints(conf=0.3)
    kp[0, 2] = np.nan
    s = _signals(keypoints_2d=kp)
    assert s.n_kp_valid == 16
    assert s.kp_conf_mean == pytest.approx(16 * 0.3 / 17)


def test_truncation_counts_projections_outside_the_image() -> None:
    proj = _keypoints()[:, :2].copy()
    proj[0] = (-1.0, 10.0)
    proj[1] = (W, 10.0)  # x == W is outside
    proj[2] = (10.0, H)
    proj[3] = (10.0, -0.5)
    proj[4] = (W - 0.1, H - 0.1)  # inside
    proj[5] = (0.0, 0.0)  # inside
    s = _signals(_pred(joints_2d_proj=proj))
    assert s.truncation == pytest.approx(4 / 17)


def test_box_iou_and_crowding() -> None:
    box = np.array([0.0, 0.0, 10.0, 10.0])
    others = np.array([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0], [np.nan, 0, 1, 1]])
    np.testing.assert_allclose(box_iou(box, others)[:3], [50 / 150, 0.0, 1.0])
    assert np.isnan(box_iou(box, others)[3])
    assert _signals(bbox_xyxy=box, other_boxes=others[:2]).crowding_iou == pytest.approx(1 / 3)
    assert _signals(bbox_xyxy=box, other_boxes=others[[1, 3]]).crowding_iou == 0.0  # NaN box ignored
    assert box_iou(box, np.array([[3.0, 3.0, 3.0, 3.0]]))[0] == 0.0


def test_box_size_is_the_longer_side() -> None:
    assert _signals(bbox_xyxy=np.array([10.0, 20.0, 40.0, 120.0])).box_size_px == 100.0
    assert _signals(bbox_xyxy=np.array([10.0, 20.0, 140.0, 30.0])).box_size_px == 130.0


def test_joint_consistency_in_mm_at_the_persons_depth() -> None:
    pred = _pred()
    # One joint off by 0.01 of the crop = 4.4 px of the 440 px crop box; at depth 5 m with f = 1000 px that is
    # 22 mm; mean over 14. The model's crop size does not enter.
    smpl = pred.smpl_joints15_img.copy()
    smpl[3, 0] += 0.01
    assert _signals(_pred(smpl_joints15_img=smpl)).joint_consistency_mm == pytest.approx(22.0 / 14)
    # Root-aligned: a global shift costs nothing; a root-only shift moves every other joint.
    assert _signals(_pred(smpl_joints15_img=pred.smpl_joints15_img + 0.05)).joint_consistency_mm == pytest.approx(
        0.0, abs=1e-9
    )
    smpl = pred.smpl_joints15_img.copy()
    smpl[0, 1] -= 0.01
    assert _signals(_pred(smpl_joints15_img=smpl)).joint_consistency_mm == pytest.approx(22.0)
    # Depth scales linearly.
    far = _signals(_pred(smpl_joints15_img=smpl, transl=np.array([0.0, 0.0, 10.0])))
    assert far.joint_consistency_mm == pytest.approx(44.0)
    # The same as DPMesh's crop camera gives with any crop side S (transl z = cam_trans_crop z * S / box side).
    for crop_side in (256, 128):
        crop_depth = 5.0 * 440.0 / crop_side
        expected = float(np.linalg.norm(0.01) * crop_side * crop_depth / 1000.0 * 1000.0)
        assert _signals(_pred(smpl_joints15_img=smpl)).joint_consistency_mm == pytest.approx(expected)


def test_passthrough_det_score_and_flip() -> None:
    s = _signals(det_score=0.8, flip_pa_mpjpe_mm=42.0)
    assert (s.det_score, s.flip_pa_mpjpe_mm) == (pytest.approx(0.8), 42.0)


def test_no_valid_keypoint_gives_undefined_reprojection_not_a_crash() -> None:
    s = _signals(keypoints_2d=_keypoints(conf=0.1))
    assert s.n_kp_valid == 0
    assert math.isnan(s.reproj_err_px)
    assert math.isnan(s.reproj_err_norm)
    confidence, tier, reasons = combine(s, default_thresholds())
    assert (confidence, tier) == (0.0, "reject")
    assert reasons == [FEW_KEYPOINTS, LOW_CONFIDENCE]
    assert combine(s, no_thresholds())[1] == "bronze"  # undefined, not non-finite: kept when the filter is off


def test_wrong_shapes_raise() -> None:
    with pytest.raises(ValueError, match="keypoints_2d"):
        _signals(keypoints_2d=np.zeros((18, 3)))
    with pytest.raises(ValueError, match="bbox_xyxy"):
        _signals(bbox_xyxy=np.zeros(3))


@pytest.mark.parametrize(
    "field", ["betas", "vposer_z", "joints_2d_proj", "joint_img", "cam_trans_crop", "vertices", "global_orient"]
)
def test_non_finite_outputs_are_rejected_never_raised(field: str) -> None:
    bad = np.array(getattr(_pred(), field), dtype=np.float64)
    bad.flat[0] = np.nan if field != "vertices" else np.inf
    scored = score_person(_pred(**{field: bad}), _keypoints(), (H, W), BOX, NO_OTHERS, default_thresholds())
    assert math.isnan(scored.signals.betas_absmax)  # every model-derived signal is poisoned
    assert (scored.confidence, scored.quality_tier, scored.reasons) == (0.0, "reject", (NON_FINITE_OUTPUT,))
    assert combine(scored.signals, no_thresholds())[2] == [NON_FINITE_OUTPUT]


def test_non_finite_inputs_are_rejected() -> None:
    assert combine(_signals(det_score=float("nan")), default_thresholds())[2] == [NON_FINITE_OUTPUT]
    assert combine(_signals(bbox_xyxy=np.array([0, 0, np.nan, 5.0])), default_thresholds())[2] == [NON_FINITE_OUTPUT]
    assert combine(dataclasses.replace(GOOD, flip_pa_mpjpe_mm=float("inf")), no_thresholds())[1] == "reject"


# --- combine ---------------------------------------------------------------------------------------------------------


def test_reason_codes_are_stable_snake_case_and_unique() -> None:
    assert len(set(REASON_CODES)) == len(REASON_CODES) == 11
    assert all(code.isidentifier() and code.islower() for code in REASON_CODES)
    assert {name for name, *_ in SCORE_SCALES} <= {f.name for f in dataclasses.fields(ConfidenceSignals)}


def test_good_signals_are_gold_with_no_reasons() -> None:
    confidence, tier, reasons = combine(GOOD, default_thresholds())
    assert confidence == pytest.approx(math.exp(-0.01 / 0.06))  # only the reprojection term is below 1
    assert (tier, reasons) == ("gold", [])


REASON_CASES: dict[str, dict[str, Any]] = {
    FEW_KEYPOINTS: {"n_kp_valid": 7},
    SMALL_BOX: {"box_size_px": 49.0},
    IMPLAUSIBLE_BETAS: {"betas_absmax": 3.01},
    HIGH_REPROJECTION_ERROR: {"reproj_err_norm": 0.11},
    IMPLAUSIBLE_POSE: {"vposer_z_norm": 10.5},
    INCONSISTENT_JOINTS: {"joint_consistency_mm": 151.0},
    TRUNCATED: {"truncation": 0.55},
    FLIP_INCONSISTENT: {"flip_pa_mpjpe_mm": 101.0},
    LOW_DET_SCORE: {"det_score": 0.49},
    # Every gate passes (inclusive bounds) but the product of borderline scores is ≈ 0.09 < bronze_min.
    LOW_CONFIDENCE: {
        "n_kp_valid": 8,
        "box_size_px": 50.0,
        "betas_absmax": 3.0,
        "reproj_err_norm": 0.1,
        "vposer_z_norm": 10.0,
    },
    NON_FINITE_OUTPUT: {"vposer_z_norm": float("nan")},
}


@pytest.mark.parametrize("reason", REASON_CODES)
def test_every_reason_code_is_reachable_alone(reason: str) -> None:
    confidence, tier, reasons = combine(dataclasses.replace(GOOD, **REASON_CASES[reason]), default_thresholds())
    assert reasons == [reason]
    assert tier == "reject"
    assert 0.0 <= confidence <= 1.0


def test_gates_are_inclusive_and_optional_signals_are_skipped() -> None:
    at_gates = dataclasses.replace(
        GOOD, n_kp_valid=8, box_size_px=50.0, betas_absmax=3.0, reproj_err_norm=0.1, vposer_z_norm=10.0,
        joint_consistency_mm=150.0, truncation=0.5, flip_pa_mpjpe_mm=100.0, det_score=0.5,
    )  # fmt: skip
    assert combine(at_gates, no_thresholds())[2] == []
    assert LOW_CONFIDENCE in combine(at_gates, default_thresholds())[2]
    assert [r for r in combine(at_gates, default_thresholds())[2] if r != LOW_CONFIDENCE] == []
    perfect = dataclasses.replace(GOOD, det_score=None, flip_pa_mpjpe_mm=None, reproj_err_norm=0.0)
    assert combine(perfect, default_thresholds())[0] == 1.0


def test_reasons_follow_reason_code_order() -> None:
    bad = dataclasses.replace(GOOD, det_score=0.1, truncation=0.9, n_kp_valid=3, betas_absmax=5.0)
    reasons = combine(bad, default_thresholds())[2]
    assert reasons == sorted(reasons, key=REASON_CODES.index)
    assert reasons[:4] == [FEW_KEYPOINTS, IMPLAUSIBLE_BETAS, TRUNCATED, LOW_DET_SCORE]


def test_tiers_follow_the_cut_offs() -> None:
    t = default_thresholds()
    silver = dataclasses.replace(GOOD, reproj_err_norm=0.06 * math.log(1 / 0.6))  # confidence 0.6
    confidence, tier, reasons = combine(silver, t)
    assert confidence == pytest.approx(0.6)
    assert (tier, reasons) == ("silver", [])
    bronze = dataclasses.replace(GOOD, reproj_err_norm=0.05, betas_absmax=2.9)  # exp(-5/6) * exp(-0.2) ≈ 0.356
    confidence, tier, reasons = combine(bronze, t)
    assert confidence == pytest.approx(math.exp(-5 / 6 - 0.9 / 4.5))
    assert (tier, reasons) == ("bronze", [])
    assert combine(dataclasses.replace(GOOD, reproj_err_norm=0.005), strict_thresholds())[1] == "gold"  # 0.92


@pytest.mark.parametrize(("name", "soft", "scale", "higher_is_better"), SCORE_SCALES)
def test_confidence_is_monotone_in_each_signal(name: str, soft: float, scale: float, higher_is_better: bool) -> None:
    base = dataclasses.replace(GOOD, n_kp_valid=10, box_size_px=120.0, reproj_err_norm=0.05)  # not saturated
    values = np.linspace(0.0, 3.0 * soft + 3.0 * scale, 41)
    if name == "n_kp_valid":
        values = np.arange(18)
    confidences = [
        combine(dataclasses.replace(base, **{name: int(v) if name == "n_kp_valid" else float(v)}), no_thresholds())[0]
        for v in values
    ]
    diffs = np.diff(confidences)
    assert (diffs >= 0).all() if higher_is_better else (diffs <= 0).all()
    assert confidences[0] != confidences[-1]  # the signal matters
    assert all(0.0 <= c <= 1.0 for c in confidences)


def test_combine_is_deterministic_and_bounded_on_random_signals() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = ConfidenceSignals(
            reproj_err_px=float(rng.uniform(0, 100)), reproj_err_norm=float(rng.uniform(0, 0.5)),
            n_kp_valid=int(rng.integers(0, 18)), kp_conf_mean=float(rng.uniform()),
            vposer_z_norm=float(rng.uniform(0, 20)), betas_absmax=float(rng.uniform(0, 6)),
            joint_consistency_mm=float(rng.uniform(0, 400)), truncation=float(rng.uniform()),
            box_size_px=float(rng.uniform(0, 800)), crowding_iou=float(rng.uniform()),
            flip_pa_mpjpe_mm=float(rng.uniform(0, 200)), det_score=float(rng.uniform()),
        )  # fmt: skip
        for t in (default_thresholds(), strict_thresholds(), no_thresholds()):
            confidence, tier, reasons = combine(s, t)
            assert combine(s, t) == (confidence, tier, reasons)
            assert 0.0 <= confidence <= 1.0
            assert tier in QUALITY_TIERS
            assert (tier == "reject") == bool(reasons)
        assert combine(s, no_thresholds())[1] != "reject"  # filter off keeps every finite label


def test_strict_rejects_at_least_what_default_rejects() -> None:
    rng = np.random.default_rng(1)
    rank = {"gold": 3, "silver": 2, "bronze": 1, "reject": 0}
    for _ in range(200):
        s = dataclasses.replace(
            GOOD, n_kp_valid=int(rng.integers(5, 18)), reproj_err_norm=float(rng.uniform(0, 0.15)),
            betas_absmax=float(rng.uniform(0, 4)), box_size_px=float(rng.uniform(30, 300)),
        )  # fmt: skip
        assert rank[combine(s, strict_thresholds())[1]] <= rank[combine(s, default_thresholds())[1]]


# --- thresholds ------------------------------------------------------------------------------------------------------


def test_default_thresholds_are_the_anchor_gates() -> None:
    t = default_thresholds()
    assert (t.kp_conf_threshold, t.min_kp_valid, t.min_box_px, t.max_betas_abs, t.min_det_score) == (
        0.3, 8, 50.0, 3.0, 0.5,
    )  # fmt: skip
    assert t == FilterThresholds()


def test_presets_are_ordered() -> None:
    default, strict, off = default_thresholds(), strict_thresholds(), no_thresholds()
    for f in dataclasses.fields(FilterThresholds):
        d, s, o = getattr(default, f.name), getattr(strict, f.name), getattr(off, f.name)
        if f.name.startswith("max_"):
            assert o >= d >= s, f.name
            assert s < d, f.name
        elif f.name == "kp_conf_threshold":
            assert s >= d == o
        else:  # min_* and tier cut-offs: higher is stricter
            assert s >= d >= o, f.name
    assert off.bronze_min == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_box_px": -1.0}, "min_box_px"),
        ({"kp_conf_threshold": 1.5}, "kp_conf_threshold"),
        ({"max_betas_abs": float("nan")}, "max_betas_abs"),
        ({"min_kp_valid": 18}, "min_kp_valid"),
        ({"min_kp_valid": 8.5}, "min_kp_valid"),
        ({"silver_min": 0.9}, "silver_min"),
        ({"min_det_score": 2.0}, "min_det_score"),
    ],
)
def test_threshold_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FilterThresholds(**kwargs)


# --- score_person ----------------------------------------------------------------------------------------------------


def test_score_person_bundles_signals_and_verdict() -> None:
    others = np.array([[250.0, 50.0, 450.0, 450.0]])
    scored = score_person(_pred(), _keypoints(), (H, W), BOX, others, default_thresholds(), det_score=0.95)
    assert scored.signals.crowding_iou == pytest.approx(50 * 400 / (2 * 200 * 400 - 50 * 400))
    assert scored.accepted
    assert (scored.confidence, scored.quality_tier, scored.reasons) == (
        *combine(scored.signals, default_thresholds())[:2],
        (),
    )
    row = scored.as_row()
    assert set(row) <= set(ANNOTATION_SCHEMA.names)
    assert row["reasons"] == []
    assert row["quality_tier"] in QUALITY_TIERS


def test_score_person_uses_the_thresholds_keypoint_confidence() -> None:
    kp = _keypoints(conf=0.4)
    assert score_person(_pred(), kp, (H, W), BOX, NO_OTHERS, default_thresholds()).signals.n_kp_valid == 17
    strict = score_person(_pred(), kp, (H, W), BOX, NO_OTHERS, strict_thresholds())
    assert strict.signals.n_kp_valid == 0
    assert FEW_KEYPOINTS in strict.reasons

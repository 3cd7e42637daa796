"""Does the combined confidence rank predictions by their true error? A seeded synthetic evaluation (numpy only).

Ground truth (``N_PERSONS`` persons, seed ``SEED``): a 30-joint SMPL-like skeleton (metres, OpenCV camera axes)
posed by forward kinematics over `SMPL_PARENTS` with random local joint rotations, a random yaw and a small pitch,
its root at depth U(4, 10) m behind a pixel of a 1920x1080 image, seen by a pinhole camera with the focal length
equal to the image diagonal (≈ 2203 px) and the principal point at the image centre. Input COCO-17 keypoints are
the true projection plus N(0, 3 px) detector noise with confidences U(0.6, 1); 0-3 joints are occluded (conf
U(0.05, 0.3), N(0, 15 px) noise); the box is the keypoints' extent grown by 10 %.

A fraction ``NUISANCE_FRACTION`` of the persons carry an independent nuisance that makes them genuinely harder
(their error level is multiplied by U(1.5, 3)): far away (depth U(35, 70) m: 50-100 px boxes), truncated (root
near the bottom or a side edge of the image: the keypoints outside get conf 0) or heavily occluded (6-10 joints at
low confidence with 30 px noise). A third of all persons get an overlapping neighbour box (crowding) whatever their
error: a signal that is pure noise here.

Prediction with error level ``theta`` (rad, log-uniform over [0.01, 0.8]): every local joint rotation is perturbed
by an axis-angle ~ N(0, theta²) per axis, the global orientation by a rotation of angle ~ 0.3 theta |N(0, 1)|, the
joints jittered by N(0, 1 cm), the root moved along its viewing ray by a relative depth error ~ N(0, (0.1 theta)²)
(so it keeps its pixel). A keypoint-conditioned model fits the image better than the depth: only a fraction
U(0.2, 0.6) of the root-relative image-plane (camera x, y) error is kept, the depth component whole
(`fit_to_keypoints`). ``joints_3d``, ``coco17_3d`` and ``joints_2d_proj`` follow from that body and the true camera.
The other model-side outputs follow the error partly and noisily: ``vposer_z`` = N(0, I_32) + a random direction
times 10 theta LogN(0, 0.5); ``betas`` = N(0, 1) (0.6 + 1.5 theta LogN(0, 0.7)); the decoder's ``joint_img`` =
true projection + U(0, 0.7) of the SMPL branch's 2D error + N(0, (1 % of the box)²) noise (10 % on occluded
joints), against ``smpl_joints15_img`` = the prediction's projection, both in [0, 1] of a square crop 1.2x the box
(``cam_trans_crop`` z = predicted depth x crop side / 256). No detector score, no flip test.

True error: PA-MPJPE (mm, `dpmesh_core.flip.pa_mpjpe_mm`) of the predicted against the true 24 SMPL joints; a
"good label" has PA-MPJPE < ``GOOD_PA_MPJPE_MM`` = 100 mm (about 2x DPMesh's PA-MPJPE on occluded 3DPW). Scored
by `score_person` at `default_thresholds()`; kept = tier is not ``reject``. PA-MPJPE: median 41 mm, 95th
percentile 229 mm.

Measured (seed 0, 400 persons, about 2 s per seed), with `SCORE_SCALES` tuned on seeds ``TUNING_SEEDS`` = 0-3:

* Spearman(confidence, -PA-MPJPE) = 0.892 (0.750 with the earlier hand-set terms); Spearman(confidence,
  -root-aligned MPJPE) = 0.897. The best single signal, ``reproj_err_norm``, ranks at 0.883; then
  ``reproj_err_px`` 0.82, ``joint_consistency_mm`` 0.65, ``betas_absmax`` 0.62, ``vposer_z_norm`` 0.56.
* base rate of good labels = 0.710; kept fraction = 0.762; precision of the kept set = 0.882 (error rate 12 % vs
  29 % overall); recall of good labels = 0.947.
* mean PA-MPJPE of the top / bottom confidence quintile = 14.3 / 189.7 mm.

Held-out seeds 4-15 (never used in tuning; the test runs 4-7): Spearman 0.871-0.920, mean 0.895 (earlier terms:
0.68-0.76, mean 0.735), above ``reproj_err_norm`` alone on every seed by 0.004-0.025. Seeds 0-7 give precision
0.83-0.90 over base rates 0.68-0.76 and recall 0.91-0.95.

Calibration (`dpmesh_core.calibration`, fitted on seed 0's 400 persons, applied to seeds 4-7): mean calibrated
confidence 0.69-0.74 against good-label rates 0.68-0.72 (within 0.02), 93-96 % good labels at confidence >= 0.75,
Spearman 0.878-0.908.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pytest

from dpmesh_core.calibration import fit_calibration
from dpmesh_core.confidence import ConfidenceSignals, ScoredPerson, default_thresholds, score_person
from dpmesh_core.flip import pa_mpjpe_mm
from dpmesh_core.joints import COCO17_FROM_SMPL30, GRAPH15_FROM_SMPL30, SMPL_PARENTS
from dpmesh_core.person_prediction import PersonPrediction


SEED = 0
# `dpmesh_core.confidence.SCORE_SCALES` was tuned on these seeds only; the test asserts on held-out ones.
TUNING_SEEDS = (0, 1, 2, 3)
HELD_OUT_SEEDS = (4, 5, 6, 7)
N_PERSONS = 400
H, W = 1080, 1920
FOCAL = math.hypot(W, H)  # px: the image diagonal
PRINCIPAL = np.array([W / 2, H / 2])
NUISANCE_FRACTION = 0.2
GOOD_PA_MPJPE_MM = 100.0
THETA_RANGE = (0.01, 0.8)  # rad: prediction error level, log-uniform
ADHERENCE_RANGE = (0.2, 0.6)  # fraction of the image-plane 3D error a keypoint-conditioned model leaves, uniform

# 30-joint template (SMPL30_JOINTS order), metres, OpenCV axes (y down, the person faces -z), pelvis at 0.
TEMPLATE = np.array(
    [
        [0.0, 0.0, 0.0], [0.09, 0.07, 0.0], [-0.09, 0.07, 0.0], [0.0, -0.10, 0.0], [0.10, 0.48, 0.01],
        [-0.10, 0.48, 0.01], [0.0, -0.23, 0.0], [0.10, 0.88, 0.03], [-0.10, 0.88, 0.03], [0.0, -0.28, 0.0],
        [0.11, 0.93, -0.11], [-0.11, 0.93, -0.11], [0.0, -0.50, 0.0], [0.07, -0.42, 0.0], [-0.07, -0.42, 0.0],
        [0.0, -0.58, -0.02], [0.18, -0.43, 0.0], [-0.18, -0.43, 0.0], [0.22, -0.17, 0.0], [-0.22, -0.17, 0.0],
        [0.24, 0.07, -0.02], [-0.24, 0.07, -0.02], [0.25, 0.15, -0.02], [-0.25, 0.15, -0.02], [0.0, -0.62, -0.10],
        [0.03, -0.66, -0.08], [-0.03, -0.66, -0.08], [0.07, -0.64, 0.0], [-0.07, -0.64, 0.0], [0.0, -0.75, 0.0],
    ]
)  # fmt: skip
HEAD = 15
PARENTS30 = (*SMPL_PARENTS, HEAD, HEAD, HEAD, HEAD, HEAD, HEAD)  # face joints and Head_top hang off the Head
# Natural pose variability (rad, std of each local axis-angle component) per SMPL-24 joint; face joints are rigid.
POSE_STD = np.array([0.0, 0.3, 0.3, 0.1, 0.3, 0.3, 0.1, 0.15, 0.15, 0.1, 0.05, 0.05, 0.1, 0.1, 0.1, 0.15, 0.3, 0.3,
                     0.4, 0.4, 0.2, 0.2, 0.05, 0.05] + [0.0] * 6)  # fmt: skip


@dataclass(frozen=True)
class GroundTruth:
    """One synthetic person.

    Attributes:
        local_aa: `(30, 3)` local joint axis-angles, rad; global_aa: `(3,)` global orientation (pitch, yaw), rad.
        root: `(3,)` pelvis in the camera frame, m.
        keypoints: `(17, 3)` input COCO-17 keypoints (x px, y px, conf).
        bbox: `(4,)` xyxy px; others: `(K, 4)` neighbour boxes.
        occluded: `(17,)` bool, keypoints whose detection is unreliable.
    """

    local_aa: np.ndarray
    global_aa: np.ndarray
    root: np.ndarray
    keypoints: np.ndarray
    bbox: np.ndarray
    others: np.ndarray
    occluded: np.ndarray


def rotation(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: `(..., 3)` axis-angle (rad) → `(..., 3, 3)` rotation matrices."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(angle, 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape((*aa.shape[:-1], 3, 3))
    s, c = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def forward_kinematics(local_rot: np.ndarray, global_rot: np.ndarray, root: np.ndarray) -> np.ndarray:
    """`(30, 3, 3)` local joint rotations, `(3, 3)` global orientation, `(3,)` root (m) → `(30, 3)` joints, m."""
    world_rot = np.empty((30, 3, 3))
    joints = np.empty((30, 3))
    for j, parent in enumerate(PARENTS30):
        if parent < 0:
            world_rot[j] = global_rot @ local_rot[j]
            joints[j] = root
        else:
            world_rot[j] = world_rot[parent] @ local_rot[j]
            joints[j] = joints[parent] + world_rot[parent] @ (TEMPLATE[j] - TEMPLATE[parent])
    return joints


def project(points: np.ndarray) -> np.ndarray:
    """`(J, 3)` camera-frame points, m → `(J, 2)` px in the full image."""
    return FOCAL * points[:, :2] / points[:, 2:3] + PRINCIPAL


def ray_point(pixel: np.ndarray, depth: float) -> np.ndarray:
    """The `(3,)` camera-frame point (m) at ``depth`` m that projects to ``pixel`` `(2,)` px."""
    return np.array([*((pixel - PRINCIPAL) * depth / FOCAL), depth])


def keypoint_box(keypoints: np.ndarray) -> np.ndarray:
    """`(4,)` xyxy px: the extent of the keypoints with conf > 0, grown by 10 %, clipped to the image."""
    xy = keypoints[keypoints[:, 2] > 0, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = 0.05 * (hi - lo)
    return np.array(
        [max(lo[0] - pad[0], 0.0), max(lo[1] - pad[1], 0.0), min(hi[0] + pad[0], W), min(hi[1] + pad[1], H)]
    )


def sample_ground_truth(rng: np.random.Generator, nuisance: str) -> GroundTruth:
    """One person; ``nuisance`` is one of ``""`` (none), ``"far"``, ``"truncated"``, ``"occluded"``."""
    local_aa = rng.normal(size=(30, 3)) * POSE_STD[:, None]
    global_aa = np.array([rng.normal(0.0, 0.08), rng.uniform(-np.pi, np.pi), 0.0])
    depth = rng.uniform(35.0, 70.0) if nuisance == "far" else rng.uniform(4.0, 10.0)
    pixel = np.array([rng.uniform(0.2, 0.8) * W, rng.uniform(0.45, 0.55) * H])
    if nuisance == "truncated":
        edge = rng.integers(3)
        pixel = [np.array([pixel[0], rng.uniform(0.9, 1.05) * H]), np.array([rng.uniform(-0.02, 0.04) * W, H / 2]),
                 np.array([rng.uniform(0.96, 1.02) * W, H / 2])][edge]  # fmt: skip
    root = ray_point(pixel, depth)
    coco = project(forward_kinematics(rotation(local_aa), rotation(global_aa), root))[list(COCO17_FROM_SMPL30)]
    n_occ = rng.integers(6, 11) if nuisance == "occluded" else rng.integers(0, 4)
    occluded = np.zeros(17, dtype=bool)
    occluded[rng.choice(17, size=n_occ, replace=False)] = True
    sigma = np.where(occluded, 30.0 if nuisance == "occluded" else 15.0, 3.0)
    conf = np.where(occluded, rng.uniform(0.05, 0.3, 17), rng.uniform(0.6, 1.0, 17))
    xy = coco + rng.normal(size=(17, 2)) * sigma[:, None]
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= W) | (xy[:, 1] < 0) | (xy[:, 1] >= H)
    conf[outside] = 0.0
    keypoints = np.concatenate([xy, conf[:, None]], axis=1)
    bbox = keypoint_box(keypoints)
    others = np.zeros((0, 4))
    if rng.random() < 1 / 3:  # a neighbour overlapping by a random shift: crowding unrelated to the error
        shift = rng.uniform(-0.8, 0.8, 2) * (bbox[2:] - bbox[:2])
        others = (bbox + np.tile(shift, 2))[None]
    return GroundTruth(local_aa, global_aa, root, keypoints, bbox, others, occluded | outside)


def fit_to_keypoints(pred30: np.ndarray, true30: np.ndarray, residual: float) -> np.ndarray:
    """Mimic a model conditioned on 2D keypoints: keep ``residual`` of the root-relative image-plane error.

    Args:
        pred30, true30: `(30, 3)` predicted and true camera-frame joints, m.
        residual: fraction of the x, y (camera frame) component of the root-relative error left, in [0, 1]; the
            depth component (invisible in the image) is kept whole.

    Returns:
        `(30, 3)` adjusted predicted joints, m (same root).
    """
    error = (pred30 - pred30[:1]) - (true30 - true30[:1])
    error[:, :2] *= residual
    return pred30[:1] + (true30 - true30[:1]) + error


def crop_units(points_px: np.ndarray, crop_xywh: np.ndarray) -> np.ndarray:
    """`(J, 2)` full-image px → `(J, 2)` in [0, 1] of the square crop ``crop_xywh`` `(4,)`."""
    return (points_px - crop_xywh[:2]) / crop_xywh[2]


def predict(rng: np.random.Generator, gt: GroundTruth, theta: float) -> tuple[PersonPrediction, np.ndarray]:
    """A prediction of ``gt`` at error level ``theta`` (rad, see the module docstring).

    Returns:
        The `PersonPrediction` and the true `(30, 3)` camera-frame joints, m.
    """
    true30 = forward_kinematics(rotation(gt.local_aa), rotation(gt.global_aa), gt.root)
    local_rot = rotation(rng.normal(0.0, theta, (30, 3))) @ rotation(gt.local_aa)
    axis = rng.normal(size=3)
    global_rot = rotation(axis / np.linalg.norm(axis) * 0.3 * theta * abs(rng.normal())) @ rotation(gt.global_aa)
    root = gt.root * (1.0 + rng.normal(0.0, 0.1 * theta))
    pred30 = forward_kinematics(local_rot, global_rot, root) + rng.normal(0.0, 0.01, (30, 3))
    pred30 = fit_to_keypoints(pred30, true30, rng.uniform(*ADHERENCE_RANGE))
    proj30 = project(pred30)
    box_side = float(np.max(gt.bbox[2:] - gt.bbox[:2]))
    side = max(1.2 * box_side, 1.0)  # a degenerate box (one visible keypoint) still gets a finite crop
    crop = np.array([*((gt.bbox[:2] + gt.bbox[2:]) / 2 - side / 2), side, side])
    graph = list(GRAPH15_FROM_SMPL30)
    true15, pred15 = project(true30)[graph], proj30[graph]
    occluded15 = np.isin(graph, np.asarray(COCO17_FROM_SMPL30)[gt.occluded])
    dec_sigma = np.where(occluded15, 0.1, 0.01) * box_side
    decoder15 = true15 + rng.uniform(0.0, 0.7) * (pred15 - true15) + rng.normal(size=(15, 2)) * dec_sigma[:, None]
    direction = rng.normal(size=32)
    vposer_z = rng.normal(size=32) + direction / np.linalg.norm(direction) * 10 * theta * rng.lognormal(0.0, 0.5)
    betas = rng.normal(size=10) * (0.6 + 1.5 * theta * rng.lognormal(0.0, 0.7))
    coco = pred30[list(COCO17_FROM_SMPL30)]
    pred = PersonPrediction(
        global_orient=matrix_to_axis_angle(global_rot), body_pose=matrix_to_axis_angle(local_rot[1:24]).reshape(-1),
        betas=betas, transl=root, focal_length=FOCAL, principal_point=PRINCIPAL.copy(), joints_3d=pred30[:24],
        coco17_3d=coco, joints_2d_proj=project(coco), vposer_z=vposer_z,
        joint_img=np.concatenate([crop_units(decoder15, crop), np.full((15, 1), 0.5)], axis=1),
        smpl_joints15_img=crop_units(pred15, crop), crop_bbox_xywh=crop,
        cam_trans_crop=np.array([0.0, 0.0, root[2] * side / 256]), vertices=coco.copy(),
    )  # fmt: skip
    return pred, true30


def matrix_to_axis_angle(rot: np.ndarray) -> np.ndarray:
    """`(..., 3, 3)` rotations → `(..., 3)` axis-angles, rad (inexact near pi; fills unscored output fields only)."""
    cos = np.clip((np.trace(rot, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    vec = np.stack(
        [rot[..., 2, 1] - rot[..., 1, 2], rot[..., 0, 2] - rot[..., 2, 0], rot[..., 1, 0] - rot[..., 0, 1]], -1
    )
    sin = np.sin(angle)[..., None]
    return np.where(sin > 1e-9, vec / np.maximum(2 * sin, 1e-12) * angle[..., None], 0.0)


def rank_average(x: np.ndarray) -> np.ndarray:
    """`(N,)` → `(N,)` ranks 1..N, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two `(N,)` arrays (Pearson of tie-averaged ranks)."""
    return float(np.corrcoef(rank_average(a), rank_average(b))[0, 1])


# Signals stored per person and the direction in which each says "better" (+1: higher is better).
SIGNAL_DIRECTIONS: dict[str, int] = {
    "reproj_err_norm": -1, "reproj_err_px": -1, "joint_consistency_mm": -1, "betas_absmax": -1, "vposer_z_norm": -1,
    "n_kp_valid": 1, "kp_conf_mean": 1, "box_size_px": 1, "truncation": -1, "crowding_iou": -1,
}  # fmt: skip


@dataclass(frozen=True)
class Evaluation:
    """Per-person arrays `(N_PERSONS,)`: confidence, kept (tier != reject), PA-MPJPE and root-aligned MPJPE, mm;
    ``signals`` maps each `SIGNAL_DIRECTIONS` name to its `(N_PERSONS,)` values (NaN for undefined)."""

    confidence: np.ndarray
    kept: np.ndarray
    pa_mpjpe: np.ndarray
    mpjpe: np.ndarray
    reasons: tuple[tuple[str, ...], ...]
    signals: dict[str, np.ndarray]
    scored_signals: tuple[ConfidenceSignals, ...]


@functools.cache
def evaluate(seed: int = SEED) -> Evaluation:
    """Sample, predict and score the ``N_PERSONS`` synthetic persons of ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    kinds = ("far", "truncated", "occluded")
    conf, kept, pa, mpjpe, reasons, scored_signals = [], [], [], [], [], []
    signals: dict[str, list[float]] = {name: [] for name in SIGNAL_DIRECTIONS}
    for _ in range(N_PERSONS):
        nuisance = str(rng.choice(kinds)) if rng.random() < NUISANCE_FRACTION else ""
        theta = math.exp(rng.uniform(*np.log(THETA_RANGE)))
        if nuisance:
            theta *= rng.uniform(1.5, 3.0)
        gt = sample_ground_truth(rng, nuisance)
        pred, true30 = predict(rng, gt, theta)
        scored: ScoredPerson = score_person(pred, gt.keypoints, (H, W), gt.bbox, gt.others, default_thresholds())
        conf.append(scored.confidence)
        kept.append(scored.accepted)
        reasons.append(scored.reasons)
        scored_signals.append(scored.signals)
        for name in SIGNAL_DIRECTIONS:
            signals[name].append(float(getattr(scored.signals, name)))
        pa.append(pa_mpjpe_mm(true30[:24], pred.joints_3d))
        aligned = (pred.joints_3d - pred.joints_3d[:1]) - (true30[:24] - true30[:1])
        mpjpe.append(float(np.linalg.norm(aligned, axis=1).mean() * 1000.0))
    return Evaluation(
        np.array(conf), np.array(kept), np.array(pa), np.array(mpjpe), tuple(reasons),
        {name: np.array(values) for name, values in signals.items()}, tuple(scored_signals),
    )  # fmt: skip


def signal_spearman(ev: Evaluation, name: str) -> float:
    """Spearman of one stored signal, oriented so that higher means "better", with -PA-MPJPE (NaN ranks worst)."""
    oriented = SIGNAL_DIRECTIONS[name] * ev.signals[name]
    return spearman(np.nan_to_num(oriented, nan=-np.inf), -ev.pa_mpjpe)


def test_spearman_helper_matches_hand_values() -> None:
    assert rank_average(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)


def test_confidence_ranks_predictions_by_true_error() -> None:
    ev = evaluate()
    rho_pa = spearman(ev.confidence, -ev.pa_mpjpe)
    rho_mpjpe = spearman(ev.confidence, -ev.mpjpe)
    print(f"\nSpearman(confidence, -PA-MPJPE) = {rho_pa:.3f}; Spearman(confidence, -MPJPE) = {rho_mpjpe:.3f}")
    assert rho_pa >= 0.87  # measured 0.892
    assert rho_mpjpe >= 0.85  # measured 0.897


def test_confidence_ranks_at_least_as_well_as_its_best_single_signal() -> None:
    ev = evaluate()
    singles = {name: signal_spearman(ev, name) for name in SIGNAL_DIRECTIONS}
    best = max(singles, key=lambda name: singles[name])
    rho = spearman(ev.confidence, -ev.pa_mpjpe)
    print(f"\ncombined {rho:.3f}; best single signal {best} {singles[best]:.3f}")
    assert best == "reproj_err_norm"
    assert rho >= singles[best]  # measured 0.892 vs 0.883


@pytest.mark.parametrize("seed", HELD_OUT_SEEDS)
def test_confidence_ranks_error_on_held_out_seeds(seed: int) -> None:
    """`SCORE_SCALES` was tuned on `TUNING_SEEDS` only; these seeds never took part."""
    assert seed not in TUNING_SEEDS
    ev = evaluate(seed)
    rho = spearman(ev.confidence, -ev.pa_mpjpe)
    reproj = signal_spearman(ev, "reproj_err_norm")
    print(f"\nseed {seed}: Spearman(confidence, -PA-MPJPE) = {rho:.3f}; reproj_err_norm alone {reproj:.3f}")
    assert rho >= 0.85  # measured 0.871-0.920 on seeds 4-15
    assert rho >= reproj  # measured +0.004 to +0.025 on seeds 4-15


@pytest.mark.parametrize("seed", HELD_OUT_SEEDS)
def test_a_calibration_fitted_on_400_persons_is_calibrated_on_held_out_seeds(seed: int) -> None:
    """``dpmesh-eval fit_confidence=true`` in miniature: fit on the benchmark seed's 400 persons (their true
    PA-MPJPE as ground truth), apply to unseen seeds. The calibrated confidence is then a probability of a good
    label: its mean matches the good-label rate, and labels above ``gold_min`` are good at least 9 times in 10."""
    train = evaluate()
    calibration = fit_calibration(train.scored_signals, train.pa_mpjpe, GOOD_PA_MPJPE_MM)
    ev = evaluate(seed)
    conf = np.array([calibration.confidence(s) for s in ev.scored_signals])
    good = ev.pa_mpjpe < GOOD_PA_MPJPE_MM
    gold = conf >= default_thresholds().gold_min
    print(
        f"\nseed {seed}: mean calibrated confidence {conf.mean():.3f} vs good rate {good.mean():.3f}; "
        f"good among >= gold_min {good[gold].mean():.3f}; Spearman {spearman(conf, -ev.pa_mpjpe):.3f}"
    )
    assert abs(conf.mean() - good.mean()) <= 0.05  # measured 0.007-0.019 on seeds 4-7
    assert good[gold].mean() >= 0.9  # measured 0.93-0.96
    assert spearman(conf, -ev.pa_mpjpe) >= 0.85  # measured 0.878-0.908


def test_every_rejection_keeps_its_reasons() -> None:
    ev = evaluate()
    assert all(bool(r) == (not k) for r, k in zip(ev.reasons, ev.kept, strict=True))


def test_kept_set_is_precise_at_the_default_threshold() -> None:
    ev = evaluate()
    good = ev.pa_mpjpe < GOOD_PA_MPJPE_MM
    base_rate = float(good.mean())
    kept_fraction = float(ev.kept.mean())
    precision = float(good[ev.kept].mean())
    recall = float(ev.kept[good].mean())
    print(
        f"\nbase rate {base_rate:.3f}; kept {kept_fraction:.3f}; precision {precision:.3f}; recall {recall:.3f}"
        f" (good = PA-MPJPE < {GOOD_PA_MPJPE_MM:.0f} mm)"
    )
    assert precision >= 0.85  # measured 0.882
    assert precision - base_rate >= 0.12  # measured 0.882 - 0.710 = 0.172
    assert recall >= 0.85  # measured 0.947
    assert 0.60 <= kept_fraction <= 0.90  # measured 0.762


def test_confidence_quintiles_are_ordered_by_error() -> None:
    ev = evaluate()
    order = np.argsort(-ev.confidence, kind="stable")
    fifth = N_PERSONS // 5
    top, bottom = ev.pa_mpjpe[order[:fifth]].mean(), ev.pa_mpjpe[order[-fifth:]].mean()
    print(f"\nmean PA-MPJPE: top quintile {top:.1f} mm, bottom quintile {bottom:.1f} mm")
    assert top < bottom
    assert bottom >= 4.0 * top  # measured 14.3 vs 189.7 mm (13x)

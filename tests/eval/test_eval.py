"""dpmesh-eval pieces on hand-computed cases: metrics, confidence quality, ground-truth layout and join, the 3DPW
reader's restricted unpickler, and the confidence calibration (numpy; the body model only where named)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import re
from typing import Any

import numpy as np
import pytest

from dpmesh_core.calibration import CALIBRATION_FORMAT, ConfidenceCalibration, default_terms, fit_calibration
from dpmesh_core.confidence import ConfidenceSignals, combine, default_thresholds
from pipelines.eval import metrics as m
from pipelines.eval.document import EvalDocumentError, parse_document
from pipelines.eval.evaluate import MeshBuilder, evaluate_rows, format_markdown, read_ground_truth
from pipelines.eval.ground_truth import (
    DuplicateGroundTruthError,
    GroundTruthIndex,
    GroundTruthRowError,
    person_from_row,
)
from pipelines.eval.pw3d import (
    RestrictedUnpickler,
    axis_angle_to_matrix,
    load_sequence,
    matrix_to_axis_angle,
    sequence_persons,
)
from pipelines.eval.quality import confidence_quality, sparsification, spearman
from pipelines.storage import Storage
from tests.fakes.tiny_smpl import make_fake_smpl_data


RNG = np.random.default_rng(0)
JOINTS = RNG.normal(size=(24, 3)) * 0.3 + np.array([0.0, 0.0, 5.0])  # metres, camera frame


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# --- metrics -----------------------------------------------------------------------------------------------------


def test_identical_joints_give_zero() -> None:
    assert m.mpjpe_mm(JOINTS, JOINTS) == 0.0
    assert m.pa_mpjpe(JOINTS, JOINTS) == pytest.approx(0.0, abs=1e-9)
    assert m.pve_mm(JOINTS, JOINTS, JOINTS[0], JOINTS[0]) == 0.0


def test_a_known_rotation_about_the_pelvis() -> None:
    """Rotating the body by 90 degrees about z through the pelvis moves a joint at distance r from the z axis through
    the pelvis by r * sqrt(2); Procrustes undoes it."""
    rel = JOINTS - JOINTS[0]
    rotated = JOINTS[0] + rel @ _rot_z(math.pi / 2).T
    expected = float(np.mean(np.linalg.norm(rel[:, :2], axis=1)) * math.sqrt(2) * 1000.0)
    assert m.mpjpe_mm(rotated, JOINTS) == pytest.approx(expected, rel=1e-9)
    assert m.pa_mpjpe(rotated, JOINTS) == pytest.approx(0.0, abs=1e-6)


def test_a_known_scale_and_translation() -> None:
    """``pred = 1.1 * gt + t``: pelvis alignment removes t, leaving 0.1 x each joint's distance to the pelvis."""
    moved = 1.1 * JOINTS + np.array([0.5, -0.2, 3.0])
    expected = float(np.mean(np.linalg.norm(JOINTS - JOINTS[0], axis=1)) * 0.1 * 1000.0)
    assert m.mpjpe_mm(moved, JOINTS) == pytest.approx(expected, rel=1e-9)
    assert m.pa_mpjpe(moved, JOINTS) == pytest.approx(0.0, abs=1e-6)
    assert m.mpjpe_mm(JOINTS + np.array([1.0, 2.0, 3.0]), JOINTS) == pytest.approx(0.0, abs=1e-9)


def test_one_displaced_joint() -> None:
    moved = JOINTS.copy()
    moved[5, 0] += 0.024  # 24 mm on one of 24 joints
    assert m.mpjpe_mm(moved, JOINTS) == pytest.approx(1.0)


def test_non_finite_gives_nan_and_bad_shapes_raise() -> None:
    bad = JOINTS.copy()
    bad[3, 1] = np.nan
    assert math.isnan(m.mpjpe_mm(bad, JOINTS))
    assert math.isnan(m.pa_mpjpe(JOINTS, bad))
    with pytest.raises(ValueError, match="N, 3"):
        m.mpjpe_mm(JOINTS[:10], JOINTS)


def test_lsp14_regressor_picks_the_evaluation_joints() -> None:
    """A regressor that copies vertex j to H36M joint j: LSP-14 errors only see the 14 evaluation joints."""
    vertices = RNG.normal(size=(17, 3))
    regressor = np.eye(17)
    moved = vertices.copy()
    moved[9] += 1.0  # H36M joint 9 (nose) is not an evaluation joint
    assert m.lsp14_mpjpe_mm(moved, vertices, regressor) == 0.0
    moved = vertices.copy()
    moved[16, 2] += 0.014  # a wrist, 14 mm
    assert m.lsp14_mpjpe_mm(moved, vertices, regressor) == pytest.approx(1.0)
    moved = vertices + np.array([0.0, 0.0, 0.07])
    moved[0] = vertices[0]  # only the pelvis stays: every evaluation joint is 70 mm off relative to it
    assert m.lsp14_mpjpe_mm(moved, vertices, regressor) == pytest.approx(70.0)
    assert m.lsp14_pa_mpjpe_mm(moved, vertices, regressor) == pytest.approx(0.0, abs=1e-6)


def test_global_orientation_rotation_through_the_body_model() -> None:
    """SMPL rotates about joint 0: a label whose global orientation is the ground truth's turned by R has
    MPJPE = mean ||(R - I)(j - j0)||, PA-MPJPE ~ 0, and PVE = mean ||(R - I)(v - j0)||."""
    meshes = MeshBuilder({"neutral": make_fake_smpl_data(num_vertices=64).to_arrays()})
    pose = RNG.normal(size=72) * 0.2
    betas = RNG.normal(size=10) * 0.5
    gt_vertices, gt_joints = meshes.mesh(pose, betas)
    rot = _rot_z(0.4)
    turned = pose.copy()
    turned[:3] = matrix_to_axis_angle(rot @ axis_angle_to_matrix(pose[:3]))
    pred_vertices, pred_joints = meshes.mesh(turned, betas)
    expected_joints = float(np.mean(np.linalg.norm((gt_joints - gt_joints[0]) @ (rot - np.eye(3)).T, axis=1)) * 1000)
    expected_pve = float(np.mean(np.linalg.norm((gt_vertices - gt_joints[0]) @ (rot - np.eye(3)).T, axis=1)) * 1000)
    assert m.mpjpe_mm(pred_joints, gt_joints) == pytest.approx(expected_joints, rel=1e-4)
    assert m.pa_mpjpe(pred_joints, gt_joints) == pytest.approx(0.0, abs=1e-2)
    assert m.pve_mm(pred_vertices, gt_vertices, pred_joints[0], gt_joints[0]) == pytest.approx(expected_pve, rel=1e-4)


def test_axis_angle_round_trip_including_near_pi() -> None:
    for aa in (np.array([0.1, -0.2, 0.3]), np.array([0.0, 0.0, 0.0]), np.array([math.pi - 1e-4, 0.0, 0.0])):
        back = matrix_to_axis_angle(axis_angle_to_matrix(aa))
        assert np.allclose(axis_angle_to_matrix(back), axis_angle_to_matrix(aa), atol=1e-9)


# --- confidence quality --------------------------------------------------------------------------------------------


def test_spearman_and_sparsification_on_hand_values() -> None:
    error = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(-error, -error) == pytest.approx(1.0)
    assert spearman(error, -error) == pytest.approx(-1.0)
    perfect = confidence_quality(-error, error, "pa_mpjpe_mm", steps=4)
    assert perfect is not None
    assert perfect.ause_mm == 0.0
    assert [p.oracle_mean_error_mm for p in perfect.sparsification] == [2.5, 2.0, 1.5, 1.0]
    inverted = confidence_quality(error, error, "pa_mpjpe_mm", steps=4)
    assert inverted is not None
    assert [p.mean_error_mm for p in inverted.sparsification] == [2.5, 3.0, 3.5, 4.0]
    # gaps 0, 1, 2, 3 at fractions 0, 1/4, 1/2, 3/4: trapezoids 0.25 * (0.5 + 1.5 + 2.5)
    assert inverted.ause_mm == pytest.approx(1.125)
    assert inverted.ause_relative == pytest.approx(1.125 / 2.5)
    assert inverted.spearman == pytest.approx(-1.0)


def test_sparsification_ties_are_stable_and_nan_is_left_out() -> None:
    points = sparsification(np.ones(4), np.array([4.0, 3.0, 2.0, 1.0]), steps=2)
    assert [p.mean_error_mm for p in points] == [2.5, 3.5]  # equal confidence: removed from the end, in order
    quality = confidence_quality(np.array([1.0, np.nan, 0.5]), np.array([1.0, 2.0, np.nan]), "x")
    assert quality is not None
    assert quality.n == 1
    assert confidence_quality(np.array([np.nan]), np.array([1.0]), "x") is None


# --- ground truth ----------------------------------------------------------------------------------------------------


def _label_row(
    sample: str, idx: int, joints: np.ndarray, tier: str, confidence: float, **extra: Any
) -> dict[str, Any]:
    return {
        "sample_id": f"{sample}_p{idx}", "image_key": sample, "person_idx": idx, "source_uri": f"/data/{sample}.jpg",
        "joints_3d": joints.tolist(), "global_orient": [0.0] * 3, "body_pose": [0.0] * 69, "betas": [0.0] * 10,
        "confidence": confidence, "quality_tier": tier, **extra,
    }  # fmt: skip


def test_ground_truth_rows_need_a_key_and_a_body() -> None:
    person = person_from_row({"sample_id": "a_p0", "joints_3d": JOINTS.reshape(-1).tolist(), "gender": "F"})
    assert person.gender == "female"
    assert person.joints_3d is not None
    assert person.joints_3d.shape == (24, 3)
    with pytest.raises(ValueError, match="sample_id"):
        person_from_row({"joints_3d": JOINTS.tolist()})
    with pytest.raises(ValueError, match="joints_3d or global_orient"):
        person_from_row({"sample_id": "a_p0"})
    with pytest.raises(ValueError, match="gender"):
        person_from_row({"sample_id": "a_p0", "joints_3d": JOINTS.tolist(), "gender": "x"})


def test_join_by_sample_id_image_key_or_path_suffix() -> None:
    gt = GroundTruthIndex(
        [
            person_from_row({"sample_id": "a_p0", "joints_3d": JOINTS.tolist()}),
            person_from_row({"image_key": "b", "person_idx": 1, "joints_3d": JOINTS.tolist()}),
            person_from_row({"image_path": "seq/c.jpg", "person_idx": 0, "joints_3d": JOINTS.tolist()}),
        ]
    )
    rows = [
        {"sample_id": "a_p0", "image_key": "a", "person_idx": 0, "source_uri": "s3://x/a.jpg"},
        {"sample_id": "b_p1", "image_key": "b", "person_idx": 1, "source_uri": "/b.jpg"},
        {"sample_id": "k_p0", "image_key": "k", "person_idx": 0, "source_uri": "/data/imageFiles/seq/c.jpg"},
        {"sample_id": "k_p1", "image_key": "k", "person_idx": 1, "source_uri": "/data/imageFiles/seq/c.jpg"},
        {"sample_id": "z_p0", "image_key": "z", "person_idx": 0, "source_uri": "/data/xseq/c.jpg"},  # not at a /
    ]
    assert [gt.match(r) is not None for r in rows] == [True, True, True, False, False]


def test_evaluate_rows_breaks_down_by_tier_and_handles_a_missing_occlusion_column() -> None:
    moved = JOINTS.copy()
    moved[5, 0] += 0.024  # 1 mm MPJPE
    rows = [
        _label_row("a", 0, JOINTS, "gold", 0.9),
        _label_row("b", 0, moved, "reject", 0.1),
        _label_row("c", 0, JOINTS, "silver", 0.5),  # no ground truth
    ]
    gt = GroundTruthIndex([person_from_row({"sample_id": s, "joints_3d": JOINTS.tolist()}) for s in ("a_p0", "b_p0")])
    result = evaluate_rows(rows, gt)
    assert result.counts == {
        "label_rows": 3, "ground_truth_persons": 2, "ground_truth_invalid": 0, "matched": 2, "unmatched_labels": 1,
        "unmatched_ground_truth": 0, "non_finite": 0, "no_metric": 0, "evaluated": 2,
    }  # fmt: skip
    assert result.metrics == ("mpjpe_mm", "pa_mpjpe_mm")
    assert result.by_occlusion_level is None
    assert list(result.by_tier) == ["gold", "reject"]
    assert result.by_tier["reject"].mean["mpjpe_mm"] == pytest.approx(1.0)
    assert result.overall.mean["mpjpe_mm"] == pytest.approx(0.5)
    quality = result.confidence_quality["pa_mpjpe_mm"]
    assert quality is not None
    assert quality.spearman == pytest.approx(1.0)
    doc = result.to_dict(include_persons=True)
    assert doc["by_occlusion_level"] is None
    assert len(doc["persons"]) == 2
    assert "persons" not in result.to_dict()
    reject = doc["by_tier"]["reject"]  # flat: one table row per group
    assert (reject["n"], reject["mpjpe_mm"], reject["median_mpjpe_mm"]) == (1, pytest.approx(1.0), pytest.approx(1.0))
    assert "| tier reject | 1 |" in format_markdown(doc)

    occluded = [dict(r, occlusion_level=level) for r, level in zip(rows, ("heavy", None, "none"), strict=True)]
    result = evaluate_rows(occluded, gt)
    assert result.by_occlusion_level is not None
    assert sorted(result.by_occlusion_level) == ["heavy", "unknown"]


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        ({"joints_3d": [0.0] * 87}, "wrong_length", "joints_3d: expected 72 values, got 87"),
        ({"joints_3d": [0.0] * 71}, "wrong_length", "joints_3d: expected 72 values, got 71"),
        ({"betas": [0.0] * 9}, "wrong_length", "betas: expected 10 or more values, got 9"),
        ({"body_pose": [0.0] * 70}, "wrong_length", "body_pose: expected 69 values, got 70"),
        ({"joints_3d": [math.nan] + [0.0] * 71}, "non_finite", "joints_3d: holds NaN or inf"),
        ({"betas": [math.inf] * 10}, "non_finite", "betas: holds NaN or inf"),
        ({"joints_3d": ["a"] * 72}, "not_numeric", "joints_3d: not a list of numbers"),
        ({"sample_id": None, "image_key": "k", "person_idx": 1.5}, "invalid_id", "person_idx=1.5"),
        ({"sample_id": None, "image_key": "k", "person_idx": True}, "invalid_id", "person_idx=True"),
        ({"sample_id": None, "image_key": "k", "person_idx": -1}, "invalid_id", "person_idx=-1"),
        ({"sample_id": 7}, "invalid_id", "sample_id=7: expected a non-empty string"),
    ],
)
def test_a_ground_truth_row_is_never_cut_or_coerced_to_fit(change: dict[str, Any], reason: str, message: str) -> None:
    row = {"sample_id": "a_p0", "joints_3d": JOINTS.reshape(-1).tolist(), "global_orient": [0.0] * 3,
           "body_pose": [0.0] * 69, "betas": [0.0] * 10, **change}  # fmt: skip
    with pytest.raises(GroundTruthRowError, match=re.escape(message)) as exc:
        person_from_row(row)
    assert exc.value.reason == reason


def test_ground_truth_accepts_more_betas_and_an_integral_float_index() -> None:
    """As documented: 10 or more betas (the first 10 used); a pandas-written index column is float."""
    person = person_from_row({"image_key": "k", "person_idx": 2.0, "global_orient": [0.0] * 3,
                              "body_pose": [0.0] * 69, "betas": list(range(300))})  # fmt: skip
    assert person.person_idx == 2
    assert person.betas is not None
    assert person.betas.tolist() == list(range(10))


def test_a_repeated_join_key_is_refused_naming_both_rows() -> None:
    for key in (
        {"sample_id": "a_p0"},
        {"image_key": "k", "person_idx": 1},
        {"image_path": "/s/i.jpg", "person_idx": 0},
    ):
        first = person_from_row({**key, "joints_3d": JOINTS.tolist()}, "gt.parquet row 3")
        second = person_from_row({**key, "joints_3d": (JOINTS + 1).tolist()}, "gt.parquet row 9")
        with pytest.raises(
            DuplicateGroundTruthError, match=r"is given twice \(gt\.parquet row 3 and gt\.parquet row 9\)"
        ):
            GroundTruthIndex([first, second])


def test_malformed_or_nan_labels_are_counted_and_left_out_of_every_n() -> None:
    """A label with NaN joints, or joints of the wrong length (a hand-edited Parquet), is counted as non-finite and
    left out of the groups and the confidence quality: each ``n`` is the persons its figures cover."""
    moved = JOINTS.copy()
    moved[5, 0] += 0.024  # 1 mm
    rows = [
        _label_row("a", 0, JOINTS, "gold", 0.9),
        _label_row("b", 0, moved, "gold", 0.8),
        _label_row("c", 0, np.full((24, 3), np.nan), "gold", 0.7),
        {**_label_row("d", 0, JOINTS, "gold", 0.6), "joints_3d": [1.0] * 10},
        {**_label_row("e", 0, JOINTS, "gold", 0.5), "confidence": "high", "occlusion_level": 3},
    ]
    gt = GroundTruthIndex([person_from_row({"sample_id": f"{s}_p0", "joints_3d": JOINTS.tolist()}) for s in "abcde"])
    result = evaluate_rows(rows, gt)
    assert (result.counts["matched"], result.counts["non_finite"], result.counts["evaluated"]) == (5, 2, 3)
    doc = result.to_dict()
    assert doc["overall"]["n"] == doc["overall"]["n_mpjpe_mm"] == 3
    assert doc["overall"]["mpjpe_mm"] == pytest.approx(1.0 / 3)
    assert doc["by_tier"]["gold"]["n"] == 3
    assert doc["confidence_quality"]["mpjpe_mm"]["n"] == 2, "e's confidence is not a number"
    assert "evaluated 3 (left out: 2 with non-finite or malformed label values)" in format_markdown(doc)
    parse_document(json.dumps(result.to_dict(include_persons=True)).encode())  # what dpmesh-eval writes is valid


def test_the_eval_document_refuses_unsafe_metric_names_and_repeated_keys() -> None:
    rows = [_label_row("a", 0, JOINTS, "gold", 0.9)]
    doc = evaluate_rows(rows, GroundTruthIndex([person_from_row({"sample_id": "a_p0", "joints_3d": JOINTS.tolist()})]))
    good = doc.to_dict()
    for name in ("../x", "a/b", "..", "", "a\nb"):
        bad = {**good, "metrics": [*good["metrics"], name]}
        with pytest.raises(EvalDocumentError, match=r"metrics\[2\]: metric name"):
            parse_document(json.dumps(bad).encode())
    with pytest.raises(EvalDocumentError, match="'version' is given twice"):
        parse_document(b'{"format": "dpmesh-eval", "version": 1, "version": 1}')
    with pytest.raises(EvalDocumentError, match=r"format: missing \(not a dpmesh-eval document\)"):
        parse_document(b'{"spearman": 1.0}')


def test_3dpw_nan_persons_are_counted_and_a_damaged_file_is_named(tmp_path: Any) -> None:
    seq = _sequence()
    seq["poses"][0][1, 5] = np.nan  # actor 0, frame 1
    (tmp_path / "seq.pkl").write_bytes(pickle.dumps(seq, protocol=2))
    index = read_ground_truth(Storage(), str(tmp_path / "seq.pkl"))
    assert len(index) == 4
    assert index.problems == {"non_finite": 1}
    assert "seq.pkl frame 1 actor 0: ground truth body_pose: holds NaN or inf" in index.examples[0]
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(seq, protocol=2)[:200])
    with pytest.raises(ValueError, match=r"cut\.pkl: not a readable 3DPW sequence file"):
        read_ground_truth(Storage(), str(tmp_path / "cut.pkl"))


# --- 3DPW --------------------------------------------------------------------------------------------------------


def _sequence(n_frames: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    cam = np.tile(np.eye(4), (n_frames, 1, 1))
    cam[:, :3, :3] = _rot_z(0.3)
    return {
        "sequence": "courtyard_test_00",
        "poses": [rng.normal(size=(n_frames, 72)) * 0.1, rng.normal(size=(n_frames, 72)) * 0.1],
        "betas": [rng.normal(size=10), rng.normal(size=300)],
        "trans": [rng.normal(size=(n_frames, 3)), rng.normal(size=(n_frames, 3))],
        "cam_poses": cam,
        "cam_intrinsics": np.eye(3),
        "campose_valid": [np.ones(n_frames), np.array([1, 0, 1])],
        "genders": ["m", "f"],
        "img_frame_ids": np.arange(n_frames),
        "poses2d": [rng.normal(size=(n_frames, 3, 18))] * 2,
    }


def test_3dpw_sequence_becomes_camera_frame_ground_truth() -> None:
    seq = _sequence()
    loaded = load_sequence(pickle.dumps(seq, protocol=2))
    persons = list(sequence_persons(loaded))
    assert [(p.image_path, p.person_idx) for p in persons] == [
        ("courtyard_test_00/image_00000.jpg", 0), ("courtyard_test_00/image_00000.jpg", 1),
        ("courtyard_test_00/image_00001.jpg", 0),  # actor 1's camera pose is not valid in frame 1
        ("courtyard_test_00/image_00002.jpg", 0), ("courtyard_test_00/image_00002.jpg", 1),
    ]  # fmt: skip
    first = persons[0]
    assert first.gender == "male"
    assert persons[1].gender == "female"
    assert first.betas is not None
    assert persons[1].betas is not None
    assert persons[1].betas.shape == (10,)
    expected = _rot_z(0.3) @ axis_angle_to_matrix(seq["poses"][0][0, :3])
    assert first.global_orient is not None
    assert np.allclose(axis_angle_to_matrix(first.global_orient), expected, atol=1e-9)
    assert first.body_pose is not None
    assert np.allclose(first.body_pose, seq["poses"][0][0, 3:])


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /dev/null",))


def test_3dpw_reader_refuses_a_pickle_that_runs_code(tmp_path: Any) -> None:
    marker = tmp_path / "ran"

    class _Touch:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    for payload in ({"sequence": "x", "poses": _Exploit()}, {"sequence": "x", "poses": _Touch()}):
        data = pickle.dumps(payload, protocol=2)
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            load_sequence(data)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval|refused"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(eval, protocol=2))).load()


def test_3dpw_reader_refuses_non_sequences() -> None:
    with pytest.raises(ValueError, match="missing keys"):
        load_sequence(pickle.dumps({"sequence": "x"}, protocol=2))
    with pytest.raises(ValueError, match="expected a dict"):
        load_sequence(pickle.dumps([1, 2], protocol=2))


# --- calibration ---------------------------------------------------------------------------------------------------


GOOD = ConfidenceSignals(
    reproj_err_px=4.0, reproj_err_norm=0.01, n_kp_valid=17, kp_conf_mean=0.9, vposer_z_norm=5.0, betas_absmax=1.0,
    joint_consistency_mm=20.0, truncation=0.0, box_size_px=400.0, crowding_iou=0.0, flip_pa_mpjpe_mm=None,
    det_score=None,
)  # fmt: skip


def synthetic_evaluated_set(n: int = 400, seed: int = 3) -> tuple[list[ConfidenceSignals], np.ndarray]:
    """Persons whose error grows with the reprojection error (strongly) and the pose latent (weakly)."""
    rng = np.random.default_rng(seed)
    reproj = rng.uniform(0.0, 0.15, n)
    vposer = rng.uniform(4.0, 12.0, n)
    error = 400.0 * reproj + 8.0 * np.maximum(vposer - 7.0, 0.0) + rng.normal(0.0, 15.0, n) + 20.0
    signals = [
        dataclasses.replace(GOOD, reproj_err_norm=float(r), vposer_z_norm=float(v))
        for r, v in zip(reproj, vposer, strict=True)
    ]
    return signals, error


def test_calibration_fit_is_monotone_and_calibrated() -> None:
    signals, error = synthetic_evaluated_set()
    cal = fit_calibration(signals, error, good_error_mm=60.0)
    weights = {t.signal: t.weight for t in cal.terms}
    assert all(w >= 0 for w in weights.values())
    assert weights["reproj_err_norm"] > 0
    assert weights["vposer_z_norm"] > 0
    conf = np.array([cal.confidence(s) for s in signals])
    good = error < 60.0
    assert spearman(conf, -error) > 0.8
    # calibrated: among persons given 0.6-0.9, the share of good labels is in that range
    band = (conf >= 0.6) & (conf <= 0.9)
    assert band.sum() >= 20
    assert 0.55 <= good[band].mean() <= 0.95
    worse = [cal.confidence(dataclasses.replace(GOOD, reproj_err_norm=r)) for r in (0.0, 0.05, 0.1, 0.2)]
    assert worse == sorted(worse, reverse=True)
    assert cal.confidence(dataclasses.replace(GOOD, reproj_err_norm=float("nan"), n_kp_valid=0)) == 0.0


def test_calibration_file_round_trips_with_its_sha256_and_drives_combine() -> None:
    signals, error = synthetic_evaluated_set()
    cal = fit_calibration(signals, error, good_error_mm=60.0)
    data = cal.to_json_bytes()
    back = ConfidenceCalibration.from_json_bytes(data)
    assert back == cal
    assert len(back.sha256) == 64
    doc = cal.to_dict()
    assert doc["format"] == CALIBRATION_FORMAT
    assert doc["version"] == 1
    assert doc["model"] == "logistic"
    assert [t["signal"] for t in doc["terms"]] == [t.signal for t in default_terms()]
    s = dataclasses.replace(GOOD, reproj_err_norm=0.12)
    confidence, tier, reasons = combine(s, default_thresholds(), back)
    assert confidence == pytest.approx(back.confidence(s))
    assert reasons[0] == "high_reprojection_error"
    assert tier == "reject"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": "x"}, "format"),
        ({"version": 2}, "version"),
        ({"model": "isotonic"}, "model"),
        ({"terms": [{"signal": "nope", "soft": 0, "scale": 1, "weight": 1, "higher_is_better": False}]}, "signal"),
        ({"terms": [{"signal": "betas_absmax", "soft": 0, "scale": 1, "weight": -1, "higher_is_better": False}]},
         "weight"),
        ({"intercept": None}, "intercept"),
    ],
)  # fmt: skip
def test_invalid_calibration_files_are_refused(change: dict[str, Any], match: str) -> None:
    import json

    signals, error = synthetic_evaluated_set(100)
    doc = {**fit_calibration(signals, error, good_error_mm=60.0).to_dict(), **change}
    with pytest.raises(ValueError, match=match):
        ConfidenceCalibration.from_json_bytes(json.dumps(doc).encode())


def test_calibration_needs_good_and_bad_labels() -> None:
    signals, _ = synthetic_evaluated_set(10)
    with pytest.raises(ValueError, match="good and bad"):
        fit_calibration(signals, np.full(10, 10.0), good_error_mm=60.0)


def test_smpl_ground_truth_through_the_body_model_gives_pve_and_lsp14() -> None:
    """Ground truth given as SMPL parameters (as 3DPW is): identical parameters give 0 on every metric; a label whose
    global orientation is turned gives MPJPE, PVE and LSP-14 MPJPE > 0 with PA-MPJPE ~ 0."""
    meshes = MeshBuilder({"neutral": make_fake_smpl_data(num_vertices=64).to_arrays()})
    rng = np.random.default_rng(4)
    regressor = rng.uniform(0.0, 1.0, (17, 64))
    regressor /= regressor.sum(axis=1, keepdims=True)
    pose, betas = rng.normal(size=72) * 0.2, rng.normal(size=10) * 0.5
    turned = pose.copy()
    turned[:3] = matrix_to_axis_angle(_rot_z(0.3) @ axis_angle_to_matrix(pose[:3]))
    rows = []
    for name, p in (("same", pose), ("turned", turned)):
        joints = meshes.mesh(p, betas)[1] + np.array([0.1, 0.2, 4.0])  # a camera translation changes nothing
        row = _label_row(name, 0, joints, "gold", 0.5)
        row.update(global_orient=p[:3].tolist(), body_pose=p[3:].tolist(), betas=betas.tolist())
        rows.append(row)
    gt = GroundTruthIndex(
        [
            person_from_row({"sample_id": f"{n}_p0", "global_orient": pose[:3], "body_pose": pose[3:], "betas": betas})
            for n in ("same", "turned")
        ]
    )
    result = evaluate_rows(rows, gt, meshes=meshes, h36m_regressor=regressor)
    assert result.metrics == ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "lsp14_mpjpe_mm", "lsp14_pa_mpjpe_mm")
    same, turned_person = result.persons
    assert all(v == pytest.approx(0.0, abs=1e-3) for v in same.errors.values())
    assert turned_person.errors["mpjpe_mm"] > 10
    assert turned_person.errors["pve_mm"] > 10
    assert turned_person.errors["lsp14_mpjpe_mm"] > 1  # a random regressor averages vertices: small, not 0
    assert turned_person.errors["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-2)
    assert turned_person.errors["lsp14_pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-2)

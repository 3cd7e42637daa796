"""Flip test-time consistency: mirrored inputs, SMPL pose un-flip on a symmetric body, PA-MPJPE."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dpmesh_core.body_model import BodyModel, SMPLData
from dpmesh_core.config import official_config
from dpmesh_core.flip import (
    SMPL24_FLIP_PERM,
    SMPL30_FLIP_PERM,
    flip_consistency_mm,
    flip_person_inputs,
    pa_mpjpe_mm,
    unflip_pose,
)
from dpmesh_core.joints import SMPL30_JOINTS, coco17_to_smpl30
from dpmesh_core.preprocessing import PersonInputs, prepare_person


MIRROR = np.diag([-1.0, 1.0, 1.0])
OFFICIAL = official_config().crop_geometry  # 256 px crops, 32-grid keypoints: the numbers below


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


# --- permutations and the pose flip ----------------------------------------------------------------------------------


def test_smpl24_flip_permutation_is_the_standard_one() -> None:
    expected = (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22)
    assert expected == SMPL24_FLIP_PERM


def test_smpl30_flip_permutation_swaps_face_joints_and_is_an_involution() -> None:
    names = SMPL30_JOINTS
    assert names[SMPL30_FLIP_PERM[names.index("L_Eye")]] == "R_Eye"
    assert names[SMPL30_FLIP_PERM[names.index("Head_top")]] == "Head_top"
    assert all(SMPL30_FLIP_PERM[SMPL30_FLIP_PERM[i]] == i for i in range(30))


def test_unflip_pose_sign_pattern_and_permutation() -> None:
    pose = np.zeros(72, dtype=np.float32)
    pose[0:3] = (0.1, 0.2, 0.3)  # root
    pose[3:6] = (1.0, 2.0, 3.0)  # L_hip
    pose[60:63] = (4.0, 5.0, 6.0)  # L_wrist (joint 20)
    out = unflip_pose(pose)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0:3], (0.1, -0.2, -0.3))
    np.testing.assert_allclose(out[6:9], (1.0, -2.0, -3.0))  # now R_hip
    np.testing.assert_allclose(out[63:66], (4.0, -5.0, -6.0))  # now R_wrist
    assert np.count_nonzero(out) == 9


def test_unflip_pose_is_an_involution_on_batches() -> None:
    pose = np.random.default_rng(0).normal(size=(4, 72))
    np.testing.assert_array_equal(unflip_pose(unflip_pose(pose)), pose)
    np.testing.assert_array_equal(unflip_pose(pose)[1], unflip_pose(pose[1]))
    with pytest.raises(ValueError, match="72"):
        unflip_pose(np.zeros(69))


def test_unflip_root_rotation_is_the_mirrored_rotation() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=3)
    w_flip = unflip_pose(np.concatenate([w, np.zeros(69)]))[:3]
    r = _rotation(w, float(np.linalg.norm(w)))
    r_flip = _rotation(w_flip, float(np.linalg.norm(w_flip)))
    np.testing.assert_allclose(r_flip, MIRROR @ r @ MIRROR, atol=1e-12)


def _symmetric_smpl(half: int = 40, seed: int = 0) -> tuple[SMPLData, np.ndarray]:
    """A left/right symmetric SMPL-like body about x = 0 and its vertex mirror map (no shape/pose correctives)."""
    rng = np.random.default_rng(seed)
    left = rng.uniform(-0.5, 0.5, size=(half, 3)) * np.array([0.5, 1.7, 0.3])
    left[:, 0] = np.abs(left[:, 0]) + 0.02
    v_template = np.concatenate([left, left * np.array([-1.0, 1.0, 1.0])]).astype(np.float32)
    vmap = np.concatenate([np.arange(half, 2 * half), np.arange(half)])
    perm = np.array(SMPL24_FLIP_PERM)
    j_regressor = np.zeros((24, 2 * half), dtype=np.float32)
    for j in range(24):
        if perm[j] == j:  # on the symmetry plane: mean of a mirrored vertex pair
            a = rng.integers(half)
            j_regressor[j, [a, a + half]] = 0.5
        elif perm[j] > j:  # a left joint and its right partner on the mirrored vertices
            idx = rng.choice(half, size=3, replace=False)
            w = rng.dirichlet(np.ones(3))
            j_regressor[j, idx] = w
            j_regressor[perm[j], idx + half] = w
    weights_left = rng.dirichlet(np.ones(24) * 0.5, size=half)
    weights = np.concatenate([weights_left, weights_left[:, perm]]).astype(np.float32)
    data = SMPLData(
        v_template=v_template,
        shapedirs=np.zeros((2 * half, 3, 10), np.float32),
        posedirs=np.zeros((2 * half, 3, 207), np.float32),
        J_regressor=j_regressor,
        weights=weights,
        faces=np.array([[0, 1, 2]], dtype=np.int64),
    )
    return data, vmap


def test_unflipped_pose_of_a_symmetric_body_gives_the_mirrored_body() -> None:
    data, vmap = _symmetric_smpl()
    model = BodyModel(data).double()
    pose = np.random.default_rng(2).normal(scale=0.4, size=(2, 72))
    both = torch.from_numpy(np.concatenate([pose, unflip_pose(pose)]))
    with torch.no_grad():
        verts = model(both, torch.zeros(4, 10, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)).numpy()
    joints = np.einsum("jn,bnc->bjc", data.J_regressor.astype(np.float64), verts)
    for i in range(2):
        np.testing.assert_allclose(verts[2 + i][vmap], verts[i] @ MIRROR, atol=1e-6)
        np.testing.assert_allclose(joints[2 + i][list(SMPL24_FLIP_PERM)], joints[i] @ MIRROR, atol=1e-6)
        # Skipping the un-flip would compare a body with its mirror image: not a similarity, so PA-MPJPE > 0.
        assert flip_consistency_mm(joints[i], joints[2 + i]) > 1.0
    assert pa_mpjpe_mm(joints[0], joints[0]) == pytest.approx(0.0, abs=1e-9)


# --- PA-MPJPE --------------------------------------------------------------------------------------------------------


def test_pa_mpjpe_is_zero_for_a_similar_copy() -> None:
    a = np.random.default_rng(3).normal(size=(24, 3))
    r = _rotation(np.array([0.3, -1.0, 0.5]), 2.0)
    b = 0.37 * a @ r.T + np.array([1.0, -2.0, 5.0])
    assert pa_mpjpe_mm(a, b) == pytest.approx(0.0, abs=1e-6)
    assert pa_mpjpe_mm(b, a) == pytest.approx(0.0, abs=1e-6)


def test_pa_mpjpe_known_perturbation() -> None:
    # A planar cross with a saddle bend of e: no rotation or translation can absorb it; the optimal scale is
    # 1/(1+e²), leaving e/sqrt(1+e²) on every point.
    e = 0.1
    a = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
    b = a + np.array([[0, 0, e], [0, 0, e], [0, 0, -e], [0, 0, -e]])
    assert pa_mpjpe_mm(a, b) == pytest.approx(1000 * e / np.sqrt(1 + e * e), rel=1e-9)
    r = _rotation(np.array([1.0, 2.0, 3.0]), 0.7)
    assert pa_mpjpe_mm(a @ r.T * 3.0, b) == pytest.approx(3000 * e / np.sqrt(1 + e * e), rel=1e-9)


def test_pa_mpjpe_does_not_allow_reflections() -> None:
    a = np.random.default_rng(4).normal(size=(24, 3))
    assert pa_mpjpe_mm(a, a @ MIRROR) > 100.0


def test_pa_mpjpe_edge_cases() -> None:
    a = np.random.default_rng(5).normal(size=(5, 3))
    b = a.copy()
    b[2, 1] = np.nan
    assert np.isnan(pa_mpjpe_mm(a, b))
    degenerate = np.ones((5, 3))
    expected = np.linalg.norm(a - a.mean(0), axis=1).mean() * 1000
    assert pa_mpjpe_mm(a, degenerate) == pytest.approx(expected)
    with pytest.raises(ValueError, match="N, 3"):
        pa_mpjpe_mm(a, a[:4])
    with pytest.raises(ValueError, match="N, 3"):
        pa_mpjpe_mm(a[:, :2], a[:, :2])


# --- flipped inputs --------------------------------------------------------------------------------------------------


def _inputs(image: np.ndarray, joints: np.ndarray) -> PersonInputs:
    mask = ((joints[:, 2] > 0.05) & (joints[:, :2] >= 0).all(1) & (joints[:, :2] < 32).all(1)).astype(np.float32)
    return PersonInputs(
        image=image.astype(np.float32),
        joints=joints.astype(np.float32),
        joints_mask=mask[:, None],
        focal=1000.0,
        bbox_xywh=np.array([10.0, 20.0, 200.0, 200.0], np.float32),
        img2crop=np.array([[1.28, 0, -12.8], [0, 1.28, -25.6]], np.float32),
        crop2img=np.array([[1 / 1.28, 0, 10.0], [0, 1 / 1.28, 20.0]], np.float32),
        image_hw=(300, 400),
    )


def test_flip_moves_an_asymmetric_crop_and_its_keypoints_together() -> None:
    image = np.zeros((3, 256, 256))
    image[0, 40, 10] = 1.0  # a red dot on the left of the crop
    joints = np.zeros((30, 3))
    l_wrist, r_wrist = SMPL30_JOINTS.index("L_Wrist"), SMPL30_JOINTS.index("R_Wrist")
    joints[l_wrist] = (10 / 8, 40 / 8, 0.9)  # the L_Wrist keypoint sits on the dot (crop px / 8)
    flipped = flip_person_inputs(_inputs(image, joints), OFFICIAL)
    assert flipped.image[0, 40, 245] == 1.0
    assert flipped.image.sum() == 1.0
    np.testing.assert_allclose(flipped.joints[r_wrist], (245 / 8, 5.0, 0.9), rtol=1e-6)  # 31.875 - 1.25
    x_px, y_px = flipped.joints[r_wrist, :2] * 8
    assert flipped.image[0, round(float(y_px)), round(float(x_px))] == 1.0  # still on the dot
    assert flipped.joints_mask[r_wrist, 0] == 1.0
    assert flipped.joints_mask[l_wrist, 0] == 0.0  # L_Wrist (conf 0) took R_Wrist's place
    assert flipped.image.flags.c_contiguous


def test_symmetric_crop_and_keypoints_are_flip_invariant() -> None:
    rng = np.random.default_rng(6)
    half = rng.uniform(size=(3, 256, 128))
    image = np.concatenate([half, half[:, :, ::-1]], axis=2)  # mirror-symmetric pixel array
    joints = np.zeros((30, 3))
    perm = SMPL30_FLIP_PERM
    for i, name in enumerate(SMPL30_JOINTS):
        y = rng.uniform(0, 31)
        if perm[i] == i:
            joints[i] = (31.875 / 2, y, 0.8)
        elif name.startswith("L_"):
            x = rng.uniform(0, 15)
            joints[i] = (x, y, 0.8)
            joints[perm[i]] = (31.875 - x, y, 0.8)
    p = _inputs(image, joints)
    flipped = flip_person_inputs(p, OFFICIAL)
    np.testing.assert_array_equal(flipped.image, p.image)
    np.testing.assert_allclose(flipped.joints, p.joints, atol=1e-5)
    np.testing.assert_array_equal(flipped.joints_mask, p.joints_mask)


def test_flip_twice_is_the_identity_on_real_inputs() -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    kp = np.concatenate([rng.uniform((120, 60), (260, 260), size=(17, 2)), rng.uniform(0.0, 1.0, (17, 1))], 1)
    p = prepare_person(image, coco17_to_smpl30(kp.astype(np.float32)), OFFICIAL)
    p = dataclasses.replace(p, joints_mask=p.joints_mask * (p.joints[:, :1] < 31.8))  # not in the last crop px
    twice = flip_person_inputs(flip_person_inputs(p, OFFICIAL), OFFICIAL)
    np.testing.assert_array_equal(twice.image, p.image)
    np.testing.assert_allclose(twice.joints, p.joints, atol=1e-5)
    np.testing.assert_array_equal(twice.joints_mask, p.joints_mask)
    np.testing.assert_allclose(twice.img2crop, p.img2crop, atol=1e-4)
    np.testing.assert_allclose(twice.crop2img, p.crop2img, atol=1e-4)
    assert (twice.focal, twice.image_hw) == (p.focal, p.image_hw)
    np.testing.assert_array_equal(twice.bbox_xywh, p.bbox_xywh)


def test_flipped_affines_map_the_image_to_the_flipped_crop() -> None:
    rng = np.random.default_rng(8)
    image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    kp = np.concatenate([rng.uniform((120, 60), (260, 260), size=(17, 2)), np.full((17, 1), 0.9)], 1)
    p = prepare_person(image, coco17_to_smpl30(kp.astype(np.float32)), OFFICIAL)
    f = flip_person_inputs(p, OFFICIAL)
    point = np.array([150.0, 100.0, 1.0])
    u, v = p.img2crop.astype(np.float64) @ point
    np.testing.assert_allclose(f.img2crop.astype(np.float64) @ point, (255 - u, v), atol=1e-3)
    back = f.crop2img.astype(np.float64) @ np.array([255 - u, v, 1.0])
    np.testing.assert_allclose(back, point[:2], atol=1e-2)


def test_flip_masks_joints_that_leave_the_grid() -> None:
    joints = np.zeros((30, 3))
    joints[:, :2] = 16.0
    joints[:, 2] = 0.9
    joints[0, 0] = 31.95  # inside [0, 32) but maps to -0.075
    flipped = flip_person_inputs(_inputs(np.zeros((3, 256, 256)), joints), OFFICIAL)
    assert flipped.joints_mask[0, 0] == 0.0  # Pelvis maps to itself
    assert flipped.joints_mask[1:, 0].all()

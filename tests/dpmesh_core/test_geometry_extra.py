"""Geometry checks not covered by `test_geometry.py` / `test_body_model.py`.

* crop affine and its inverse compose to the identity, and map the crop corners to the box corners;
* the full-image camera projects the mesh where the crop camera projects it mapped back through the inverse crop
  affine: exactly for the root (the translation point) and every point at its depth, within the weak-perspective
  error for the rest of the body;
* the official 6D convention against rotations written out by hand;
* the smplx forward of `BodyModel` against an independent numpy LBS on a synthetic body.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpmesh_core.body_model import BodyModel
from dpmesh_core.config import official_config
from dpmesh_core.geometry import crop_to_full_camera, rot6d_to_axis_angle, rot6d_to_rotmat
from dpmesh_core.preprocessing import crop_affine
from dpmesh_core.synthetic import synthetic_smpl_data


# SMPL kinematic tree, written out here (not imported) so that the test is independent of dpmesh_core.joints.
SMPL_PARENTS_REF = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
CROP_SIZE = official_config().image_size  # 256: the official crop the numbers below are written for


def _h(affine: np.ndarray) -> np.ndarray:
    return np.vstack([affine.astype(np.float64), [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("box", [[50.0, 20.0, 200.0, 200.0], [-37.5, 410.25, 612.0, 612.0], [900.0, 3.0, 31.0, 31.0]])
def test_crop_affine_inverse_composes_to_identity(box: list[float]) -> None:
    bbox = np.array(box, dtype=np.float32)
    fwd, inv = crop_affine(bbox, CROP_SIZE), crop_affine(bbox, CROP_SIZE, inverse=True)
    composed = _h(inv) @ _h(fwd)  # the affines are float32 (as cv2 returns them): translations carry ~1e-5 px
    np.testing.assert_allclose(composed[:, :2], np.eye(3)[:, :2], atol=1e-6)
    np.testing.assert_allclose(composed[:, 2], [0.0, 0.0, 1.0], atol=1e-4)
    corners_crop = np.array([[0, 0, 1], [CROP_SIZE, 0, 1], [0, CROP_SIZE, 1], [CROP_SIZE, CROP_SIZE, 1]], float)
    x, y, s = box[0], box[1], box[2]
    corners_img = np.array([[x, y], [x + s, y], [x, y + s], [x + s, y + s]])
    np.testing.assert_allclose(corners_crop @ inv.astype(np.float64).T, corners_img, atol=1e-3 * max(1.0, s / 256))
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-500, 1500, size=(20, 2)), np.ones((20, 1))], axis=1)
    back = (pts @ fwd.astype(np.float64).T) @ inv[:, :2].astype(np.float64).T + inv[:, 2]
    np.testing.assert_allclose(back, pts[:, :2], atol=2e-3)


def _posed_body(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices `(2, N, 3)` of a randomly posed synthetic body at crop-camera translations, and those translations."""
    gen = torch.Generator().manual_seed(seed)
    body = BodyModel(synthetic_smpl_data(num_vertices=300, seed=seed))
    pose = torch.randn(2, 72, generator=gen) * 0.3
    betas = torch.randn(2, 10, generator=gen)
    cam = torch.tensor([[0.12, -0.2, 14.0], [-0.3, 0.05, 9.0]])
    return body(pose, betas, cam), cam


def _pinhole(points: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor) -> np.ndarray:
    """Exact pinhole `f·(x, y)/z + c` (no depth guard: `perspective_projection`'s 1e-4 m is tested elsewhere)."""
    return (points[..., :2] / points[..., 2:] * focal[:, None, None] + principal[:, None]).numpy()


def test_full_camera_reprojects_mesh_like_crop_camera_through_inverse_affine() -> None:
    verts, cam = _posed_body(seed=3)
    focal = torch.tensor([2202.9, 1500.0], dtype=torch.float64)
    boxes = np.array([[800.0, 300.0, 400.0, 400.0], [100.0, 50.0, 300.0, 300.0]], dtype=np.float32)
    hw = torch.tensor([[1080.0, 1920.0], [720.0, 1280.0]], dtype=torch.float64)
    cam, verts = cam.double(), verts.double()
    full = crop_to_full_camera(cam, torch.from_numpy(boxes).double(), hw, focal, CROP_SIZE)
    shift = (full - cam)[:, None]  # the post-processing moves the whole mesh by the translation change

    def via_crop(points: torch.Tensor) -> np.ndarray:
        crop_px = _pinhole(points, focal, torch.full((2, 2), CROP_SIZE / 2, dtype=torch.float64))
        out = []
        for i in range(2):
            inv = crop_affine(boxes[i], CROP_SIZE, inverse=True).astype(np.float64)
            out.append(crop_px[i] @ inv[:, :2].T + inv[:, 2])
        return np.stack(out)

    def direct(points: torch.Tensor) -> np.ndarray:
        return _pinhole(points + shift, focal, torch.flip(hw, dims=[1]) / 2)

    # root (the translation point) and any point at its depth: exact (up to the float32 crop affine)
    same_depth = cam[:, None] + torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.7, 0.0], [-0.25, 0.9, 0.0]]).double()
    np.testing.assert_allclose(direct(same_depth[:, :1]), via_crop(same_depth[:, :1]), atol=1e-3)
    np.testing.assert_allclose(direct(same_depth), via_crop(same_depth), atol=1e-3)
    # whole mesh: the full camera keeps the crop camera's depth offsets, so a vertex at depth offset d_z from the
    # root moves by exactly ((p - c)·(k - 1) - (c - principal))·d_z / (t_z' + d_z), with p its back-mapped pixel,
    # c the box centre and k = 256 / side (derivation: subtract the two pinhole projections).
    via, got = via_crop(verts), direct(verts)
    centre = torch.from_numpy(boxes[:, :2] + boxes[:, 2:] / 2).double()
    k = (CROP_SIZE / torch.from_numpy(boxes[:, 2]).double())[:, None, None]
    d_z = (verts[..., 2] - cam[:, None, 2])[..., None]
    principal = torch.flip(hw, dims=[1])[:, None] / 2
    predicted = ((torch.from_numpy(via) - centre[:, None]) * (k - 1) - (centre[:, None] - principal)) * d_z
    predicted = predicted / (full[:, None, 2:] + d_z)
    np.testing.assert_allclose(got - via, predicted.numpy(), atol=1e-3)
    assert np.abs(got - via).max() > 1.0  # the mesh check is not vacuous: this body has real depth


def _rx(t: float) -> list[list[float]]:
    c, s = math.cos(t), math.sin(t)
    return [[1, 0, 0], [0, c, -s], [0, s, c]]


def _ry(t: float) -> list[list[float]]:
    c, s = math.cos(t), math.sin(t)
    return [[c, 0, s], [0, 1, 0], [-s, 0, c]]


def _rz(t: float) -> list[list[float]]:
    c, s = math.cos(t), math.sin(t)
    return [[c, -s, 0], [s, c, 0], [0, 0, 1]]


@pytest.mark.parametrize(
    ("rot", "axis_angle"),
    [
        (_rx(math.pi / 2), [math.pi / 2, 0, 0]),
        (_ry(math.pi / 6), [0, math.pi / 6, 0]),
        (_rz(-2.5), [0, 0, -2.5]),
        (_rx(1.0), [1.0, 0, 0]),
    ],
)
def test_rot6d_hand_computed_rotations(rot: list[list[float]], axis_angle: list[float]) -> None:
    r = torch.tensor(rot, dtype=torch.float32)
    # official 6D: the first two columns read row-major, x = (R00, R01, R10, R11, R20, R21)
    x = torch.tensor([[rot[0][0], rot[0][1], rot[1][0], rot[1][1], rot[2][0], rot[2][1]]])
    torch.testing.assert_close(rot6d_to_rotmat(x)[0], r, atol=1e-6, rtol=0)
    torch.testing.assert_close(rot6d_to_axis_angle(x)[0], torch.tensor(axis_angle), atol=1e-5, rtol=0)


def test_rot6d_hand_computed_gram_schmidt() -> None:
    # a1 = (2, 0, 0), a2 = (1, 1, 0): b1 = e_x, b2 = e_y (component along b1 removed), b3 = e_z → identity
    x = torch.tensor([[2.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(rot6d_to_rotmat(x)[0], torch.eye(3))
    # a1 = (0, 3, 0), a2 = (0, 1, -2): b1 = e_y, b2 = -e_z, b3 = e_y × -e_z = -e_x; columns (e_y, -e_z, -e_x)
    x = torch.tensor([[0.0, 0.0, 3.0, 1.0, 0.0, -2.0]])
    expected = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    torch.testing.assert_close(rot6d_to_rotmat(x)[0], expected)
    assert torch.linalg.det(rot6d_to_rotmat(x)[0]).item() == pytest.approx(1.0)


def _rodrigues(aa: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(aa))
    if theta < 1e-12:
        return np.eye(3)
    k = aa / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx


def _reference_lbs(data: object, pose: np.ndarray, betas: np.ndarray, transl: np.ndarray) -> np.ndarray:
    """Independent SMPL forward (Loper et al. 2015, eqs. 2-10) in float64 for one body."""
    v_template = data.v_template.astype(np.float64)  # type: ignore[attr-defined]
    shapedirs = data.shapedirs.astype(np.float64)  # type: ignore[attr-defined]
    posedirs = data.posedirs.astype(np.float64)  # type: ignore[attr-defined]
    regressor = data.J_regressor.astype(np.float64)  # type: ignore[attr-defined]
    weights = data.weights.astype(np.float64)  # type: ignore[attr-defined]
    v_shaped = v_template + np.einsum("nck,k->nc", shapedirs, betas)  # shape blend shapes
    joints = regressor @ v_shaped  # joint regression from the shaped rest mesh
    rots = np.stack([_rodrigues(pose[3 * j : 3 * j + 3]) for j in range(24)])
    pose_feature = (rots[1:] - np.eye(3)).reshape(-1)  # 23 × 9 = 207
    v_posed = v_shaped + np.einsum("nck,k->nc", posedirs, pose_feature)  # pose blend shapes
    world = np.zeros((24, 4, 4))
    for j, parent in enumerate(SMPL_PARENTS_REF):  # kinematic chain
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[parent] if parent >= 0 else 0.0)
        world[j] = local if parent < 0 else world[parent] @ local
    skin = world.copy()
    skin[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], joints)  # remove the rest-pose joint location
    per_vertex = np.einsum("nj,jab->nab", weights, skin)  # linear blend skinning
    homo = np.concatenate([v_posed, np.ones((len(v_posed), 1))], axis=1)
    return np.einsum("nab,nb->na", per_vertex, homo)[:, :3] + transl


def test_body_model_matches_independent_numpy_lbs() -> None:
    data = synthetic_smpl_data(num_vertices=200, seed=5)
    body = BodyModel(data)
    rng = np.random.default_rng(7)
    pose = rng.normal(scale=0.5, size=(3, 72))
    pose[0] = 0.0  # rest pose with zero betas below: the template itself
    betas = rng.normal(size=(3, 10))
    betas[0] = 0.0
    transl = rng.normal(size=(3, 3))
    out = body(torch.from_numpy(pose).float(), torch.from_numpy(betas).float(), torch.from_numpy(transl).float())
    for i in range(3):
        expected = _reference_lbs(data, pose[i], betas[i], transl[i])
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-5, rtol=0, err_msg=f"body {i}")
    np.testing.assert_allclose(out[0].numpy(), data.v_template + transl[0], atol=1e-6)

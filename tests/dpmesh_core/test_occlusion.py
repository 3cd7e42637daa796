"""Occlusion metadata on hand-built scenes (values computed by hand), and the body model's identity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpmesh_core.body_identity import SMPL_NEUTRAL_NAME, body_model_id, body_model_sha256
from dpmesh_core.confidence import box_iou
from dpmesh_core.occlusion import (
    compute_occlusion,
    crowd_index,
    joints_in_image_fraction,
    keypoint_visibility,
    occlusion_level,
)
from dpmesh_core.synthetic import synthetic_smpl_data
from schemas import ANNOTATION_SCHEMA, OCCLUSION_LEVELS


ANN, DET = "annotations", "vitpose"
IMAGE_HW = (100, 200)  # H, W
FOCAL, PRINCIPAL = 100.0, np.array([100.0, 50.0])


def _keypoints(xs: list[float], y: float, conf: list[float]) -> np.ndarray:
    """17 keypoints at the given x (one per keypoint), one y, and per-keypoint conf."""
    assert len(xs) == len(conf) == 17
    return np.array([[x, y, c] for x, c in zip(xs, conf, strict=True)], dtype=np.float32)


def _joints(inside: int, outside: int, behind: int = 0) -> np.ndarray:
    """24 camera-frame joints at z = 2 m: ``inside`` project to the image centre column (u = 100), ``outside`` to
    u = 100 * 3 / 2.0001 + 100 ~ 250 > W, ``behind`` sit behind the camera (z = -1) at x = 0."""
    assert inside + outside + behind == 24
    rows = [[0.0, 0.0, 2.0]] * inside + [[3.0, 0.0, 2.0]] * outside + [[0.0, 0.0, -1.0]] * behind
    return np.array(rows, dtype=np.float32)


# The scene (W x H = 200 x 100): A and B overlap, C stands alone, D is cut by the right image border.
#   A: box x 10..60, 13 keypoints at x = 20 and 4 at x = 55 (inside B's box), 2 of those 4 occluded (v=1 -> 0.5).
#   B: box x 40..90, 13 keypoints at x = 80 and 4 at x = 50 (inside A's box), all visible.
#   C: box x 120..150, 17 visible keypoints at x = 135.
#   D: box x 170..200, 10 visible keypoints at x = 185 and 7 unlabelled (v=0: x = y = 0, conf 0).
BOXES = {
    "A": np.array([10, 10, 60, 90], np.float32),
    "B": np.array([40, 10, 90, 90], np.float32),
    "C": np.array([120, 10, 150, 90], np.float32),
    "D": np.array([170, 20, 200, 100], np.float32),
}
KEYPOINTS = {
    "A": _keypoints([20.0] * 13 + [55.0] * 4, 50.0, [1.0] * 13 + [0.5] * 2 + [1.0] * 2),
    "B": _keypoints([80.0] * 13 + [50.0] * 4, 50.0, [1.0] * 17),
    "C": _keypoints([135.0] * 17, 50.0, [1.0] * 17),
    "D": _keypoints([185.0] * 10 + [0.0] * 7, 60.0, [1.0] * 10 + [0.0] * 7),
}
KEYPOINTS["D"][10:, 1] = 0.0  # COCO's unlabelled keypoints sit at (0, 0)
JOINTS = {"A": _joints(24, 0), "B": _joints(24, 0), "C": _joints(24, 0), "D": _joints(10, 13, behind=1)}


def _scene(name: str):
    others = np.stack([KEYPOINTS[o] for o in KEYPOINTS if o != name])
    return compute_occlusion(KEYPOINTS[name], ANN, BOXES[name], others, JOINTS[name], FOCAL, PRINCIPAL, IMAGE_HW)


def test_two_overlapping_persons() -> None:
    a, b = _scene("A"), _scene("B")
    # A: 15 visible, 2 occluded, none missing; its 17 keypoints lie in its box; B's 4 at x = 50 lie in A's box.
    assert (a.n_kp_visible, a.n_kp_occluded, a.n_kp_missing) == (15, 2, 0)
    assert a.crowd_index == pytest.approx(4 / 17)
    # B: A's 4 keypoints at x = 55 (the 2 occluded ones among them still count: they are located) are in B's box.
    assert (b.n_kp_visible, b.n_kp_occluded, b.n_kp_missing) == (17, 0, 0)
    assert b.crowd_index == pytest.approx(4 / 17)
    assert a.joints_in_image_frac == b.joints_in_image_frac == 1.0
    # Both fully in the frame with few hidden keypoints, but crowd index 0.235 >= 0.1: partial, not none.
    assert a.occlusion_level == b.occlusion_level == "partial"
    # Maximum IoU with another person (crowding_iou): overlap 20 x 80 = 1600, union 4000 + 4000 - 1600 = 6400.
    others = np.stack([BOXES["B"], BOXES["C"], BOXES["D"]])
    assert float(box_iou(BOXES["A"], others).max()) == pytest.approx(0.25)


def test_an_unoccluded_person() -> None:
    c = _scene("C")
    assert (c.n_kp_visible, c.n_kp_occluded, c.n_kp_missing) == (17, 0, 0)
    assert c.crowd_index == 0.0
    assert c.joints_in_image_frac == 1.0
    assert c.occlusion_level == "none"
    others = np.stack([BOXES["A"], BOXES["B"], BOXES["D"]])
    assert float(box_iou(BOXES["C"], others).max()) == 0.0


def test_a_truncated_person() -> None:
    d = _scene("D")
    # 7 unlabelled keypoints are missing; their (0, 0) position counts for no box.
    assert (d.n_kp_visible, d.n_kp_occluded, d.n_kp_missing) == (10, 0, 7)
    assert d.crowd_index == 0.0
    # 10 of 24 joints project inside; 13 land at u ~ 250 > W = 200 and 1 is behind the camera.
    assert d.joints_in_image_frac == pytest.approx(10 / 24)
    # 7 hidden keypoints alone would be partial; fewer than half the joints in the frame makes it heavy.
    assert d.occlusion_level == "heavy"


def test_keypoint_visibility_reads_annotation_flags_and_detector_scores() -> None:
    kp = np.zeros((17, 3), np.float32)
    kp[:7, 2] = [1.0, 0.5, 0.0, 0.9, 0.5, 0.3, 0.29]
    kp[7, 0] = np.nan  # a non-finite position is missing whatever its conf
    kp[7, 2] = 1.0
    ann = keypoint_visibility(kp, ANN)
    assert ann[:8].tolist() == [2, 1, 0, 2, 1, 1, 1, 0]  # annotations: only 1 / 0.5 / 0 occur (midpoints 0.75, 0.25)
    det = keypoint_visibility(kp, DET)
    assert det[:8].tolist() == [2, 2, 0, 2, 2, 1, 0, 0]  # detector: >= 0.5 visible, >= 0.3 occluded
    assert keypoint_visibility(np.stack([kp, kp]), DET).shape == (2, 17)


def test_crowd_index_is_null_without_own_keypoints_in_the_box_and_counts_only_located_ones() -> None:
    box = np.array([0, 0, 10, 10], np.float32)
    own = _keypoints([50.0] * 17, 50.0, [1.0] * 17)  # all outside its own box
    assert crowd_index(own, box, np.zeros((0, 17, 3)), ANN) is None
    own[0, :2] = 5.0
    other = _keypoints([5.0] * 17, 5.0, [1.0] * 3 + [0.0] * 14)  # 3 located, 14 unlabelled, all at (5, 5)
    assert crowd_index(own, box, other[None], ANN) == 3.0
    # Box bounds are inclusive.
    own_on_edge = _keypoints([10.0] * 17, 10.0, [1.0] * 17)
    assert crowd_index(own_on_edge, box, np.zeros((0, 17, 3)), ANN) == 0.0


def test_joints_in_image_fraction_uses_the_projection_guard() -> None:
    joints = np.array(
        [
            [0.0, 0.0, -5e-5],  # z + 1e-4 = 5e-5 > 0: in front of the camera after the guard, projects to (100, 50)
            [0.0, 0.0, -2e-4],  # z + 1e-4 < 0: behind the camera, outside whatever it projects to
            [-0.0101, 0.0, 1.0],  # u = -0.0101 / 1.0001 * 100 + 100 = 98.99: inside
            [-1.0001, 0.0, 1.0],  # u = -1.0001 / 1.0001 * 100 + 100 = 0 (up to rounding): on the edge, skip exactness
            [1.01, 0.0, 1.0],  # u = 200.99 >= W: outside
            [0.0, 0.51, 1.0],  # v = 0.51 / 1.0001 * 100 + 50 = 100.99 >= H: outside
        ],
        dtype=np.float64,
    )
    fraction = joints_in_image_fraction(np.delete(joints, 3, axis=0), FOCAL, PRINCIPAL, IMAGE_HW)
    assert fraction == pytest.approx(2 / 5)
    joints[3] = np.nan
    assert math.isnan(joints_in_image_fraction(joints, FOCAL, PRINCIPAL, IMAGE_HW))


@pytest.mark.parametrize(
    ("hidden", "crowd", "in_image", "level"),
    [
        (2, 0.099, 1.0, "none"),
        (3, 0.0, 1.0, "partial"),
        (2, 0.1, 1.0, "partial"),
        (2, None, 1.0, "none"),
        (0, 0.0, 23 / 24, "partial"),
        (8, 0.99, 0.5, "partial"),
        (9, 0.0, 1.0, "heavy"),
        (0, 1.0, 1.0, "heavy"),
        (0, 0.0, 0.49, "heavy"),
        (0, 0.0, math.nan, "partial"),
    ],
)
def test_occlusion_level_thresholds(hidden: int, crowd: float | None, in_image: float, level: str) -> None:
    assert occlusion_level(hidden, crowd, in_image) == level
    assert level in OCCLUSION_LEVELS


def test_occlusion_rule_is_stated_in_the_schema() -> None:
    text = ANNOTATION_SCHEMA.field("occlusion_level").metadata[b"description"].decode()
    for clause in ("hidden >= 9", "crowd_index >= 1.0", "joints_in_image_frac < 0.5", "hidden <= 2"):
        assert clause in text


def test_body_model_identity_names_the_synthetic_body_truthfully_and_hashes_the_arrays() -> None:
    data = synthetic_smpl_data(num_vertices=64, seed=0)
    synthetic = body_model_id(data, synthetic=True)
    assert synthetic.name == "synthetic_random_body_64v" != SMPL_NEUTRAL_NAME
    assert len(synthetic.sha256) == 64
    int(synthetic.sha256, 16)  # hex
    assert body_model_sha256(synthetic_smpl_data(num_vertices=64, seed=0)) == synthetic.sha256  # deterministic
    assert body_model_sha256(synthetic_smpl_data(num_vertices=64, seed=1)) != synthetic.sha256
    assert body_model_id(data, synthetic=False).name == SMPL_NEUTRAL_NAME


def test_joints_in_image_fraction_projects_like_the_model() -> None:
    """Same projection (and z guard) as ``dpmesh_core.geometry.perspective_projection``, which fills joints_2d_proj."""
    import torch

    from dpmesh_core.geometry import perspective_projection

    rng = np.random.default_rng(0)
    joints = np.concatenate([rng.uniform(-1.5, 1.5, (500, 2)), rng.uniform(-0.5, 3.0, (500, 1))], axis=1)
    uv = perspective_projection(
        torch.from_numpy(joints)[None], torch.tensor([FOCAL], dtype=torch.float64), torch.from_numpy(PRINCIPAL)[None]
    )[0].numpy()
    in_front = joints[:, 2] + 1e-4 > 0
    inside = in_front & (uv[:, 0] >= 0) & (uv[:, 0] < 200) & (uv[:, 1] >= 0) & (uv[:, 1] < 100)
    assert 0 < inside.sum() < len(joints)
    assert joints_in_image_fraction(joints, FOCAL, PRINCIPAL, IMAGE_HW) == pytest.approx(inside.mean(), abs=0)

"""Pre-processing: joint sets, box, crop affine/warp, mask, invalid inputs."""

from __future__ import annotations

import numpy as np
import pytest

from dpmesh_core.config import CropGeometry, official_config
from dpmesh_core.errors import InvalidPersonInput
from dpmesh_core.joints import COCO17_JOINTS, OPENPOSE18_JOINTS, SMPL30_JOINTS, coco17_to_smpl30, openpose18_to_smpl30
from dpmesh_core.preprocessing import (
    bbox_from_keypoints,
    crop_affine,
    prepare_person,
    square_crop_box,
    warp_crop,
)
from schemas.annotations import COCO17_KEYPOINT_NAMES
from tests.fakes.opencv4_warp import opencv4_linear_warp


OFFICIAL = official_config().crop_geometry  # 256 px crops, 32-grid keypoints


def _coco(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kp = np.zeros((17, 3), dtype=np.float32)
    kp[:, 0] = rng.uniform(300, 500, 17)
    kp[:, 1] = rng.uniform(100, 600, 17)
    kp[:, 2] = rng.uniform(0.3, 1.0, 17)
    return kp


def test_coco17_joints_are_the_schema_order_in_dpmesh_names() -> None:
    assert len(COCO17_JOINTS) == len(COCO17_KEYPOINT_NAMES) == 17
    assert (COCO17_JOINTS[0], COCO17_JOINTS[5], COCO17_JOINTS[16]) == ("Nose", "L_Shoulder", "R_Ankle")
    assert (COCO17_KEYPOINT_NAMES[0], COCO17_KEYPOINT_NAMES[5], COCO17_KEYPOINT_NAMES[16]) == (
        "nose", "left_shoulder", "right_ankle",
    )  # fmt: skip
    assert set(COCO17_JOINTS) <= set(SMPL30_JOINTS)  # every COCO joint has its place in the model's 30


def test_coco17_to_smpl30() -> None:
    kp = _coco()
    out = coco17_to_smpl30(kp)
    idx = SMPL30_JOINTS.index
    lh, rh = kp[COCO17_JOINTS.index("L_Hip")], kp[COCO17_JOINTS.index("R_Hip")]
    np.testing.assert_allclose(out[idx("Pelvis"), :2], (lh[:2] + rh[:2]) / 2)
    assert out[idx("Pelvis"), 2] == pytest.approx(lh[2] * rh[2])
    ls, rs = kp[COCO17_JOINTS.index("L_Shoulder")], kp[COCO17_JOINTS.index("R_Shoulder")]
    np.testing.assert_allclose(out[idx("Neck"), :2], (ls[:2] + rs[:2]) / 2)
    np.testing.assert_array_equal(out[idx("Nose")], kp[0])
    assert (out[idx("Head_top")] == 0).all()
    assert (out[idx("Spine")] == 0).all()
    assert (out[:, 2] > 0).sum() == 19


def test_openpose18_to_smpl30() -> None:
    kp = np.arange(18 * 3, dtype=np.float32).reshape(18, 3) / 10
    out = openpose18_to_smpl30(kp)
    np.testing.assert_array_equal(out[SMPL30_JOINTS.index("R_Wrist")], kp[OPENPOSE18_JOINTS.index("R_Wrist")])
    assert (out[SMPL30_JOINTS.index("Neck")] == kp[1]).all()


def test_bbox_and_square_box() -> None:
    kp = np.array([[100, 200, 1], [300, 260, 1], [0, 0, 0]], dtype=np.float32)
    box = bbox_from_keypoints(kp, kp[:, 2] > 0.05)
    np.testing.assert_allclose(box, [80, 194, 240, 72], rtol=1e-6)
    sq = square_crop_box(box, 1000, 1000)
    assert sq[2] == sq[3] == pytest.approx(239 * 1.1)
    assert sq[0] + sq[2] / 2 == pytest.approx(80 + 239 / 2)


def test_crop_affine_maps_box_to_crop() -> None:
    box = np.array([50.0, 20.0, 200.0, 200.0], dtype=np.float32)
    m = crop_affine(box, 256)
    np.testing.assert_allclose(m @ [150, 120, 1], [128, 128], atol=1e-4)
    np.testing.assert_allclose(m @ [50, 20, 1], [0, 0], atol=1e-4)
    np.testing.assert_allclose(crop_affine(box, 256, inverse=True) @ [256, 256, 1], [250, 220], atol=1e-3)


@pytest.mark.parametrize(
    "box", [(500, 100, 400, 400), (10, -50, 900, 900), (1700, 900, 100, 100), (300, 300, 33.3, 33.3)]
)
def test_the_crop_is_opencv4_fixed_point_bilinear_bit_for_bit(box: tuple[float, ...]) -> None:
    # OpenCV 5 samples at exact coordinates (up to 7 grey levels apart on noise): the official crops were cut
    # by OpenCV 4, and this is what pins it.
    image = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8).astype(np.float32)
    matrix = crop_affine(np.array(box, np.float32), 256)
    np.testing.assert_array_equal(warp_crop(image, matrix, 256), opencv4_linear_warp(image, matrix, 256))


def test_warp_matches_bilinear_and_zero_border() -> None:
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    image = np.stack([xx, yy, xx + yy], axis=-1)
    m = np.array([[0.5, 0, 0], [0, 0.5, 0]], dtype=np.float32)  # crop px = image px / 2
    out = warp_crop(image, m, 40)
    # inside: a linear image is reproduced exactly by bilinear sampling at 1/32-px positions
    np.testing.assert_allclose(out[10, 7], [14, 20, 34], atol=1e-4)
    # beyond the image (x = 2·35 = 70 ≥ 64): constant-0 border
    assert (out[35, 35] == 0).all()


def test_a_uint8_warp_is_the_float_warp_rounded() -> None:
    image = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    matrix = crop_affine(np.array([40.0, 30.0, 250.0, 250.0], np.float32), 128)
    exact = warp_crop(image.astype(np.float32), matrix, 128)
    rounded = warp_crop(image, matrix, 128)
    assert rounded.dtype == np.uint8
    assert np.abs(rounded.astype(np.float32) - exact).max() <= 0.5 + 1e-3


def test_prepare_person_mask_and_units() -> None:
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    kp = coco17_to_smpl30(_coco())
    kp[SMPL30_JOINTS.index("L_Wrist")] = [5000, 5000, 0.9]  # valid but outside the crop
    kp[SMPL30_JOINTS.index("R_Wrist"), 2] = 0.01  # low confidence
    person = prepare_person(image, kp, OFFICIAL)
    assert person.image.shape == (3, 256, 256)
    assert person.joints.shape == (30, 3)
    assert person.focal == pytest.approx(800.0)
    assert person.joints_mask[SMPL30_JOINTS.index("L_Wrist"), 0] == 0
    assert person.joints_mask[SMPL30_JOINTS.index("R_Wrist"), 0] == 0
    assert person.joints_mask[SMPL30_JOINTS.index("Nose"), 0] == 1
    back = person.crop2img @ np.append(person.joints[0, :2] * 8, 1.0)
    np.testing.assert_allclose(back, kp[0, :2], atol=1e-2)


def test_prepare_person_takes_its_sizes_from_the_geometry() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    kp = coco17_to_smpl30(_coco())
    official = prepare_person(image, kp, OFFICIAL)
    small = prepare_person(image, kp, CropGeometry(crop_size=64, heatmap_size=8))
    assert small.image.shape == (3, 64, 64)
    np.testing.assert_array_equal(small.bbox_xywh, official.bbox_xywh)  # the same box, cut 4x smaller
    np.testing.assert_allclose(small.img2crop * 4, official.img2crop, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(small.joints[:, :2] * 4, official.joints[:, :2], rtol=1e-5, atol=1e-4)  # 8- vs 32-grid
    np.testing.assert_array_equal(small.joints_mask, official.joints_mask)
    back = small.crop2img @ np.append(small.joints[0, :2] * 8, 1.0)  # grid -> crop px is x 64 / 8
    np.testing.assert_allclose(back, kp[0, :2], atol=1e-2)


@pytest.mark.parametrize(
    ("image", "joints", "reason"),
    [
        (np.zeros((10, 10), np.uint8), np.ones((30, 3), np.float32), "bad_image_shape"),
        (np.zeros((10, 10, 3), np.uint8), np.ones((17, 3), np.float32), "bad_keypoints_shape"),
        (np.zeros((10, 10, 3), np.uint8), np.full((30, 3), np.nan, np.float32), "nonfinite_keypoints"),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((30, 3), np.float32), "no_valid_keypoints"),
    ],
)
def test_invalid_inputs_raise(image: np.ndarray, joints: np.ndarray, reason: str) -> None:
    with pytest.raises(InvalidPersonInput) as info:
        prepare_person(image, joints, OFFICIAL)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_a_one_pixel_image_is_reported_by_its_size_not_its_layout() -> None:
    with pytest.raises(InvalidPersonInput, match=r"image is 1x1 px; at least 2x2 is needed") as info:
        prepare_person(np.zeros((1, 1, 3), np.uint8), np.ones((30, 3), np.float32), OFFICIAL)
    assert info.value.reason == "bad_image_shape"

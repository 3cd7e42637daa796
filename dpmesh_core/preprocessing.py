"""Test-time pre-processing of the official 3DPW path (note §3): box from keypoints, square crop, model inputs.

The crop is the official one: `cv2.warpAffine(float32 image, img2crop, (S, S), flags=INTER_LINEAR)` with its
constant-0 border (OpenCV 4: source coordinates in fixed point, rounded to 1/32 px; OpenCV 5 samples at exact
coordinates and is refused by the dependency pin). The crop and keypoint-grid sizes are the model's
(`DPMeshConfig.crop_geometry`: 256 px and 32 for the official model), never constants of this module.

`prepare_person` is the official path. `plan_person` + `cut_crop` split it into the geometry (no pixels) and the
pixels, so that a caller with several persons per image converts the image once, or cuts from an image decoded at
reduced size (`dpmesh_core.fast_crop`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dpmesh_core.config import CropGeometry
from dpmesh_core.errors import InvalidPersonInput
from dpmesh_core.joints import SMPL30_JOINTS


CONF_THRESHOLD = 0.05


@dataclass(frozen=True)
class PersonInputs:
    """Model inputs of one person and the geometry needed to map outputs back.

    With S = `crop_size` and G = `heatmap_size` of the model's `CropGeometry` (official: 256 and 32):

    Attributes:
        image: `(3, S, S)` float32 RGB in [0, 1].
        joints: `(30, 3)` float32, x, y in G-grid units of the crop (crop px · G / S), conf.
        joints_mask: `(30, 1)` float32, 1 iff conf > 0.05 and 0 <= x, y < G.
        focal: sqrt(H² + W²) of the full image (px).
        bbox_xywh: `(4,)` float32 square crop box in full-image px.
        img2crop: `(2, 3)` float32 affine full image → crop px (S grid); `crop2img` its inverse.
        image_hw: (H, W) of the full image.
    """

    image: np.ndarray
    joints: np.ndarray
    joints_mask: np.ndarray
    focal: float
    bbox_xywh: np.ndarray
    img2crop: np.ndarray
    crop2img: np.ndarray
    image_hw: tuple[int, int]


def bbox_from_keypoints(keypoints: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Extent of the valid keypoints enlarged ×1.2 around its centre (preprocessing.py:34-49). → `(4,)` xywh."""
    x, y = keypoints[valid, 0], keypoints[valid, 1]
    xmin, xmax, ymin, ymax = x.min(), x.max(), y.min(), y.max()
    cx, w = (xmin + xmax) / 2.0, xmax - xmin
    cy, h = (ymin + ymax) / 2.0, ymax - ymin
    xmin, xmax = cx - 0.5 * w * 1.2, cx + 0.5 * w * 1.2
    ymin, ymax = cy - 0.5 * h * 1.2, cy + 0.5 * h * 1.2
    return np.array([xmin, ymin, xmax - xmin, ymax - ymin], dtype=np.float32)


def square_crop_box(bbox: np.ndarray, width: int, height: int, scale: float = 1.1) -> np.ndarray:
    """`process_bbox(..., is_3dpw_test=True)` (preprocessing.py:83-118): clip, make square, scale ×1.1."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1))
    box = np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32)
    w, h = box[2], box[3]
    cx, cy = box[0] + w / 2.0, box[1] + h / 2.0
    side = max(w, h)  # aspect ratio 1
    box[2] = side * scale
    box[3] = side * scale
    box[0] = cx - box[2] / 2.0
    box[1] = cy - box[3] / 2.0
    return box


def crop_affine(bbox: np.ndarray, out_size: int, inverse: bool = False) -> np.ndarray:
    """`gen_trans_from_patch_cv` with scale 1, rot 0 (preprocessing.py:248-281) → `(2, 3)` float32.

    `bbox` `(4,)` xywh in full-image px maps onto the `out_size`² crop (the model's `crop_size`).

    Solves the 3-point affine in float64 from float32 points, as `cv2.getAffineTransform` does.
    """
    c = np.array([bbox[0] + 0.5 * bbox[2], bbox[1] + 0.5 * bbox[3]], dtype=np.float32)
    src = np.stack([c, c + np.array([0, bbox[3] * 0.5], np.float32), c + np.array([bbox[2] * 0.5, 0], np.float32)])
    half = out_size * 0.5
    dst = np.array([[half, half], [half, out_size], [out_size, half]], dtype=np.float32)
    a, b = (dst, src) if inverse else (src, dst)
    lhs = np.concatenate([a.astype(np.float64), np.ones((3, 1))], axis=1)
    return np.linalg.solve(lhs, b.astype(np.float64)).T.astype(np.float32)


def warp_crop(image: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
    """`cv2.warpAffine(image, matrix, (out, out), flags=INTER_LINEAR)`, constant-0 border: the official crop.

    Args:
        image: `(H, W, C)` float32 (the official path: values 0-255) or uint8 (the fast path: OpenCV then rounds
            each output value to an integer, at most 0.5 from the float32 result).
        matrix: `(2, 3)` image → crop affine.
        out_size: output side (px).

    Returns:
        `(out, out, C)` in the input's dtype.
    """
    return cv2.warpAffine(image, matrix, (out_size, out_size), flags=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class PersonPlan:
    """Everything about a person's model inputs except the crop's pixels (see `PersonInputs` for the fields)."""

    joints: np.ndarray
    joints_mask: np.ndarray
    focal: float
    bbox_xywh: np.ndarray
    img2crop: np.ndarray
    crop2img: np.ndarray
    image_hw: tuple[int, int]
    crop_size: int


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidPersonInput("bad_image_shape", f"expected (H, W, 3) RGB, got {image.shape}")
    _check_size(image.shape[0], image.shape[1])


def _check_size(height: int, width: int) -> None:
    if height < 2 or width < 2:  # bilinear sampling needs two pixels each way
        raise InvalidPersonInput("bad_image_shape", f"image is {width}x{height} px; at least 2x2 is needed")


def _check_joints(joints30: np.ndarray) -> None:
    if joints30.shape != (len(SMPL30_JOINTS), 3):
        raise InvalidPersonInput("bad_keypoints_shape", f"expected (30, 3), got {joints30.shape}")
    if not np.isfinite(joints30).all():
        raise InvalidPersonInput("nonfinite_keypoints", "keypoints contain NaN or inf")


def plan_person(joints30: np.ndarray, image_hw: tuple[int, int], geometry: CropGeometry) -> PersonPlan:
    """The crop box, affines, keypoint inputs and mask of a person in an image of `image_hw` (H, W) px.

    Args:
        joints30: `(30, 3)` x, y in full-image px and confidence, in `SMPL30_JOINTS` order.
        image_hw: (H, W) of the full image as displayed (px).
        geometry: the model's crop and keypoint-grid sizes.

    Raises:
        InvalidPersonInput: wrong shapes, non-finite keypoints, no keypoint with conf > 0.05, degenerate box.
    """
    height, width = image_hw
    _check_size(height, width)
    _check_joints(joints30)
    joints30 = joints30.astype(np.float32)  # the official joint-set conversion yields float32
    valid = joints30[:, 2] > CONF_THRESHOLD
    if not valid.any():
        raise InvalidPersonInput("no_valid_keypoints", f"no keypoint with confidence > {CONF_THRESHOLD}")
    box = square_crop_box(bbox_from_keypoints(joints30, valid), width, height)
    if not box[2] > 0:
        raise InvalidPersonInput("degenerate_bbox", f"crop box {box.tolist()} has no extent")
    crop_size, grid = geometry.crop_size, geometry.heatmap_size
    img2crop = crop_affine(box, crop_size)
    # All 30 joints are mapped, invalid ones included: their coordinates still feed the keypoint tokens.
    xy1 = np.concatenate([joints30[:, :2].astype(np.float64), np.ones((30, 1))], axis=1)
    joints = joints30.astype(np.float32).copy()
    joints[:, :2] = (xy1 @ img2crop.astype(np.float64).T).astype(np.float32)
    joints[:, :2] = joints[:, :2] / crop_size * grid
    inside = (joints[:, 0] >= 0) & (joints[:, 0] < grid) & (joints[:, 1] >= 0) & (joints[:, 1] < grid)
    return PersonPlan(
        joints=joints,
        joints_mask=(valid & inside).astype(np.float32)[:, None],
        focal=float(np.sqrt(float(height) ** 2 + float(width) ** 2)),
        bbox_xywh=box,
        img2crop=img2crop,
        crop2img=crop_affine(box, crop_size, inverse=True),
        image_hw=(int(height), int(width)),
        crop_size=crop_size,
    )


def inputs_from_crop(plan: PersonPlan, crop: np.ndarray) -> PersonInputs:
    """The model inputs of `plan` with its `(S, S, 3)` crop (uint8 or float32, values 0-255)."""
    return PersonInputs(
        # C-contiguous CHW: a strided view would keep its HWC layout through np.stack and pickling would not,
        # and the convolutions pick different kernels (different rounding) for the two layouts.
        image=np.ascontiguousarray((crop.astype(np.float32, copy=False) / 255.0).transpose(2, 0, 1)),
        joints=plan.joints,
        joints_mask=plan.joints_mask,
        focal=plan.focal,
        bbox_xywh=plan.bbox_xywh,
        img2crop=plan.img2crop,
        crop2img=plan.crop2img,
        image_hw=plan.image_hw,
    )


def cut_crop(image: np.ndarray, plan: PersonPlan) -> PersonInputs:
    """The official crop of `plan` from the full image: `(H, W, 3)` uint8 RGB, or its float32 copy.

    A caller with several persons per image passes `image.astype(np.float32)` once instead of the uint8 image
    (the warp then converts nothing); the result is the same.
    """
    _check_image(image)
    if image.shape[:2] != plan.image_hw:
        raise ValueError(f"image is {image.shape[:2]}, the plan was made for {plan.image_hw}")
    # The official code warps the float32 image: OpenCV then keeps fractional values instead of rounding to uint8.
    crop = warp_crop(image.astype(np.float32, copy=False), plan.img2crop, plan.crop_size)
    return inputs_from_crop(plan, crop)


def prepare_person(image: np.ndarray, joints30: np.ndarray, geometry: CropGeometry) -> PersonInputs:
    """Full image + 30-joint keypoints in image px → model inputs (PW3D.py:226-296).

    Args:
        image: `(H, W, 3)` uint8 RGB (or the same values as float32).
        joints30: `(30, 3)` x, y in full-image px and confidence, in `SMPL30_JOINTS` order (see
            `dpmesh_core.joints.coco17_to_smpl30` / `openpose18_to_smpl30`).
        geometry: the model's crop and keypoint-grid sizes (`model.config.crop_geometry`).

    Raises:
        InvalidPersonInput: wrong shapes, non-finite keypoints, no keypoint with conf > 0.05, degenerate box.
    """
    _check_image(image)
    return cut_crop(image, plan_person(joints30, (image.shape[0], image.shape[1]), geometry))

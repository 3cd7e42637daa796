"""ViTPose's top-down person crop, on numpy and PIL: a detected box to the keypoint model's input.

The box is padded x1.25 to the model's aspect ratio and affine-warped to its input size, as transformers'
``VitPoseImageProcessor`` does (``box_to_center_and_scale``, ``get_warp_matrix``). Its own torch-free module:
the per-shard step crops persons without importing model code.
"""

import numpy as np
from PIL import Image


BOX_PADDING = 1.25  # ViTPose / mmpose top-down box padding
NORMALIZE_FACTOR = 200.0  # mmpose's box scale unit (pixels / 200)


def box_center_scale(box_xyxy: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """ViTPose's ``(center, scale)`` of a box: padded x1.25 to the model aspect ratio, scale in px/200."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    w, h = x2 - x1, y2 - y1
    aspect = input_hw[1] / input_hw[0]
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    center = np.array([x1 + (x2 - x1) / 2, y1 + (y2 - y1) / 2], dtype=np.float32)
    scale = np.array([w, h], dtype=np.float32) / NORMALIZE_FACTOR * BOX_PADDING
    return center, scale


def crop_person(image: np.ndarray, center: np.ndarray, scale: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """The `(h, w, 3)` uint8 top-down crop of ``image`` (ViTPose's unbiased affine warp, bilinear, zero fill)."""
    out_h, out_w = input_hw
    size = scale * NORMALIZE_FACTOR
    # Output pixel (u, v) samples input (cx + (u / (out_w - 1) - 0.5) * size_w, ...), the inverse of
    # transformers' get_warp_matrix(0, center * 2, (out_w - 1, out_h - 1), size).
    sx, sy = size[0] / (out_w - 1), size[1] / (out_h - 1)
    coeffs = (sx, 0.0, center[0] - size[0] / 2, 0.0, sy, center[1] - size[1] / 2)
    pil = Image.fromarray(image).transform(
        (out_w, out_h), Image.Transform.AFFINE, data=coeffs, resample=Image.Resampling.BILINEAR, fillcolor=0
    )
    return np.asarray(pil, dtype=np.uint8)

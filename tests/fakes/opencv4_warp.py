"""OpenCV 4's INTER_LINEAR ``warpAffine`` arithmetic written out in numpy, constant-0 border.

Two uses, one home: the oracle of the pin on OpenCV 4 (tests/dpmesh_core/test_preprocessing.py checks
``dpmesh_core.preprocessing.warp_crop``, i.e. ``cv2.warpAffine``, against it bit for bit), and the crop path before
OpenCV: this is the arithmetic ``dpmesh_core.preprocessing`` ran per crop before ``input.crop_mode`` existed (the
whole image converted to float32 for every crop), which ``benchmarks/crop_prep.py`` measures as the pre-OpenCV
baseline of the fast crop mode.
"""

from __future__ import annotations

import numpy as np


def opencv4_linear_warp(image: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (out_size, out_size), flags=cv2.INTER_LINEAR)`` as OpenCV 4 computes it.

    The matrix is inverted in float64; source coordinates are computed in 10-bit fixed point and rounded to
    1/32 px (INTER_BITS = 5) before bilinear interpolation; outside the image the border is constant 0.

    Args:
        image: `(H, W, C)` uint8 or float (copied to float32, as the pre-OpenCV crop path did for every crop).
        matrix: `(2, 3)` image → crop affine.
        out_size: output side (px).

    Returns:
        `(out_size, out_size, C)` float32 in the input's value range.
    """
    m = matrix.astype(np.float64)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    det = 1.0 / det if det != 0 else 0.0
    a, b, c, d = m[1, 1] * det, -m[0, 1] * det, -m[1, 0] * det, m[0, 0] * det
    tx, ty = -a * m[0, 2] - b * m[1, 2], -c * m[0, 2] - d * m[1, 2]
    grid = np.arange(out_size, dtype=np.float64)
    row_x = (np.rint((b * grid + tx) * 1024)[:, None] + 16).astype(np.int64)
    row_y = (np.rint((d * grid + ty) * 1024)[:, None] + 16).astype(np.int64)
    xs = (row_x + np.rint(a * grid * 1024).astype(np.int64)[None, :]) >> 5
    ys = (row_y + np.rint(c * grid * 1024).astype(np.int64)[None, :]) >> 5
    x0, y0 = xs >> 5, ys >> 5
    fx, fy = (xs & 31).astype(np.float32) / 32, (ys & 31).astype(np.float32) / 32
    src = image.astype(np.float32)
    height, width = src.shape[:2]
    out = np.zeros((out_size, out_size, src.shape[2]), dtype=np.float32)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            vals = src[np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)] * inside[..., None]
            out += vals * (wy * wx)[..., None]
    return out

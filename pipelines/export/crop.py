"""Square person crops and the map from full-image pixels to crop pixels (``format=crops`` and the PyTorch dataset).

A crop is the label's ``crop_bbox_xywh`` (DPMesh's square crop; it may extend past the image, which is filled with
black) resampled to ``size`` x ``size``. Pixel coordinates are continuous with pixel ``i`` covering ``[i, i + 1)``,
as for the keypoints, so a full-image point ``p`` lands at ``(p - (x, y)) * size / w`` in the crop.
"""

import numpy as np
from PIL import Image


def square_crop(pixels: np.ndarray, box_xywh: np.ndarray, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: the box ``(x, y, w, h)`` of ``pixels`` ``(H, W, 3)`` (bilinear, black outside)."""
    x, y, w, h = (float(v) for v in box_xywh)
    image = Image.fromarray(pixels)
    crop = image.transform(
        (size, size), Image.Transform.EXTENT, (x, y, x + w, y + h), resample=Image.Resampling.BILINEAR, fillcolor=0
    )
    return np.asarray(crop, dtype=np.uint8)


def crop_transform(box_xywh: np.ndarray, size: int) -> np.ndarray:
    """``(3, 3)`` affine map from full-image pixels to crop pixels (homogeneous ``[u, v, 1] = A @ [x, y, 1]``).

    Intrinsics follow the same map: the crop camera is ``A @ K``.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    sx, sy = size / w, size / h
    return np.array([[sx, 0.0, -sx * x], [0.0, sy, -sy * y], [0.0, 0.0, 1.0]], dtype=np.float32)


def to_crop_pixels(points: np.ndarray, box_xywh: np.ndarray, size: int) -> np.ndarray:
    """Points ``(..., 2+)`` in full-image px -> crop px; extra columns (confidence) are kept as they are."""
    a = crop_transform(box_xywh, size)
    out = np.array(points, dtype=np.float32, copy=True)
    out[..., 0] = points[..., 0] * a[0, 0] + a[0, 2]
    out[..., 1] = points[..., 1] * a[1, 1] + a[1, 2]
    return out

"""The fast crop: a person's crop cut from an image decoded at 1/2, 1/4 or 1/8 of its size, as uint8.

JPEG decoders scale in the DCT domain for free (libjpeg's ``scale_denom``): decoded pixel j then covers full-size
pixels [d·j, d·j + d), so its centre is full-size px d·j + (d − 1)/2. A person whose square crop box spans at least
`crop_size` · d full-size px still has at least one decoded pixel per crop pixel at reduction d, so the warp loses
no detail the crop could hold (it samples the decoded image at or below its resolution); the decoded pixels are
block averages rather than the point samples the official bilinear warp takes from the full image, so the two
crops differ by aliasing only (measured by ``benchmarks/crop_prep.py``: PSNR against the official crop).

The crop is warped from uint8 (OpenCV rounds each value, at most 0.5 from the float32 warp) so no float copy of the
image is made. The geometry (box, affines, keypoints, mask) is the official one (`plan_person`), unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpmesh_core.preprocessing import PersonInputs, PersonPlan, inputs_from_crop, warp_crop


REDUCTIONS = (8, 4, 2)  # the DCT scalings JPEG decoders offer below full size, largest first


def max_reduction(plans: Sequence[PersonPlan], allowed: int = 8) -> int:
    """The largest reduction d (8, 4, 2, else 1) at which every planned crop keeps >= 1 decoded px per crop px.

    Args:
        plans: the persons of one image (the image is decoded once for all of them); none: 1.
        allowed: the largest reduction the image itself allows (its size, its format).
    """
    if not plans:
        return 1
    smallest = min(float(plan.bbox_xywh[2]) / plan.crop_size for plan in plans)  # full px per crop px
    return next((d for d in REDUCTIONS if d <= allowed and smallest >= d), 1)


def reduced_affine(img2crop: np.ndarray, reduction: int) -> np.ndarray:
    """`(2, 3)` float64 affine from the image decoded at 1/`reduction` to the crop, given `img2crop` (full px).

    Full-size x = d·j + (d − 1)/2 for decoded pixel j (see the module doc), so the linear part scales by d and the
    translation moves by the linear part times (d − 1)/2.
    """
    full = img2crop.astype(np.float64)
    out = full.copy()
    out[:, :2] *= reduction
    out[:, 2] += full[:, :2].sum(axis=1) * (reduction - 1) / 2.0
    return out


def cut_fast_crop(decoded: np.ndarray, reduction: int, plan: PersonPlan) -> PersonInputs:
    """The crop of `plan` from `decoded`, `(ceil(H/d), ceil(W/d), 3)` uint8 RGB of the image at 1/`reduction`."""
    crop = warp_crop(decoded, reduced_affine(plan.img2crop, reduction), plan.crop_size)
    return inputs_from_crop(plan, crop)

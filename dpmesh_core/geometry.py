"""Pure tensor geometry: the official 6D convention, rotation matrix → axis-angle, projection, cameras."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """Official DPMesh / VPoser-v1 6D → rotation matrix (common/utils/transforms.py:91-105).

    The 6 numbers are read as a row-major 3×2 matrix: `a1 = (x0, x2, x4)`, `a2 = (x1, x3, x5)`; Gram-Schmidt gives
    `b1, b2`, `b3 = b1 × b2`, and the b's are the **columns** of R. PyTorch3D's `rotation_6d_to_matrix` instead
    takes `a1 = x[:3]`, `a2 = x[3:]` and stacks the b's as rows, so the two are not interchangeable.
    The cross product is per sample (`dim=-1`); the official root path omits `dim`, which crosses over the batch
    axis when the batch has exactly 3 samples (note §0 item 11): deliberately not reproduced.

    Args:
        x: `(N, 6)`.

    Returns:
        `(N, 3, 3)`.
    """
    m = x.reshape(-1, 3, 2)
    a1, a2 = m[:, :, 0], m[:, :, 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def rotmat_to_quaternion(rotmat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """torchgeometry 0.1.2 `rotation_matrix_to_quaternion` (official path algorithm): `(N,3,3)` → `(N,4)` wxyz."""
    r = rotmat.transpose(1, 2)
    mask_d2 = (r[:, 2, 2] < eps).to(r.dtype)
    mask_d0_d1 = (r[:, 0, 0] > r[:, 1, 1]).to(r.dtype)
    mask_d0_nd1 = (r[:, 0, 0] < -r[:, 1, 1]).to(r.dtype)
    t0 = 1 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2]
    q0 = torch.stack([r[:, 1, 2] - r[:, 2, 1], t0, r[:, 0, 1] + r[:, 1, 0], r[:, 2, 0] + r[:, 0, 2]], -1)
    t1 = 1 - r[:, 0, 0] + r[:, 1, 1] - r[:, 2, 2]
    q1 = torch.stack([r[:, 2, 0] - r[:, 0, 2], r[:, 0, 1] + r[:, 1, 0], t1, r[:, 1, 2] + r[:, 2, 1]], -1)
    t2 = 1 - r[:, 0, 0] - r[:, 1, 1] + r[:, 2, 2]
    q2 = torch.stack([r[:, 0, 1] - r[:, 1, 0], r[:, 2, 0] + r[:, 0, 2], r[:, 1, 2] + r[:, 2, 1], t2], -1)
    t3 = 1 + r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    q3 = torch.stack([t3, r[:, 1, 2] - r[:, 2, 1], r[:, 2, 0] - r[:, 0, 2], r[:, 0, 1] - r[:, 1, 0]], -1)
    c0 = (mask_d2 * mask_d0_d1)[:, None]
    c1 = (mask_d2 * (1 - mask_d0_d1))[:, None]
    c2 = ((1 - mask_d2) * mask_d0_nd1)[:, None]
    c3 = ((1 - mask_d2) * (1 - mask_d0_nd1))[:, None]
    q = q0 * c0 + q1 * c1 + q2 * c2 + q3 * c3
    q = q / torch.sqrt(t0[:, None] * c0 + t1[:, None] * c1 + t2[:, None] * c2 + t3[:, None] * c3)
    return q * 0.5


def quaternion_to_axis_angle(quaternion: torch.Tensor) -> torch.Tensor:
    """torchgeometry `quaternion_to_angle_axis` (ceres), `(..., 4)` wxyz → `(..., 3)`."""
    q1, q2, q3 = quaternion[..., 1], quaternion[..., 2], quaternion[..., 3]
    sin_sq = q1 * q1 + q2 * q2 + q3 * q3
    sin_theta = torch.sqrt(sin_sq)
    cos_theta = quaternion[..., 0]
    two_theta = 2.0 * torch.where(
        cos_theta < 0.0, torch.atan2(-sin_theta, -cos_theta), torch.atan2(sin_theta, cos_theta)
    )
    k = torch.where(sin_sq > 0.0, two_theta / sin_theta, 2.0 * torch.ones_like(sin_theta))
    return torch.stack([q1 * k, q2 * k, q3 * k], dim=-1)


def rotmat_to_axis_angle(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices `(N, 3, 3)` → axis-angle `(N, 3)` through the quaternion route of the official code.

    May return NaN for degenerate inputs (as the official code); callers decide (see `rot6d_to_axis_angle`).
    """
    return quaternion_to_axis_angle(rotmat_to_quaternion(rotmat))


def rot6d_to_axis_angle(x: torch.Tensor) -> torch.Tensor:
    """Official root-pose conversion: 6D `(N, 6)` → axis-angle `(N, 3)`, NaN replaced by 0 (transforms.py:104)."""
    aa = rotmat_to_axis_angle(rot6d_to_rotmat(x))
    return torch.nan_to_num(aa, nan=0.0, posinf=float("inf"), neginf=float("-inf"))


def camera_translation(
    cam_param: torch.Tensor, focal: torch.Tensor, image_size: int, camera_3d_size: float
) -> torch.Tensor:
    """Crop-camera translation from the raw camera head (common/model.py:95-105, non-render mode).

    Args:
        cam_param: `(B, 3)` t_x, t_y (m) and the logit of t_z.
        focal: `(B,)` focal length in pixels (per sample; see `DPMesh.forward`).
        image_size: crop side (256).
        camera_3d_size: 2.5 m.

    Returns:
        `(B, 3)` metres: `(t_x, t_y, f·camera_3d_size/image_size·sigmoid(c_z))`.
    """
    k = focal.to(cam_param.dtype) * camera_3d_size / image_size
    t_z = k * torch.sigmoid(cam_param[:, 2])
    return torch.cat([cam_param[:, :2], t_z[:, None]], dim=1)


def perspective_projection(points: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
    """Pinhole projection with the official `Z + 1e-4` guard (common/model.py:128-129).

    Args:
        points: `(B, N, 3)` camera-frame points (m).
        focal: `(B,)` px.
        principal: `(B, 2)` px.

    Returns:
        `(B, N, 2)` pixels.
    """
    z = points[..., 2:] + 1e-4
    return points[..., :2] / z * focal[:, None, None] + principal[:, None, :]


def crop_to_full_camera(
    cam_trans: torch.Tensor, bbox_xywh: torch.Tensor, image_hw: torch.Tensor, focal: torch.Tensor, crop_size: int
) -> torch.Tensor:
    """Crop-camera translation → full-image camera (principal point at the image centre), note §9.

    The crop camera sees the 256 crop with focal `f` and principal point (128, 128). The crop is the square box of
    side `s` centred at `(c_x, c_y)`, scaled by `256/s`; a full-image camera with the same `f` then needs
    `t_z' = t_z·256/s`, and moving the principal point from the box centre to the image centre shifts
    `t_x' = t_x + (c_x − W/2)·t_z'/f`, `t_y' = t_y + (c_y − H/2)·t_z'/f`. Exact for the root point; for the rest
    of the body a weak-perspective approximation (depth differences scale with t_z).

    Args:
        cam_trans: `(B, 3)` crop camera translation (m).
        bbox_xywh: `(B, 4)` square crop box in full-image px.
        image_hw: `(B, 2)` full image height, width.
        focal: `(B,)` px.
        crop_size: 256.

    Returns:
        `(B, 3)` full-image camera translation (m).
    """
    side = bbox_xywh[:, 2]
    cx = bbox_xywh[:, 0] + side / 2
    cy = bbox_xywh[:, 1] + bbox_xywh[:, 3] / 2
    tz = cam_trans[:, 2] * crop_size / side
    tx = cam_trans[:, 0] + (cx - image_hw[:, 1] / 2) * tz / focal
    ty = cam_trans[:, 1] + (cy - image_hw[:, 0] / 2) * tz / focal
    return torch.stack([tx, ty, tz], dim=1)

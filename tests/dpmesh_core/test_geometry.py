"""Geometry: official 6D convention, rotmat → axis-angle, per-sample batches, crop → full camera."""

from __future__ import annotations

import math

import torch
from smplx.lbs import batch_rodrigues

from dpmesh_core.geometry import (
    crop_to_full_camera,
    perspective_projection,
    rot6d_to_axis_angle,
    rot6d_to_rotmat,
    rotmat_to_axis_angle,
)


def _random_rotmats(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    aa = torch.randn(n, 3, generator=gen)
    aa = aa / aa.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=gen) * 3.0
    return batch_rodrigues(aa)


def test_identity_6d() -> None:
    torch.testing.assert_close(rot6d_to_rotmat(torch.tensor([[1.0, 0, 0, 1, 0, 0]])), torch.eye(3)[None])


def test_official_6d_is_first_two_columns_row_major() -> None:
    rot = _random_rotmats(8)
    official_6d = rot[:, :, :2].reshape(-1, 6)  # (3, 2) block read row-major
    torch.testing.assert_close(rot6d_to_rotmat(official_6d), rot, atol=1e-5, rtol=0)
    pytorch3d_6d = rot[:, :2, :].reshape(-1, 6)  # PyTorch3D: first two rows
    assert not torch.allclose(rot6d_to_rotmat(pytorch3d_6d), rot, atol=1e-3)


def test_known_rotation_to_axis_angle() -> None:
    rz90 = torch.tensor([[[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]])
    torch.testing.assert_close(rotmat_to_axis_angle(rz90), torch.tensor([[0.0, 0, math.pi / 2]]))
    torch.testing.assert_close(rotmat_to_axis_angle(torch.eye(3)[None]), torch.zeros(1, 3))


def test_axis_angle_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    aa = torch.randn(32, 3, generator=gen)
    aa = aa / aa.norm(dim=1, keepdim=True) * torch.rand(32, 1, generator=gen) * 3.0
    torch.testing.assert_close(rotmat_to_axis_angle(batch_rodrigues(aa)), aa, atol=1e-4, rtol=0)


def test_batch_of_three_is_per_sample() -> None:
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    batched = rot6d_to_axis_angle(x)
    single = torch.cat([rot6d_to_axis_angle(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single)


def test_nan_becomes_zero_as_in_official_root_path() -> None:
    assert torch.equal(rot6d_to_axis_angle(torch.full((2, 6), float("nan"))), torch.zeros(2, 3))


def test_crop_to_full_camera_reprojection_identity() -> None:
    focal = torch.tensor([2202.9, 1500.0])
    cam = torch.tensor([[0.1, -0.2, 12.0], [-0.3, 0.05, 6.0]])
    bbox = torch.tensor([[800.0, 300.0, 400.0, 400.0], [100.0, 50.0, 300.0, 300.0]])
    hw = torch.tensor([[1080.0, 1920.0], [720.0, 1280.0]])
    full = crop_to_full_camera(cam, bbox, hw, focal, 256)
    # a point at the translation's depth (the body root) projects identically through both cameras
    offsets = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.4, 0.0], [-0.2, 0.5, 0.0]])
    crop_pts = cam[:, None] + offsets[None]
    full_pts = full[:, None] + offsets[None]
    crop_px = perspective_projection(crop_pts, focal, torch.full((2, 2), 128.0))
    via_crop = (crop_px - 128) * bbox[:, None, 2:3] / 256 + (bbox[:, None, :2] + bbox[:, None, 2:] / 2)
    principal = torch.flip(hw, dims=[1]) / 2
    direct = perspective_projection(full_pts, focal, principal)
    torch.testing.assert_close(direct, via_crop, atol=2e-2, rtol=0)  # 1e-4 depth guard only

"""Post-processing: crop-camera outputs → full-image camera, joints and reprojections (numpy per person).

Also `batch_inputs`, which stacks persons into the model's input tensors. The one place that calls the model
between the two is `dpmesh_core.prediction.predict_persons`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dpmesh_core.config import CropGeometry
from dpmesh_core.geometry import crop_to_full_camera, perspective_projection
from dpmesh_core.joints import COCO17_FROM_SMPL30
from dpmesh_core.outputs import DPMeshOutput
from dpmesh_core.person_prediction import PersonPrediction
from dpmesh_core.preprocessing import PersonInputs


def batch_inputs(persons: Sequence[PersonInputs], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Stack `PersonInputs` into the model's keyword arguments: `images` `(B, 3, S, S)`, `joints` `(B, 30, 3)`,
    `joints_mask` `(B, 30, 1)` and `focal` `(B,)` px, on `device` in `dtype`."""

    def stack(name: str) -> torch.Tensor:
        # Always C-contiguous: the layout (not only the values) decides which kernels run, hence the rounding.
        stacked = np.ascontiguousarray(np.stack([getattr(p, name) for p in persons]))
        return torch.from_numpy(stacked).to(device=device, dtype=dtype)

    focal = torch.tensor([p.focal for p in persons], device=device, dtype=dtype)
    return {"images": stack("image"), "joints": stack("joints"), "joints_mask": stack("joints_mask"), "focal": focal}


def to_full_image(
    out: DPMeshOutput, persons: Sequence[PersonInputs], geometry: CropGeometry
) -> list[PersonPrediction]:
    """Convert a batch of model outputs to per-person full-image predictions.

    Args:
        out: the model's outputs for `persons`, in order.
        persons: the inputs they came from (crop boxes, image sizes).
        geometry: the model's crop geometry (`model.config.crop_geometry`), the crop camera's image side.
    """
    dtype, device = out.cam_trans.dtype, out.cam_trans.device
    boxes = torch.from_numpy(np.stack([p.bbox_xywh for p in persons])).to(device=device, dtype=dtype)
    hw = torch.tensor([p.image_hw for p in persons], device=device, dtype=dtype)
    full_t = crop_to_full_camera(out.cam_trans, boxes, hw, out.focal, geometry.crop_size)
    shift = (full_t - out.cam_trans)[:, None, :]
    joints30 = out.joints30 + shift
    principal = torch.flip(hw, dims=[1]) / 2
    coco = joints30[:, list(COCO17_FROM_SMPL30)]
    proj = perspective_projection(coco, out.focal, principal)

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    results = []
    for i in range(len(persons)):
        results.append(
            PersonPrediction(
                global_orient=arr(out.smpl_pose[i, :3]),
                body_pose=arr(out.smpl_pose[i, 3:]),
                betas=arr(out.smpl_shape[i]),
                transl=arr(full_t[i]),
                focal_length=float(out.focal[i]),
                principal_point=arr(principal[i]),
                joints_3d=arr(joints30[i, :24]),
                coco17_3d=arr(coco[i]),
                joints_2d_proj=arr(proj[i]),
                vposer_z=arr(out.pose_latent[i]),
                joint_img=arr(out.joint_img[i]),
                smpl_joints15_img=arr(out.smpl_joints15_img[i]),
                crop_bbox_xywh=persons[i].bbox_xywh.copy(),
                cam_trans_crop=arr(out.cam_trans[i]),
                vertices=arr(out.vertices[i] + shift[i]),
            )
        )
    return results

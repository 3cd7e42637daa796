"""Post-processing: crop-camera outputs → full-image camera, joints and reprojections (numpy per person)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from dpmesh_core.geometry import crop_to_full_camera, perspective_projection
from dpmesh_core.joints import COCO17_FROM_SMPL30, coco17_to_smpl30, openpose18_to_smpl30
from dpmesh_core.preprocessing import CROP_SIZE, PersonInputs, prepare_person


if TYPE_CHECKING:
    from dpmesh_core.model import DPMesh, DPMeshOutput


@dataclass(frozen=True)
class PersonPrediction:
    """One person in full-image coordinates (camera frame: OpenCV axes, metres; pixels of the full image).

    Attributes:
        global_orient: `(3,)`; body_pose: `(69,)` axis-angle; betas: `(10,)`.
        transl: `(3,)` full-image camera translation (principal point at the image centre).
        focal_length: px; principal_point: `(2,)` px (W/2, H/2).
        joints_3d: `(24, 3)` SMPL joints (regressed from the mesh) in the full-image camera frame.
        coco17_3d: `(17, 3)` COCO-17 joints from the mesh (face from vertices, body from SMPL joints).
        joints_2d_proj: `(17, 2)` `coco17_3d` reprojected in full-image px.
        vposer_z: `(32,)` VPoser latent; joint_img: `(15, 3)` decoder joints in [0, 1] of the crop;
        smpl_joints15_img: `(15, 2)` SMPL-derived joints in [0, 1] of the crop (same order as joint_img).
        crop_bbox_xywh: `(4,)` square crop box; cam_trans_crop: `(3,)` crop-camera translation.
        vertices: `(N, 3)` mesh in the full-image camera frame.
    """

    global_orient: np.ndarray
    body_pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    focal_length: float
    principal_point: np.ndarray
    joints_3d: np.ndarray
    coco17_3d: np.ndarray
    joints_2d_proj: np.ndarray
    vposer_z: np.ndarray
    joint_img: np.ndarray
    smpl_joints15_img: np.ndarray
    crop_bbox_xywh: np.ndarray
    cam_trans_crop: np.ndarray
    vertices: np.ndarray


def batch_inputs(persons: Sequence[PersonInputs], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Stack `PersonInputs` into the model's `(images, joints, joints_mask, focal)` tensors."""

    def stack(name: str) -> torch.Tensor:
        # Always C-contiguous: the layout (not only the values) decides which kernels run, hence the rounding.
        stacked = np.ascontiguousarray(np.stack([getattr(p, name) for p in persons]))
        return torch.from_numpy(stacked).to(device=device, dtype=dtype)

    focal = torch.tensor([p.focal for p in persons], device=device, dtype=dtype)
    return {"images": stack("image"), "joints": stack("joints"), "joints_mask": stack("joints_mask"), "focal": focal}


def to_full_image(out: DPMeshOutput, persons: Sequence[PersonInputs]) -> list[PersonPrediction]:
    """Convert a batch of model outputs to per-person full-image predictions."""
    dtype, device = out.cam_trans.dtype, out.cam_trans.device
    boxes = torch.from_numpy(np.stack([p.bbox_xywh for p in persons])).to(device=device, dtype=dtype)
    hw = torch.tensor([p.image_hw for p in persons], device=device, dtype=dtype)
    full_t = crop_to_full_camera(out.cam_trans, boxes, hw, out.focal, CROP_SIZE)
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


def predict_image(
    model: DPMesh, image: np.ndarray, keypoints: np.ndarray, keypoint_format: str
) -> list[PersonPrediction]:
    """Pre-process every person, run one batch, post-process (see `DPMesh.predict`).

    Raises:
        InvalidPersonInput: for the first invalid person (notebook use; the pipeline handles persons one by one).
        ValueError: unknown `keypoint_format`.
    """
    converters = {"coco17": coco17_to_smpl30, "openpose18": openpose18_to_smpl30}
    if keypoint_format not in converters:
        raise ValueError(f"keypoint_format={keypoint_format!r}; expected one of {sorted(converters)}")
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim == 2:
        keypoints = keypoints[None]
    persons = [prepare_person(image, converters[keypoint_format](kp)) for kp in keypoints]
    if not persons:
        return []
    with torch.inference_mode():
        out = model(**batch_inputs(persons, model.device, model.input_dtype))
    return to_full_image(out, persons)

"""`DPMeshOutput`: what one forward pass of DPMesh returns (DESIGN §3.2), in the crop camera.

Its own module so that post-processing and prediction can name it without importing the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DPMeshOutput:
    """Outputs of one forward pass, crop camera (S = `config.image_size`: principal point (S/2, S/2), focal `focal`).

    Attributes:
        smpl_pose: `(B, 72)` axis-angle (root, 21 body joints, 2 zero hands).
        smpl_shape: `(B, 10)` betas.
        cam_trans: `(B, 3)` m, crop-camera translation.
        joint_img: `(B, 15, 3)` decoder joints in [0, 1] (x, y of the crop; z depth code), `GRAPH15_JOINTS`.
        vertices: `(B, N, 3)` m, absolute in the crop camera.
        joints30: `(B, 30, 3)` m, regressed from `vertices`, absolute in the crop camera.
        joint_proj: `(B, 30, 2)` crop px (S grid, 256 for the official model) projection of `joints30`.
        smpl_joints15_img: `(B, 15, 2)` `joint_proj` of the `GRAPH15_JOINTS`, divided by S (compare with
            `joint_img[..., :2]` for decoder-vs-SMPL consistency).
        pose_latent: `(B, 32)` VPoser latent (prior N(0, I)).
        cam_param: `(B, 3)` raw camera head output.
        root_pose_6d: `(B, 6)`.
        focal: `(B,)` px used for the camera.
    """

    smpl_pose: torch.Tensor
    smpl_shape: torch.Tensor
    cam_trans: torch.Tensor
    joint_img: torch.Tensor
    vertices: torch.Tensor
    joints30: torch.Tensor
    joint_proj: torch.Tensor
    smpl_joints15_img: torch.Tensor
    pose_latent: torch.Tensor
    cam_param: torch.Tensor
    root_pose_6d: torch.Tensor
    focal: torch.Tensor

"""`DPMesh`: the full model (backbone → head → VPoser → SMPL) and its output dataclass (DESIGN §3.2)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from dpmesh_core.body_model import BodyModel, SMPLData
from dpmesh_core.config import DPMeshConfig, tiny_config
from dpmesh_core.geometry import camera_translation, perspective_projection, rot6d_to_axis_angle
from dpmesh_core.joints import GRAPH15_FROM_SMPL30
from dpmesh_core.models.backbone import DPMeshBackbone
from dpmesh_core.models.head import DPMeshHead, HeadOutput
from dpmesh_core.models.vposer import VPoserDecoder


if TYPE_CHECKING:
    from dpmesh_core.postprocessing import PersonPrediction


@dataclass
class DPMeshOutput:
    """Outputs of one forward pass, crop camera (principal point (128, 128), focal `focal`).

    Attributes:
        smpl_pose: `(B, 72)` axis-angle (root, 21 body joints, 2 zero hands).
        smpl_shape: `(B, 10)` betas.
        cam_trans: `(B, 3)` m, crop-camera translation.
        joint_img: `(B, 15, 3)` decoder joints in [0, 1] (x, y of the crop; z depth code), `GRAPH15_JOINTS`.
        vertices: `(B, N, 3)` m, absolute in the crop camera.
        joints30: `(B, 30, 3)` m, regressed from `vertices`, absolute in the crop camera.
        joint_proj: `(B, 30, 2)` crop px (256 grid) projection of `joints30`.
        smpl_joints15_img: `(B, 15, 2)` `joint_proj` of the `GRAPH15_JOINTS`, divided by 256 (compare with
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


class DPMesh(nn.Module):
    """DPMesh (CVPR 2024) inference model.

    Build with `DPMesh.from_official_checkpoint`, `DPMesh.from_pretrained` or `DPMesh.tiny` (random weights).
    """

    def __init__(self, config: DPMeshConfig, smpl: SMPLData, *, network_device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        with torch.device(network_device or "cpu"):
            self.backbone = DPMeshBackbone(config)
            self.head = DPMeshHead(config.head)
            self.vposer = VPoserDecoder(config.vposer)
        self.body_model = BodyModel(smpl)
        self.model_id = ""

    @classmethod
    def tiny(cls, seed: int = 0, smpl: SMPLData | None = None) -> DPMesh:
        """Tiny configuration with seeded random weights (tests, demos). `smpl` defaults to a synthetic mesh."""
        if smpl is None:
            from dpmesh_core.synthetic import synthetic_smpl_data

            smpl = synthetic_smpl_data(num_vertices=64, seed=seed)
        torch.manual_seed(seed)
        model = cls(tiny_config(), smpl)
        model.model_id = f"tiny-seed{seed}"
        return model.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where the model's weights (and so its inputs) live."""
        return next(self.parameters()).device

    @property
    def input_dtype(self) -> torch.dtype:
        """The float dtype `forward` expects its inputs in (the weights' dtype; fp32 for the fast path)."""
        return next(self.parameters()).dtype

    def network_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the body model (whose arrays are saved separately as `SMPLData`)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("body_model.")}

    def forward(
        self, images: torch.Tensor, joints: torch.Tensor, joints_mask: torch.Tensor, focal: torch.Tensor
    ) -> DPMeshOutput:
        """Run DPMesh on person crops.

        Args:
            images: `(B, 3, 256, 256)` RGB in [0, 1].
            joints: `(B, 30, 3)` x, y in 32-grid units of the crop (crop px / 8), confidence (unused).
            joints_mask: `(B, 30, 1)` 1 = valid.
            focal: `(B,)` px, sqrt(H² + W²) of each sample's original image. Deliberate difference from the
                official code, which applies the first sample's focal to the whole batch (common/model.py:168):
                here every sample uses its own focal, which equals the official behaviour whenever all images of
                a batch share one size.

        Returns:
            `DPMeshOutput`.
        """
        focal = focal.to(device=images.device, dtype=images.dtype).reshape(-1)
        # 1. backbone: diffusion features conditioned on keypoints
        feat = self.backbone(images, joints[..., :2], joints_mask)
        # 2. head: SMPL/camera parameters and decoder joints
        raw = self.head(feat)
        # 3. parameters → pose, camera, mesh
        return self.outputs_from_head(raw, focal)

    def outputs_from_head(self, raw: HeadOutput, focal: torch.Tensor) -> DPMeshOutput:
        """Step 3 of `forward`: head outputs + per-sample focal `(B,)` → pose, camera, mesh (in `focal`'s dtype)."""
        cfg = self.config
        batch = focal.shape[0]
        root = rot6d_to_axis_angle(raw.root_pose_6d)
        pose = torch.cat([root, self.vposer(raw.pose_latent)], dim=1)
        cam_trans = camera_translation(raw.cam_param, focal, cfg.image_size, cfg.camera_3d_size)
        vertices = self.body_model(pose, raw.betas, cam_trans)
        joints30 = self.body_model.joints30(vertices)
        principal = torch.full((batch, 2), cfg.image_size / 2, dtype=focal.dtype, device=focal.device)
        joint_proj = perspective_projection(joints30, focal, principal)
        return DPMeshOutput(
            smpl_pose=pose, smpl_shape=raw.betas, cam_trans=cam_trans, joint_img=raw.joint_img, vertices=vertices,
            joints30=joints30, joint_proj=joint_proj,
            smpl_joints15_img=joint_proj[:, list(GRAPH15_FROM_SMPL30)] / cfg.image_size,
            pose_latent=raw.pose_latent, cam_param=raw.cam_param, root_pose_6d=raw.root_pose_6d, focal=focal,
        )  # fmt: skip

    @classmethod
    def from_official_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        smpl: SMPLData | None = None,
        config: DPMeshConfig | None = None,
        compute_model_id: bool = True,
    ) -> DPMesh:
        """Load a released `*_best_ckpt.pth.tar` (see `dpmesh_core.checkpoint.load_official_checkpoint`).

        Args:
            path: checkpoint file (read with `torch.load(weights_only=True, mmap=True)`).
            device, dtype: target placement.
            smpl: SMPL arrays; default: the checkpoint's `human_model_layer.th_*` buffers.
            config: architecture; default: `official_config()`.
            compute_model_id: set `model_id` from the sha256 of the file.
        """
        from dpmesh_core.checkpoint import load_official_checkpoint

        model: DPMesh = load_official_checkpoint(
            path, device=device, dtype=dtype, smpl=smpl, config=config, compute_model_id=compute_model_id
        )
        return model

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> DPMesh:
        """Load a folder written by `save_pretrained` (safetensors + config.json, no pickle)."""
        from dpmesh_core.pretrained import load_pretrained

        return load_pretrained(directory, device=device, dtype=dtype)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write `config.json`, `model.safetensors` and `smpl.safetensors` into `directory`."""
        from dpmesh_core.pretrained import save_pretrained

        save_pretrained(self, directory)

    def predict(
        self, image: np.ndarray, keypoints: np.ndarray, keypoint_format: str = "coco17"
    ) -> list[PersonPrediction]:
        """One call for notebooks: full image + per-person keypoints → per-person results in full-image coordinates.

        Args:
            image: `(H, W, 3)` uint8 RGB.
            keypoints: `(P, 17, 3)` COCO-17 (or `(P, 18, 3)` OpenPose-18 with `keypoint_format="openpose18"`),
                x, y in image px and confidence.

        Returns:
            One `PersonPrediction` per person (see `dpmesh_core.postprocessing`).
        """
        from dpmesh_core.postprocessing import predict_image

        return predict_image(self, image, keypoints, keypoint_format)

    def extra_repr(self) -> str:
        return f"model_id={self.model_id!r}"

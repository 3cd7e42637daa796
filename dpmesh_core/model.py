"""`DPMesh`: the full model (backbone → head → VPoser → SMPL) (DESIGN §3.2).

Loading and saving come from `DPMeshLoadingMixin` (`dpmesh_core.loading`), prediction on full images from
`dpmesh_core.prediction`; both are imported here and never import this module back.
"""

from __future__ import annotations

import numpy as np
import torch

from dpmesh_core.body_model import BodyModel, SMPLData
from dpmesh_core.config import DPMeshConfig, tiny_config
from dpmesh_core.geometry import camera_translation, perspective_projection, rot6d_to_axis_angle
from dpmesh_core.joints import GRAPH15_FROM_SMPL30
from dpmesh_core.loading import DPMeshLoadingMixin
from dpmesh_core.models.backbone import DPMeshBackbone
from dpmesh_core.models.head import DPMeshHead, HeadOutput
from dpmesh_core.models.vposer import VPoserDecoder
from dpmesh_core.outputs import DPMeshOutput
from dpmesh_core.person_prediction import PersonPrediction
from dpmesh_core.prediction import predict_image
from dpmesh_core.synthetic import synthetic_smpl_data


__all__ = ["DPMesh", "DPMeshOutput"]  # DPMeshOutput lives in dpmesh_core.outputs; importable from here too


class DPMesh(DPMeshLoadingMixin):
    """DPMesh (CVPR 2024) inference model.

    Build with `DPMesh.from_official_checkpoint`, `DPMesh.from_pretrained` (both from `DPMeshLoadingMixin`) or
    `DPMesh.tiny` (random weights).
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
    def tiny(cls, seed: int = 0, smpl: SMPLData | None = None, config: DPMeshConfig | None = None) -> DPMesh:
        """Tiny configuration with seeded random weights (tests, demos). `smpl` defaults to a synthetic mesh,
        `config` to `tiny_config()`."""
        if smpl is None:
            smpl = synthetic_smpl_data(num_vertices=64, seed=seed)
        torch.manual_seed(seed)
        model = cls(config or tiny_config(), smpl)
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

    def forward(
        self, images: torch.Tensor, joints: torch.Tensor, joints_mask: torch.Tensor, focal: torch.Tensor
    ) -> DPMeshOutput:
        """Run DPMesh on person crops.

        With S = `config.image_size` and G = `config.heatmap_size` (official 256 and 32; tiny 64 and 8):

        Args:
            images: `(B, 3, S, S)` RGB in [0, 1].
            joints: `(B, 30, 3)` x, y in G-grid units of the crop (crop px · G / S), confidence (unused).
            joints_mask: `(B, 30, 1)` 1 = valid.
            focal: `(B,)` px, sqrt(H² + W²) of each sample's original image. Deliberate difference from the
                official code, which applies the first sample's focal to the whole batch (common/model.py:168):
                here every sample uses its own focal, which equals the official behaviour whenever all images of
                a batch share one size.

        Returns:
            `DPMeshOutput`.

        Raises:
            ValueError: crops of another size than `config.image_size` (inputs prepared for another model).
        """
        self.check_crop_size(images)
        focal = focal.to(device=images.device, dtype=images.dtype).reshape(-1)
        # 1. backbone: diffusion features conditioned on keypoints
        feat = self.backbone(images, joints[..., :2], joints_mask)
        # 2. head: SMPL/camera parameters and decoder joints
        raw = self.head(feat)
        # 3. parameters → pose, camera, mesh
        return self.outputs_from_head(raw, focal)

    def check_crop_size(self, images: torch.Tensor) -> None:
        """Raise `ValueError` unless `images` is `(B, 3, S, S)` with S = `config.image_size`.

        Pre-processing takes its crop size from this model's config; crops of another size mean the inputs were
        prepared for another model, and the convolutions would run on them and return garbage.
        """
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"images of shape {tuple(images.shape)}: this model takes (B, 3, {size}, {size}) crops "
                "(prepare them with prepare_person(..., model.config.crop_geometry))"
            )

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
        return predict_image(self, image, keypoints, keypoint_format)

    def extra_repr(self) -> str:
        return f"model_id={self.model_id!r}"

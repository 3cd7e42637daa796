"""JOTR-style regression head: 3D feature volume, refine encoder, DETR transformer, cascade heads (note §1.4).

Attribute names equal the official ones (common/model.py:41-92) so that checkpoint keys load directly; the one
exception is `cascade_shape_out`, spelled `cascade_shaoe_out` in the official checkpoint (renamed by the loader).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dpmesh_core.config import HeadConfig
from dpmesh_core.models.forward_capture import record
from dpmesh_core.models.transformer import Encoder, Transformer, sine_position_embedding_2d, sinusoid_table_1d


@dataclass
class HeadOutput:
    """Raw head outputs.

    Attributes:
        root_pose_6d: `(B, 6)` root rotation, official (3,2) 6D layout.
        pose_latent: `(B, 32)` VPoser latent of the 21 body joints.
        betas: `(B, 10)` SMPL shape.
        cam_param: `(B, 3)` t_x, t_y (m) and the logit of t_z.
        joint_img: `(B, 15, 3)` decoder joints in [0, 1] (x, y of the crop; z depth code).
        hs: `(L, 3, B, C)` SMPL tokens after every decoder layer.
    """

    root_pose_6d: torch.Tensor
    pose_latent: torch.Tensor
    betas: torch.Tensor
    cam_param: torch.Tensor
    joint_img: torch.Tensor
    hs: torch.Tensor


def _cascade(d_model: int, out: int, depth: int) -> nn.ModuleList:
    return nn.ModuleList([nn.Linear(d_model, out)] + [nn.Linear(d_model + out, out) for _ in range(depth - 1)])


def cascade_fc(tokens: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
    """`out₀ = fc₀(h₀)`, `outᵢ = outᵢ₋₁ + fcᵢ([hᵢ, outᵢ₋₁])` over the `(L, B, C)` tokens (common/model.py:141-149)."""
    out: torch.Tensor = layers[0](tokens[0])
    for i in range(1, len(layers)):
        out = out + layers[i](torch.cat([tokens[i], out], dim=-1))
    return out


class PositionTable(nn.Module):
    """Holds the fixed `pos_table` buffer under the official name `pos_embed_1d.pos_table`."""

    def __init__(self, n_position: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("pos_table", sinusoid_table_1d(n_position, dim))

    pos_table: torch.Tensor


class DPMeshHead(nn.Module):
    """Fused backbone features `(B, C_in, 8, 8)` → SMPL/camera parameters and decoder joints."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        d, depth = cfg.d_model, cfg.volume_depth
        self.cfg = cfg
        self.conv2d_to_3d = nn.Conv2d(cfg.backbone_out_channels, d * depth, 1, 1)
        self.exponent = nn.Parameter(torch.tensor(3.0))
        self.conv_3d_coord = nn.Sequential(nn.Conv3d(d + 3, d, 1, 1))
        self.refine_3d = Encoder(cfg.num_encoder_layers, d, cfg.nhead, cfg.refine_dim_feedforward, final_norm=True)
        self.pos_embed_1d = PositionTable(depth**3, d)
        self.down_linear = nn.Conv2d(cfg.backbone_out_channels, d, 1, 1)
        self.transformer = Transformer(
            d, cfg.nhead, cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.dim_feedforward,
            cfg.num_smpl_queries, cfg.num_joint_queries,
        )  # fmt: skip
        self.spose_shape_cam_param = nn.Parameter(torch.randn(cfg.num_smpl_queries, d))
        self.query = nn.Embedding(cfg.num_joint_queries, d)
        n = cfg.num_decoder_layers
        self.cascade_root_pose_out = _cascade(d, 6, n)
        self.cascade_pose_out = _cascade(d, cfg.pose_latent_dim, n)
        self.cascade_shape_out = _cascade(d, cfg.num_betas, n)
        self.cascade_cam_out = _cascade(d, 3, n)

    def depth_anchors(self, exponent: torch.Tensor) -> torch.Tensor:
        """`(1, 3, D, D, D)` channels `[Z, Y, X]`, `r = arange(D)/D`, `Z = r**exponent` (common/model.py:151-157)."""
        size = self.cfg.volume_depth
        r = torch.arange(size, dtype=torch.float32, device=exponent.device) / size
        y = r.reshape(1, 1, 1, size, 1).expand(1, 1, size, size, size)
        x = r.reshape(1, 1, 1, 1, size).expand(1, 1, size, size, size)
        z = torch.pow(r, exponent).reshape(1, 1, size, 1, 1).expand(1, 1, size, size, size)
        return torch.cat([z, y, x], dim=1)

    def refined_volume(self, feat: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        """`(B, C_in, 8, 8)` → refined volume `(B, d, D, 8, 8)` (common/model.py:174-184)."""
        batch, _, height, width = feat.shape
        d, depth = self.cfg.d_model, self.cfg.volume_depth
        volume = self.conv2d_to_3d(feat).reshape(batch, d, depth, height, width)  # 'b (c d) h w -> b c d h w'
        anchors = self.depth_anchors(exponent).to(volume.dtype).expand(batch, -1, -1, -1, -1)
        volume = self.conv_3d_coord(torch.cat([volume, anchors], dim=1))
        tokens: torch.Tensor = volume.flatten(2).permute(2, 0, 1)  # '(d h w) b c'
        pos = self.pos_embed_1d.pos_table[:, None, :].expand(-1, batch, -1)
        tokens = self.refine_3d(tokens, pos)
        record(refine_3d=tokens)
        return tokens.permute(1, 2, 0).reshape(batch, d, depth, height, width)

    def forward(self, feat: torch.Tensor) -> HeadOutput:
        """Regress parameters from fused features `(B, C_in, 8, 8)`."""
        batch = feat.shape[0]
        # 1. dense 3D volume with learned depth exponent, refined by a small encoder
        exponent = torch.clamp(self.exponent, 1, 20)
        volume = self.refined_volume(feat, exponent)
        # 2. image tokens with 2D sine positions
        img = self.down_linear(feat)
        img_pos = sine_position_embedding_2d(batch, img.shape[2], img.shape[3], self.cfg.d_model, feat.device)
        src = img.flatten(2).permute(2, 0, 1)
        pos = img_pos.to(img.dtype).flatten(2).permute(2, 0, 1)
        # 3. transformer: 3 SMPL queries + 15 joint queries sampling the volume
        query_pos = torch.cat([self.spose_shape_cam_param, self.query.weight], dim=0)[:, None].expand(-1, batch, -1)
        hs, joint_img = self.transformer(src, pos, query_pos, volume, exponent)
        # 4. cascade heads over the decoder layers: pose/root from token 0, shape 1, camera 2
        record(hs=hs)
        return HeadOutput(
            root_pose_6d=cascade_fc(hs[:, 0], self.cascade_root_pose_out),
            pose_latent=cascade_fc(hs[:, 0], self.cascade_pose_out),
            betas=cascade_fc(hs[:, 1], self.cascade_shape_out),
            cam_param=cascade_fc(hs[:, 2], self.cascade_cam_out),
            joint_img=joint_img,
            hs=hs,
        )

"""VPoser v1.0 decoder (human_body_prior 0.8.5 `train/vposer_smpl.py`, used by common/nets/module.py:216-230).

Only the decoder is needed at inference: latent `(B, 32)` → 21 body-joint rotations (continuous 6D, official
(3,2) layout) → axis-angle through the quaternion route; the two hand joints of SMPL are appended as zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpmesh_core.config import VPoserConfig
from dpmesh_core.geometry import rot6d_to_rotmat, rotmat_to_axis_angle


class VPoserDecoder(nn.Module):
    """Parameter names follow the official `vposer.vposer.bodyprior_dec_*` keys."""

    def __init__(self, cfg: VPoserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bodyprior_dec_fc1 = nn.Linear(cfg.latent_dim, cfg.num_neurons)
        self.bodyprior_dec_fc2 = nn.Linear(cfg.num_neurons, cfg.num_neurons)
        self.bodyprior_dec_out = nn.Linear(cfg.num_neurons, cfg.num_joints * 6)
        self.dropout = nn.Dropout(p=0.1)

    def decode_rotmat(self, latent: torch.Tensor) -> torch.Tensor:
        """`(B, 32)` → body-joint rotation matrices `(B, 21, 3, 3)`."""
        x = F.leaky_relu(self.bodyprior_dec_fc1(latent), negative_slope=0.2)
        x = self.dropout(x)
        x = F.leaky_relu(self.bodyprior_dec_fc2(x), negative_slope=0.2)
        x = self.bodyprior_dec_out(x)
        return rot6d_to_rotmat(x.reshape(-1, 6)).reshape(latent.shape[0], self.cfg.num_joints, 3, 3)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """`(B, 32)` → SMPL body pose `(B, 69)` axis-angle: 21 decoded joints + 2 zero hand joints."""
        batch = latent.shape[0]
        body = rotmat_to_axis_angle(self.decode_rotmat(latent).reshape(-1, 3, 3)).reshape(batch, -1, 3)
        hands = body.new_zeros(batch, 2, 3)
        return torch.cat([body, hands], dim=1).reshape(batch, -1)

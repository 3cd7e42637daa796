"""DETR-style post-norm transformer with 3D-volume joint sampling (JOTR / DPMesh common/nets/transformer.py).

Sequence-first layout `(tokens, B, C)` everywhere, as in the official code, so that `nn.MultiheadAttention`
parameter names and the token order match the checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit with the official clamping to [eps, 1 - eps] (transformer.py:484-488)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_position_embedding_2d(batch: int, height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """DETR `PositionEmbeddingSine(dim/2, normalize=True)` for an unmasked map.

    Returns:
        `(B, dim, H, W)`, channels `[pos_y | pos_x]` (transformer.py:500-535).
    """
    half = dim // 2
    ones = torch.ones(batch, height, width, device=device)
    y_embed = ones.cumsum(1, dtype=torch.float32)
    x_embed = ones.cumsum(2, dtype=torch.float32)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = 10000 ** torch.div(2 * (dim_t // 2), half, rounding_mode="trunc")
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def sinusoid_table_1d(n_position: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoid table `(n_position, dim)` (common/nets/module.py:15-34), computed in float64."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    hid = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(
        torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(hid, 2, rounding_mode="floor") / dim
    )
    table = angle.clone()
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


class EncoderLayer(nn.Module):
    """Post-norm self-attention + ReLU FFN; positions added to queries and keys only."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """`src`, `pos`: `(N, B, C)` → `(N, B, C)`."""
        q = k = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, value=src)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        out: torch.Tensor = self.norm2(src + self.dropout2(ffn))
        return out


class Encoder(nn.Module):
    """Stack of `EncoderLayer`; optional final LayerNorm (`refine_3d` has one, the DETR encoder does not)."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int, final_norm: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(d_model, nhead, dim_feedforward) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model) if final_norm else None

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return self.norm(src) if self.norm is not None else src


class DecoderLayer(nn.Module):
    """Post-norm self-attention, cross-attention to memory, ReLU FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
    ) -> torch.Tensor:
        """`tgt`, `query_pos`: `(Q, B, C)`; `memory`, `pos`: `(N, B, C)` → `(Q, B, C)`."""
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, value=tgt)[0]))
        attended = self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        out: torch.Tensor = self.norm3(tgt + self.dropout3(ffn))
        return out


class JointDecoder(nn.Module):
    """Decoder whose 15 joint queries regress 3D joints that sample the refined volume (transformer.py:91-156).

    After every layer: shared LayerNorm (fed to the next layer), joint refinement in logit space, trilinear
    sampling of the volume at `(2x-1, 2y-1, 2z^exponent-1)`, and replacement of the 15 appended memory tokens.
    """

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int, num_smpl_queries: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(d_model, nhead, dim_feedforward) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.num_smpl_queries = num_smpl_queries
        self.joint_img_regress = nn.ModuleList(
            [nn.Linear(d_model, 3)] + [nn.Linear(d_model + 3, 3) for _ in range(num_layers - 1)]
        )
        self.fc_pos_3d = nn.Sequential(
            nn.Linear(3, d_model), nn.LayerNorm(d_model), nn.ReLU(inplace=True), nn.Linear(d_model, d_model)
        )

    def _refine(self, idx: int, hs: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        if prev is None:
            return torch.sigmoid(self.joint_img_regress[idx](hs))
        logit = inverse_sigmoid(prev)
        return torch.sigmoid(logit + self.joint_img_regress[idx](torch.cat([hs, logit], dim=-1)))

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        volume: torch.Tensor,
        exponent: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode.

        Args:
            tgt, query_pos: `(3 + J, B, C)` query contents and positions.
            memory, pos: `(N, B, C)` encoder tokens and their positions.
            volume: `(B, C, D, H, W)` refined 3D feature volume.
            exponent: scalar depth exponent.

        Returns:
            `hs (L, 3, B, C)` SMPL tokens after every layer and `joint_img (B, J, 3)` in [0, 1].
        """
        n_smpl, n_mem = self.num_smpl_queries, memory.shape[0]
        intermediate: list[torch.Tensor] = []
        joint_img: torch.Tensor | None = None
        output = tgt
        for idx, layer in enumerate(self.layers):
            output = self.norm(layer(output, memory, pos, query_pos))
            intermediate.append(output[:n_smpl])
            joint_img = self._refine(idx, output[n_smpl:].transpose(0, 1), joint_img)
            grid = torch.cat([joint_img[..., :2] * 2 - 1, torch.pow(joint_img[..., 2:], exponent) * 2 - 1], dim=-1)
            sampled = F.grid_sample(volume, grid[:, None, None], mode="bilinear", align_corners=True)
            sampled = sampled[:, :, 0, 0].permute(2, 0, 1)  # (J, B, C)
            sampled_pos = self.fc_pos_3d(inverse_sigmoid(joint_img)).transpose(0, 1)
            memory = torch.cat([memory[:n_mem], sampled], dim=0)
            pos = torch.cat([pos[:n_mem], sampled_pos], dim=0)
        if joint_img is None:
            raise ValueError("JointDecoder needs at least one layer")
        return torch.stack(intermediate), joint_img


class Transformer(nn.Module):
    """DETR encoder (no final norm) + `JointDecoder`; learned query contents `smpl_tgt`, `kp_tgt`."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_encoder_layers: int,
        num_decoder_layers: int,
        dim_feedforward: int,
        num_smpl_queries: int,
        num_joint_queries: int,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(num_encoder_layers, d_model, nhead, dim_feedforward, final_norm=False)
        self.decoder = JointDecoder(num_decoder_layers, d_model, nhead, dim_feedforward, num_smpl_queries)
        self.smpl_tgt = nn.Parameter(torch.zeros(d_model))
        self.kp_tgt = nn.Parameter(torch.zeros(d_model))
        self.num_smpl_queries = num_smpl_queries
        self.num_joint_queries = num_joint_queries

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        volume: torch.Tensor,
        exponent: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`src`, `pos`: `(N, B, C)`; `query_pos`: `(3 + J, B, C)` → `(hs, joint_img)` of `JointDecoder`."""
        batch = src.shape[1]
        tgt = torch.cat(
            [
                self.smpl_tgt.expand(self.num_smpl_queries, batch, -1),
                self.kp_tgt.expand(self.num_joint_queries, batch, -1),
            ],
            dim=0,
        )
        memory = self.encoder(src, pos)
        hs, joint_img = self.decoder(tgt, memory, pos, query_pos, volume, exponent)
        return hs, joint_img

"""The diffusion backbone: VAE encoder → (ControlNet + LoRA-folded SD-1.5 UNet, one pass at t=1) → 2048×8×8.

Official path: common/vpd/vpdencoder_useattn.py:72-87, cldm/cldm.py:566-579, cldm/module_utils.py:163-255
(note §1.2-§1.3, §5).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from torch import nn

from dpmesh_core.config import DPMeshConfig, UNetConfig, VaeConfig
from dpmesh_core.models.attention_capture import ATTN8_LAYERS, ATTN16_LAYERS, averaged_map, install_capture
from dpmesh_core.models.forward_capture import ForwardCapture, capturing, current_capture, record


# Decoder outputs tapped as features (note §5.3 item 7): ldm output_blocks 1, 4, 7, 11.
FEATURE_TAPS: dict[str, str] = {
    "f4": "up_blocks.0.resnets.1",
    "f8": "up_blocks.1.attentions.1",
    "f16": "up_blocks.2.attentions.1",
    "f32": "up_blocks.3.attentions.2",
}


def keypoint_heatmaps(joints_xy: torch.Tensor, mask: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Gaussian keypoint heatmaps, zeroed for invalid joints (common/model.py:107-118, 160-167).

    Args:
        joints_xy: `(B, J, 2)` keypoints in heatmap pixels (x, y).
        mask: `(B, J, 1)` 1 for valid joints.
        size: heatmap side (32).
        sigma: Gaussian std in heatmap pixels (2.5).

    Returns:
        `(B, J, size, size)`; `heatmap[b, j, y, x] = exp(-((x-u)/σ)²/2 - ((y-v)/σ)²/2) · mask`.
    """
    grid = torch.arange(size, device=joints_xy.device, dtype=joints_xy.dtype)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    u = joints_xy[:, :, 0, None, None]
    v = joints_xy[:, :, 1, None, None]
    heatmap = torch.exp(-(((xx - u) / sigma) ** 2) / 2 - (((yy - v) / sigma) ** 2) / 2)
    return heatmap * mask[:, :, :, None]


class ZeroConditioningEmbedding(nn.Module):
    """Stands in for diffusers' `controlnet_cond_embedding`: DPMesh's ControlNet has no hint block.

    The keypoint heatmaps enter through the 34-channel `conv_in` instead (cldm/cldm.py:223, 388), so the term that
    diffusers adds after `conv_in` must be exactly zero.
    """

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        return conditioning.new_zeros(())


def build_vae_encoder(cfg: VaeConfig) -> Any:
    """SD VAE with the decoder removed (vpdencoder_useattn.py:52): only `encoder` and `quant_conv` remain."""
    n = len(cfg.block_out_channels)
    vae: Any = AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        use_post_quant_conv=False,
    )
    del vae.decoder
    return vae


def _unet_kwargs(cfg: UNetConfig) -> dict[str, Any]:
    return {
        "block_out_channels": cfg.block_out_channels,
        "layers_per_block": cfg.layers_per_block,
        "attention_head_dim": cfg.attention_head_dim,
        "cross_attention_dim": cfg.cross_attention_dim,
        "norm_num_groups": cfg.norm_num_groups,
    }


def build_unet(cfg: UNetConfig, latent_channels: int) -> Any:
    """SD-1.5 `UNet2DConditionModel` (default block types, flip_sin_to_cos, freq_shift 0)."""
    return UNet2DConditionModel(  # type: ignore[no-untyped-call]
        in_channels=latent_channels, out_channels=latent_channels, **_unet_kwargs(cfg)
    )


def build_controlnet(cfg: UNetConfig, in_channels: int) -> Any:
    """SD-1.5 ControlNet with an `in_channels`-wide `conv_in` (latent + heatmaps) and no conditioning embedding."""
    controlnet: Any = ControlNetModel(  # type: ignore[no-untyped-call]
        in_channels=in_channels, **_unet_kwargs(cfg)
    )
    controlnet.controlnet_cond_embedding = ZeroConditioningEmbedding()
    return controlnet


class FeatureFusion(nn.Module):
    """Fuses the 4 taps + attention maps to `(B, out, 8, 8)` (vpdencoder_useattn.py:15-34, 81-87).

    Parameter names follow the official `backbone.outmodules.*` keys.
    """

    def __init__(self, c32: int, c16: int, c8: int, c4: int, num_maps: int, out_channels: int) -> None:
        super().__init__()
        c16a = c16 + num_maps
        self.outmodules = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(c32, c32, 3, stride=2, padding=1),
                    nn.GroupNorm(16, c32),
                    nn.ReLU(),
                    nn.Conv2d(c32, c32, 3, stride=2, padding=1),
                ),
                nn.Sequential(nn.Conv2d(c16a, c16a, 3, stride=2, padding=1)),
                nn.Sequential(
                    nn.Conv2d(c32 + c16a + c8 + num_maps + c4, out_channels, 1),
                    nn.GroupNorm(16, out_channels),
                    nn.ReLU(),
                ),
            ]
        )

    def forward(self, f32: torch.Tensor, f16a: torch.Tensor, f8a: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        """`f32 (B,c32,32,32)`, `f16a (B,c16+M,16,16)`, `f8a (B,c8+M,8,8)`, `f4 (B,c4,4,4)` → `(B,out,8,8)`."""
        deep = torch.cat([f8a, F.interpolate(f4, scale_factor=2)], dim=1)  # nearest, as the official default
        fused: torch.Tensor = self.outmodules[2](
            torch.cat([self.outmodules[0](f32), self.outmodules[1](f16a), deep], dim=1)
        )
        return fused


class _Tap:
    """Forward hook handing a module's output to the running pass: `ForwardCapture.taps[name]` (call-local).

    An object rather than a closure so that `copy.deepcopy(backbone)` copies it with the hooked module.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        tap = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        current_capture(f"feature tap {self.name}").taps[self.name] = tap


class DPMeshBackbone(nn.Module):
    """Image + keypoints → fused feature map.

    Submodules: `vae` (encoder + quant_conv), `controlnet`, `unet` (LoRA folded), `kp_lifting` (keypoint tokens),
    `fusion`. A pass keeps no state on the modules: its attention maps and taps live in a call-local
    `ForwardCapture`, so one backbone serves concurrent callers. Intermediates (`latent`, `heatmap`, `context`, the
    taps, `f16a`, `f8a`, `ctrl_*`, `attn:<layer>` maps) go to an active `forward_capture.record_intermediates()`.
    """

    def __init__(self, config: DPMeshConfig) -> None:
        super().__init__()
        self.config = config
        ucfg = config.unet
        latent = config.vae.latent_channels
        self.vae: Any = build_vae_encoder(config.vae)
        self.controlnet: Any = build_controlnet(ucfg, latent + config.num_input_joints)
        self.unet: Any = build_unet(ucfg, latent)
        self.kp_lifting = nn.Linear(2, ucfg.cross_attention_dim)
        c0, c1, c2, c3 = ucfg.block_out_channels
        self.fusion = FeatureFusion(c0, c1, c2, c3, config.num_input_joints, config.head.backbone_out_channels)
        install_capture(self.unet)
        modules = dict(self.unet.named_modules())
        for name, path in FEATURE_TAPS.items():
            modules[path].register_forward_hook(_Tap(name))

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """`(B,3,H,W)` in [0,1] → posterior mean `(B,4,H/8,W/8)`; no [-1,1] rescale, no 0.18215 (note §0.1-2)."""
        moments: torch.Tensor = self.vae.quant_conv(self.vae.encoder(images))
        return moments[:, : self.config.vae.latent_channels]

    def forward(self, images: torch.Tensor, joints_xy: torch.Tensor, joints_mask: torch.Tensor) -> torch.Tensor:
        """Run the backbone.

        Args:
            images: `(B, 3, S, S)` RGB in [0, 1], S = `config.image_size` (official 256).
            joints_xy: `(B, 30, 2)` keypoints in G-grid units, G = `config.heatmap_size` (official 32: crop px / 8).
            joints_mask: `(B, 30, 1)` 1 = valid.

        Returns:
            `(B, C, S/32, S/32)` fused features (official: C = 2048, 8 × 8).
        """
        cfg = self.config
        # 1. keypoint conditioning: heatmaps for the ControlNet input, tokens for cross-attention (both nets)
        # (the `.to(images.dtype)` casts are no-ops in the fp32 path; the fast path feeds fp32 keypoints with
        # half-precision images, so heatmaps are computed in fp32 and rounded once)
        heatmap = keypoint_heatmaps(joints_xy, joints_mask, cfg.heatmap_size, cfg.heatmap_sigma).to(images.dtype)
        context = self.kp_lifting((joints_xy / cfg.heatmap_size).to(images.dtype))
        # 2. clean latent, single pass at t=1: no noise, no text (vpdencoder_useattn.py:74-80)
        latent = self.encode_latents(images)
        t = torch.full((images.shape[0],), cfg.timestep, dtype=torch.long, device=images.device)
        down, mid = self.controlnet(
            torch.cat([latent, heatmap], dim=1),
            t,
            encoder_hidden_states=context,
            controlnet_cond=heatmap,
            return_dict=False,
        )
        # the UNet's capture processors and tap hooks write into this pass's own capture (never into a module)
        with capturing(ForwardCapture()) as capture:
            self.unet(
                latent,
                t,
                encoder_hidden_states=context,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            )
        # 3. taps + averaged keypoint attention maps → fused features
        size = latent.shape[-1]
        taps = capture.taps
        attn16 = averaged_map(capture.maps, ATTN16_LAYERS, size // 2).to(images.dtype)  # fp32 maps in the fast path
        attn8 = averaged_map(capture.maps, ATTN8_LAYERS, size // 4).to(images.dtype)
        f16a = torch.cat([taps["f16"], attn16], dim=1)
        f8a = torch.cat([taps["f8"], attn8], dim=1)
        feat: torch.Tensor = self.fusion(taps["f32"], f16a, f8a, taps["f4"])
        record(latent=latent, heatmap=heatmap, context=context, f32=taps["f32"], f16a=f16a, f8a=f8a, f4=taps["f4"],
               ctrl_mid=mid, **{f"ctrl_{i:02d}": d for i, d in enumerate(down)},
               **{f"attn:{layer}": m for layer, m in capture.maps.items()})  # fmt: skip
        return feat

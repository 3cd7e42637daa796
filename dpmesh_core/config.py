"""Architecture hyperparameters of DPMesh in one place: the official configuration and a tiny one.

Both configurations build the *same* module tree (same number of UNet blocks, the same 10 captured
cross-attention layers, the same 4 decoder taps); only widths, depths of non-structural parts and the crop size
differ. The crop and keypoint-grid sizes live here only (`DPMeshConfig.image_size` / `heatmap_size`):
pre-processing, post-processing and the flip test read them through `DPMeshConfig.crop_geometry`, so a model and
its inputs cannot disagree on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VaeConfig:
    """The SD VAE encoder (only `encoder` + `quant_conv` are used)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32


@dataclass(frozen=True)
class UNetConfig:
    """The SD-1.5 UNet and its ControlNet twin (same widths, `in_channels` differs for the ControlNet)."""

    block_out_channels: tuple[int, int, int, int] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int = 8  # diffusers' SD-1.5 quirk: this is the number of heads
    cross_attention_dim: int = 768
    norm_num_groups: int = 32


@dataclass(frozen=True)
class HeadConfig:
    """The JOTR-style head: 3D volume, refine encoder, DETR encoder/decoder, cascade heads."""

    backbone_out_channels: int = 2048
    d_model: int = 256
    nhead: int = 8
    num_encoder_layers: int = 2
    num_decoder_layers: int = 4
    dim_feedforward: int = 2048
    refine_dim_feedforward: int = 1024
    volume_depth: int = 8
    num_joint_queries: int = 15
    num_smpl_queries: int = 3
    pose_latent_dim: int = 32
    num_betas: int = 10


@dataclass(frozen=True)
class VPoserConfig:
    """VPoser v1.0 decoder (latent 32, 512 hidden units, 21 joints in continuous 6D)."""

    latent_dim: int = 32
    num_neurons: int = 512
    num_joints: int = 21


@dataclass(frozen=True)
class CropGeometry:
    """The square person crop a model sees and the keypoint grid laid over it (from `DPMeshConfig.crop_geometry`).

    Attributes:
        crop_size: crop side, px (official 256).
        heatmap_size: side of the keypoint grid (official 32); a keypoint at crop px `p` sits at grid
            coordinate `p / crop_size * heatmap_size` (official: px / 8).
    """

    crop_size: int
    heatmap_size: int


@dataclass(frozen=True)
class DPMeshConfig:
    """All architecture hyperparameters of DPMesh.

    Constants of the official inference path (common/utils config.py and configs/main_train.yml) are kept here
    too, so that nothing numeric is hidden in the forward code.
    """

    vae: VaeConfig = field(default_factory=VaeConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    vposer: VPoserConfig = field(default_factory=VPoserConfig)
    num_input_joints: int = 30
    image_size: int = 256
    heatmap_size: int = 32
    heatmap_sigma: float = 2.5
    camera_3d_size: float = 2.5
    timestep: int = 1

    def __post_init__(self) -> None:
        if self.image_size % self.heatmap_size != 0:
            raise ValueError(f"image_size={self.image_size} must be a multiple of heatmap_size={self.heatmap_size}")
        # The heatmaps are concatenated with the VAE latent at the ControlNet input, so they share its side.
        latent = self.latent_size
        if self.heatmap_size != latent:
            raise ValueError(
                f"heatmap_size={self.heatmap_size} must equal the latent side image_size / 2^(VAE blocks - 1) = "
                f"{latent}: the keypoint heatmaps are concatenated with the latent"
            )
        # The fused features are 1/4 of the latent side; the head's volume is depth x H x W tokens with one
        # positional table of depth^3 entries, so its depth equals that side.
        if self.head.volume_depth != latent // 4:
            raise ValueError(
                f"head.volume_depth={self.head.volume_depth} must equal the fused feature side latent / 4 = "
                f"{latent // 4}"
            )
        if len(self.unet.block_out_channels) != 4:
            raise ValueError(
                f"unet.block_out_channels={self.unet.block_out_channels} must have 4 entries: the 4 decoder "
                "taps and the 10 captured attention layers are defined on the SD-1.5 block structure"
            )
        if self.unet.layers_per_block != 2:
            raise ValueError(f"unet.layers_per_block={self.unet.layers_per_block} must be 2 (SD-1.5 structure)")

    @property
    def latent_size(self) -> int:
        """Side of the VAE latent: `image_size` / 2^(VAE blocks - 1) (official 256 / 8 = 32)."""
        downsampling = 1 << (len(self.vae.block_out_channels) - 1)  # each VAE block but the last halves the side
        return self.image_size // downsampling

    @property
    def crop_geometry(self) -> CropGeometry:
        """The crop and keypoint-grid sizes that pre- and post-processing must use with this model."""
        return CropGeometry(crop_size=self.image_size, heatmap_size=self.heatmap_size)

    @property
    def fused_channels(self) -> int:
        """Channels entering the 1×1 fusion conv: [f32 | f16+attn16 | f8+attn8 | up(f4)] (official 3580)."""
        c0, c1, c2, c3 = self.unet.block_out_channels
        return c0 + (c1 + self.num_input_joints) + (c2 + self.num_input_joints) + c3

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPMeshConfig:
        """Inverse of `to_dict`; unknown keys raise `ValueError` naming them."""
        sub = {"vae": VaeConfig, "unet": UNetConfig, "head": HeadConfig, "vposer": VPoserConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DPMeshConfig keys: {unknown}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name in sub:
                kwargs[name] = sub[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            else:
                kwargs[name] = value
        return cls(**kwargs)


def official_config() -> DPMeshConfig:
    """The configuration of the released DPMesh checkpoints (SD-1.5 widths, enc 2 / dec 4 layers)."""
    return DPMeshConfig()


def tiny_config() -> DPMeshConfig:
    """Same structure as `official_config` at small widths, for tests and demos with random weights.

    Crops are 128² (keypoint grid and latent 16², fused features 4², head volume 4³) instead of 256²: every layer
    still runs, at 1/4 of the pixels, which are most of the CPU cost of a forward. (At 64² the random tiny head
    is so ill-conditioned that fp32 kernel differences reach 1e-3 m: too coarse for the precision tests.)
    """
    return DPMeshConfig(
        vae=VaeConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8),
        unet=UNetConfig(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, norm_num_groups=32),
        head=HeadConfig(
            backbone_out_channels=64,
            d_model=32,
            nhead=4,
            dim_feedforward=64,
            refine_dim_feedforward=64,
            volume_depth=4,
        ),
        vposer=VPoserConfig(num_neurons=32),
        image_size=128,
        heatmap_size=16,
    )

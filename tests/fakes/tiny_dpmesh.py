"""The tiny DPMesh used by the tests: seeded, with its zero-initialised layers given small random values."""

from __future__ import annotations

import dataclasses

import torch

from dpmesh_core.config import DPMeshConfig, tiny_config
from dpmesh_core.model import DPMesh


def tiny_config_at_official_crop() -> DPMeshConfig:
    """The tiny widths at the official 256² crop (32-grid, head volume 8³): the tiny model before its crops were
    made smaller, kept for tests whose error bounds were measured on it (random weights amplify rounding
    differently at other sizes)."""
    cfg = tiny_config()
    head = dataclasses.replace(cfg.head, volume_depth=8)
    return dataclasses.replace(cfg, image_size=256, heatmap_size=32, head=head)


def build_tiny_dpmesh(seed: int = 0, config: DPMeshConfig | None = None) -> DPMesh:
    """Tiny config (or `config`), random weights; zero-initialised tensors (ControlNet zero convs, ...) are redrawn
    so that every path (ControlNet residuals included) contributes to the outputs."""
    model = DPMesh.tiny(seed=seed, config=config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.ndim >= 2 and not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model


def tiny_inputs(batch: int = 2, seed: int = 0, config: DPMeshConfig | None = None) -> dict[str, torch.Tensor]:
    """Random model inputs in the documented units, sized for `config` (default: `tiny_config()`, 128² crops and
    a 16-grid; pass `official_config()` for 256² crops and the 32-grid)."""
    cfg = config or tiny_config()
    grid = float(cfg.heatmap_size)
    gen = torch.Generator().manual_seed(seed)
    joints = torch.rand(batch, 30, 3, generator=gen) * torch.tensor([grid, grid, 1.0])
    mask = (torch.rand(batch, 30, 1, generator=gen) > 0.3).float()
    return {
        "images": torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=gen),
        "joints": joints,
        "joints_mask": mask,
        "focal": torch.full((batch,), 1200.0),
    }

"""The tiny DPMesh used by the tests: seeded, with its zero-initialised layers given small random values."""

from __future__ import annotations

import torch

from dpmesh_core.model import DPMesh


def build_tiny_dpmesh(seed: int = 0) -> DPMesh:
    """Tiny config, random weights; zero-initialised tensors (ControlNet zero convs, ...) are redrawn so that
    every path (ControlNet residuals included) contributes to the outputs."""
    model = DPMesh.tiny(seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.ndim >= 2 and not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model


def tiny_inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random model inputs in the documented units."""
    gen = torch.Generator().manual_seed(seed)
    joints = torch.rand(batch, 30, 3, generator=gen) * torch.tensor([32.0, 32.0, 1.0])
    mask = (torch.rand(batch, 30, 1, generator=gen) > 0.3).float()
    return {
        "images": torch.rand(batch, 3, 256, 256, generator=gen),
        "joints": joints,
        "joints_mask": mask,
        "focal": torch.full((batch,), 1200.0),
    }

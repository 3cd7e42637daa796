"""Pickle-free `save_pretrained` / `from_pretrained`: `config.json` + `model.safetensors` + `smpl.safetensors`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dpmesh_core.body_model import SMPLData
from dpmesh_core.checkpoint import load_network_strict
from dpmesh_core.config import DPMeshConfig


if TYPE_CHECKING:
    from dpmesh_core.model import DPMesh

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SMPL_NAME = "smpl.safetensors"
FORMAT_VERSION = 1


def save_pretrained(model: DPMesh, directory: str | os.PathLike[str]) -> None:
    """Write the model into `directory` (created if needed); tensors are saved contiguous, in their dtype."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    network = {k: v.detach().contiguous().cpu() for k, v in model.network_state_dict().items()}
    save_file(network, str(out / WEIGHTS_NAME), metadata={"format": "dpmesh", "model_id": model.model_id})
    smpl = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.body_model.data.to_arrays().items()}
    save_file(smpl, str(out / SMPL_NAME))
    meta = {"format_version": FORMAT_VERSION, "model_id": model.model_id, "architecture": model.config.to_dict()}
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_pretrained(
    directory: str | os.PathLike[str], *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> DPMesh:
    """Read a folder written by `save_pretrained`; strict (missing/unexpected keys raise, naming them)."""
    from dpmesh_core.model import DPMesh

    root = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME, SMPL_NAME):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} not found: expected a folder written by DPMesh.save_pretrained")
    meta = json.loads((root / CONFIG_NAME).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root / CONFIG_NAME}: format_version {meta.get('format_version')!r} != {FORMAT_VERSION}")
    config = DPMeshConfig.from_dict(meta["architecture"])
    smpl = SMPLData.from_arrays({k: v.numpy() for k, v in load_file(str(root / SMPL_NAME)).items()})
    model = DPMesh(config, smpl, network_device="meta")
    load_network_strict(model, load_file(str(root / WEIGHTS_NAME)), assign=True)
    model.model_id = str(meta.get("model_id", ""))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

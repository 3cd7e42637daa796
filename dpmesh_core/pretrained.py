"""The pickle-free folder format of converted weights: `config.json` + `model.safetensors` + `smpl.safetensors`.

Files only: `write_pretrained` / `read_pretrained` move a config, a network state dict and the SMPL arrays in and
out of a folder. Building the model from them is `dpmesh_core.loading` (`DPMesh.from_pretrained`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dpmesh_core.body_model import SMPLData
from dpmesh_core.config import DPMeshConfig


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SMPL_NAME = "smpl.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PretrainedFolder:
    """What a folder written by `write_pretrained` holds.

    Attributes:
        config: the architecture.
        network: the network state dict (body model excluded), tensors as saved (CPU).
        smpl: the SMPL arrays of the body model.
        model_id: the checkpoint's content hash recorded at conversion ("" if none).
    """

    config: DPMeshConfig
    network: dict[str, torch.Tensor]
    smpl: SMPLData
    model_id: str


def write_pretrained(
    directory: str | os.PathLike[str],
    *,
    config: DPMeshConfig,
    network: Mapping[str, torch.Tensor],
    smpl: SMPLData,
    model_id: str,
) -> None:
    """Write the folder (created if needed); tensors are saved contiguous, on CPU, in their dtype."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in network.items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "dpmesh", "model_id": model_id})
    arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in smpl.to_arrays().items()}
    save_file(arrays, str(out / SMPL_NAME))
    meta = {"format_version": FORMAT_VERSION, "model_id": model_id, "architecture": config.to_dict()}
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_pretrained(directory: str | os.PathLike[str]) -> PretrainedFolder:
    """Read a folder written by `write_pretrained`.

    Raises:
        FileNotFoundError: a file of the format is missing.
        ValueError: unknown `format_version`, or unknown architecture keys.
    """
    root = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME, SMPL_NAME):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} not found: expected a folder written by DPMesh.save_pretrained")
    meta = json.loads((root / CONFIG_NAME).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root / CONFIG_NAME}: format_version {meta.get('format_version')!r} != {FORMAT_VERSION}")
    return PretrainedFolder(
        config=DPMeshConfig.from_dict(meta["architecture"]),
        network=load_file(str(root / WEIGHTS_NAME)),
        smpl=SMPLData.from_arrays({k: v.numpy() for k, v in load_file(str(root / SMPL_NAME)).items()}),
        model_id=str(meta.get("model_id", "")),
    )

"""Loading and saving DPMesh weights in one place, shaped like diffusers' `ModelMixin`.

`DPMeshLoadingMixin` gives the model class `from_official_checkpoint`, `from_pretrained` and `save_pretrained`.
The classmethods build `cls(config, smpl, network_device="meta")` and never name the model class, so imports run
one way: `dpmesh_core.model` imports this module, which imports only the pure pieces (`dpmesh_core.checkpoint`:
reading and converting official state dicts; `dpmesh_core.pretrained`: the safetensors folder format).

Both loaders build the network on the meta device and assign the loaded tensors, so peak memory stays near one
copy of the weights; both are strict (a missing or unexpected key raises, naming it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Mapping

import torch
from torch import nn

from dpmesh_core.body_model import BodyModel, SMPLData
from dpmesh_core.checkpoint import convert_official_state_dict, read_official_state, smpl_from_official_state
from dpmesh_core.config import DPMeshConfig, official_config
from dpmesh_core.errors import CheckpointKeyError
from dpmesh_core.models.backbone import DPMeshBackbone
from dpmesh_core.pretrained import read_pretrained, write_pretrained


if sys.version_info >= (3, 11):
    from typing import Self
else:  # typing_extensions comes with torch
    from typing_extensions import Self


logger = logging.getLogger(__name__)

BODY_MODEL_PREFIX = "body_model."


class DPMeshLoadingMixin(nn.Module):
    """Weights loading and saving for the model class that inherits it (`DPMesh`).

    Contract with that class: it is built as `cls(config, smpl, network_device=...)` (`network_device="meta"`
    builds the network without allocating it) and has the attributes declared below; its body model lives under
    `body_model.` and is saved as SMPL arrays, not as network weights.
    """

    config: DPMeshConfig
    model_id: str
    backbone: DPMeshBackbone
    body_model: BodyModel

    @classmethod
    def from_official_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        smpl: SMPLData | None = None,
        config: DPMeshConfig | None = None,
        compute_model_id: bool = True,
    ) -> Self:
        """Load a released `*_best_ckpt.pth.tar` (`dpmesh_core.checkpoint` documents the conversion).

        Args:
            path: checkpoint file (read with `torch.load(weights_only=True, mmap=True)`).
            device, dtype: target placement.
            smpl: SMPL arrays; default: the checkpoint's `human_model_layer.th_*` buffers.
            config: architecture; default: `official_config()`.
            compute_model_id: set `model_id` from the sha256 of the file.

        Raises:
            CheckpointKeyError: a key neither used nor ignored, a missing key, or missing SMPL buffers (named).
        """
        flat = read_official_state(path)
        model = cls(config or official_config(), smpl or smpl_from_official_state(flat), network_device="meta")
        converted = convert_official_state_dict(flat, model.backbone)
        load_network_strict(model, converted.network, assign=True)
        leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if leftover:
            raise CheckpointKeyError(f"tensors not initialised by the checkpoint: {leftover[:20]}")
        logger.info("loaded %s: %d tensors, %d ignored keys", path, len(converted.network), len(converted.ignored))
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if compute_model_id:
            model.model_id = "sha256:" + file_sha256(path)[:16]
        return model

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Self:
        """Load a folder written by `save_pretrained` (safetensors + config.json, no pickle); strict."""
        folder = read_pretrained(directory)
        model = cls(folder.config, folder.smpl, network_device="meta")
        load_network_strict(model, folder.network, assign=True)
        model.model_id = folder.model_id
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write `config.json`, `model.safetensors` and `smpl.safetensors` into `directory` (created if needed)."""
        write_pretrained(
            directory,
            config=self.config,
            network=self.network_state_dict(),
            smpl=self.body_model.data,
            model_id=self.model_id,
        )

    def network_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the body model (whose arrays are saved separately as `SMPLData`)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(BODY_MODEL_PREFIX)}


def load_network_strict(model: nn.Module, network: Mapping[str, torch.Tensor], *, assign: bool) -> None:
    """Load `network` into `model` (body model excluded); any missing or unexpected key raises, naming it."""
    expected = {k for k in model.state_dict() if not k.startswith(BODY_MODEL_PREFIX)}
    missing = sorted(expected - set(network))
    unexpected = sorted(set(network) - expected)
    if missing or unexpected:
        raise CheckpointKeyError(
            f"checkpoint does not match the architecture: missing {missing[:20]} (total {len(missing)}), "
            f"unexpected {unexpected[:20]} (total {len(unexpected)})"
        )
    model.load_state_dict(dict(network), strict=False, assign=assign)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()

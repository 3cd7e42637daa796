"""Reading and converting official DPMesh checkpoints (`*_best_ckpt.pth.tar`, note §4-§5): state dicts only.

Recipe: strip `module.`; keep one alias of the ControlLDM (`backbone.sd_model.*`); fold every LoRA triple; convert
the UNet, ControlNet and VAE with diffusers' own LDM converters; rename head/VPoser keys. A key that is neither used
nor on the documented ignore list is an error that names it. Nothing here builds or fills a model: conversion is
state dict in, state dict out, and `dpmesh_core.loading` loads the result strictly (a missing key is an error
there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

from dpmesh_core.body_model import SMPLData
from dpmesh_core.errors import CheckpointKeyError
from dpmesh_core.models.backbone import DPMeshBackbone


LDM_PREFIX = "backbone.sd_model."
UNET_PREFIX = "model.diffusion_model."
CONTROLNET_PREFIX = "control_model."
VAE_PREFIX = "first_stage_model."
# Documented ignore list: (prefix, why). Everything else must be consumed.
IGNORED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("backbone.unet.unet.", "alias of backbone.sd_model (UNetWrapper holds the same ControlLDM)"),
    ("backbone.encoder_vq.", "alias of backbone.sd_model.first_stage_model"),
    ("backbone.sd_model.cond_stage_model.", "CLIP text encoder, never called (incl. position_ids)"),
    ("backbone.sd_model.first_stage_model.post_quant_conv.", "VAE decoder side, unused"),
    ("backbone.sd_model.first_stage_model.decoder.", "VAE decoder, deleted in the official model"),
    ("vposer.vposer.bodyprior_enc_", "VPoser encoder and its BatchNorm buffers, unused at inference"),
    ("human_model_layer.th_betas", "default betas buffer of smplpytorch, unused"),
)
SCHEDULE_BUFFERS: tuple[str, ...] = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
)  # fmt: skip
IGNORED_KEYS: frozenset[str] = frozenset(LDM_PREFIX + name for name in SCHEDULE_BUFFERS)
SMPL_PREFIX = "human_model_layer."
VPOSER_PREFIX = "vposer.vposer."
# Official head key → our name (the head lives under `head.` in our module tree).
HEAD_RENAMES: dict[str, str] = {"cascade_shaoe_out.": "cascade_shape_out."}
HEAD_PREFIXES: tuple[str, ...] = (
    "down_linear.", "transformer.", "pos_embed_1d.", "spose_shape_cam_param", "query.", "cascade_root_pose_out.",
    "cascade_pose_out.", "cascade_shaoe_out.", "cascade_cam_out.", "conv2d_to_3d.", "exponent", "conv_3d_coord.",
    "refine_3d.",
)  # fmt: skip


def is_ignored(key: str) -> bool:
    """True if `key` (without `module.`) is on the documented ignore list."""
    return key in IGNORED_KEYS or any(key.startswith(prefix) for prefix, _ in IGNORED_PREFIXES)


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the DDP `module.` prefix (train.py:311 saves the wrapped model)."""
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


@dataclass
class Provenance:
    """Which source keys produced each intermediate tensor (tracked by object identity)."""

    sources: dict[int, list[str]] = field(default_factory=dict)
    keep_alive: list[torch.Tensor] = field(default_factory=list)

    def add(self, tensor: torch.Tensor, keys: Iterable[str]) -> None:
        self.sources.setdefault(id(tensor), []).extend(keys)
        self.keep_alive.append(tensor)

    def consumed(self, tensors: Iterable[torch.Tensor]) -> set[str]:
        """Source keys behind `tensors` (a tensor counts through itself or the tensor it is a view of)."""
        used: set[str] = set()
        for t in tensors:
            for candidate in (t, t._base):
                if candidate is not None:
                    used.update(self.sources.get(id(candidate), ()))
        return used


def fold_lora(state: Mapping[str, torch.Tensor], prov: Provenance) -> dict[str, torch.Tensor]:
    """Fold every cloneofsimo LoRA triple: `X.weight = X.linear.weight + X.lora_up.weight @ X.lora_down.weight`.

    `X.linear.bias` becomes `X.bias` (LoRA scale 1.0, lora.py:32-58). Generic: any key `X.lora_up.weight`.
    """
    out: dict[str, torch.Tensor] = {}
    lora_keys = {k for k in state if ".lora_up." in k or ".lora_down." in k or ".linear." in k}
    bases = sorted(k[: -len(".lora_up.weight")] for k in state if k.endswith(".lora_up.weight"))
    folded: set[str] = set()
    for base in bases:
        parts = {n: f"{base}.{n}" for n in ("lora_up.weight", "lora_down.weight", "linear.weight")}
        missing = [k for k in parts.values() if k not in state]
        if missing:
            raise CheckpointKeyError(f"incomplete LoRA triple for {base!r}: missing {missing}")
        up, down, linear = (state[parts[n]] for n in ("lora_up.weight", "lora_down.weight", "linear.weight"))
        weight = linear + (up.to(torch.float32) @ down.to(torch.float32)).to(linear.dtype)
        out[f"{base}.weight"] = weight
        prov.add(weight, parts.values())
        folded.update(parts.values())
        if f"{base}.linear.bias" in state:
            out[f"{base}.bias"] = state[f"{base}.linear.bias"]
            folded.add(f"{base}.linear.bias")
    for key, value in state.items():
        if key not in folded:
            if key in lora_keys and (".lora_" in key):
                raise CheckpointKeyError(f"LoRA key without its triple: {key!r}")
            out[key] = value
    return out


def _subset(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _convert(fn: Callable[..., Any], subset: dict[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, Any]:
    converted = fn(subset, dict(config))
    # The ControlNet converter looks up hint-block keys with .get(): DPMesh has none (note §5.3 item 4).
    return {k: v for k, v in converted.items() if v is not None}


@dataclass
class ConvertedCheckpoint:
    """Result of `convert_official_state_dict`.

    Attributes:
        network: keys of `DPMesh.network_state_dict()` → tensors.
        smpl: `th_*` SMPL buffers (prefix removed).
        ignored: source keys dropped by the ignore list.
    """

    network: dict[str, torch.Tensor]
    smpl: dict[str, torch.Tensor]
    ignored: list[str]


def _rename_head(key: str) -> str:
    for old, new in HEAD_RENAMES.items():
        if key.startswith(old):
            key = new + key[len(old) :]
    return "head." + key


def convert_official_state_dict(state: Mapping[str, torch.Tensor], backbone: DPMeshBackbone) -> ConvertedCheckpoint:
    """Official flat state dict (with or without `module.`) → our key layout. Pure: `state` and `backbone` are only
    read; the converted tensors are the source tensors or new ones (folded LoRA, converter outputs).

    Args:
        state: the checkpoint's tensors (real, mmap'd or meta).
        backbone: the target architecture's backbone (any device, meta included); only the configs and key names
            of its diffusers modules are read.

    Raises:
        CheckpointKeyError: a key that is neither used nor ignored (named), or an incomplete LoRA triple.
    """
    flat = strip_module_prefix(state)
    prov = Provenance()
    for key, value in flat.items():
        prov.add(value, [key])
    ignored = sorted(k for k in flat if is_ignored(k))
    kept = {k: v for k, v in flat.items() if not is_ignored(k)}
    ldm = fold_lora({k[len(LDM_PREFIX) :]: v for k, v in kept.items() if k.startswith(LDM_PREFIX)}, _Prefixed(prov))
    network: dict[str, torch.Tensor] = {}
    for name, fn, prefix in (
        ("unet", convert_ldm_unet_checkpoint, UNET_PREFIX),
        ("controlnet", convert_controlnet_checkpoint, CONTROLNET_PREFIX),
        ("vae", convert_ldm_vae_checkpoint, VAE_PREFIX),
    ):
        module: Any = getattr(backbone, name)
        # Converted entries the module does not have (e.g. a hint block) are dropped here, so that their source
        # keys end up unused and are reported by name below.
        expected = set(module.state_dict())
        for key, value in _convert(fn, _subset(ldm, prefix), module.config).items():
            if key in expected:
                network[f"backbone.{name}.{key}"] = value
    smpl: dict[str, torch.Tensor] = {}
    for key, value in kept.items():
        if key.startswith("backbone.outmodules."):
            network["backbone.fusion." + key[len("backbone.") :]] = value
        elif key.startswith("kp_lifting."):
            network["backbone." + key] = value
        elif key.startswith(HEAD_PREFIXES):
            network[_rename_head(key)] = value
        elif key.startswith(VPOSER_PREFIX + "bodyprior_dec_"):
            network["vposer." + key[len(VPOSER_PREFIX) :]] = value
        elif key.startswith(SMPL_PREFIX):
            smpl[key[len(SMPL_PREFIX) :]] = value
    used = prov.consumed([*network.values(), *smpl.values()])
    unused = sorted(k for k in kept if k not in used)
    if unused:
        raise CheckpointKeyError(f"{len(unused)} checkpoint key(s) neither used nor on the ignore list: {unused[:20]}")
    return ConvertedCheckpoint(network=network, smpl=smpl, ignored=ignored)


class _Prefixed(Provenance):
    """Provenance view used while folding LoRA: source keys are recorded with the `backbone.sd_model.` prefix."""

    def __init__(self, base: Provenance) -> None:
        super().__init__(sources=base.sources, keep_alive=base.keep_alive)

    def add(self, tensor: torch.Tensor, keys: Iterable[str]) -> None:
        super().add(tensor, [LDM_PREFIX + k for k in keys])


SMPL_BUFFERS: tuple[str, ...] = (
    "th_v_template", "th_shapedirs", "th_posedirs", "th_J_regressor", "th_weights", "th_faces",
)  # fmt: skip


def read_official_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The checkpoint's flat state dict, `module.` stripped.

    Read with `torch.load(weights_only=True, mmap=True)`: no code execution, tensors paged in on demand.

    Raises:
        ValueError: the file does not hold a flat state dict.
    """
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a flat state dict, got {type(state).__name__}")
    return strip_module_prefix(state)


def smpl_from_official_state(flat: Mapping[str, torch.Tensor]) -> SMPLData:
    """The SMPL neutral arrays of a checkpoint's `human_model_layer.th_*` buffers (`flat`: `module.` stripped).

    Raises:
        CheckpointKeyError: a buffer is missing (then pass `smpl=SMPLData(...)` to the loader).
    """
    missing = [SMPL_PREFIX + n for n in SMPL_BUFFERS if SMPL_PREFIX + n not in flat]
    if missing:
        raise CheckpointKeyError(f"checkpoint lacks the SMPL buffers {missing}; pass smpl=SMPLData(...)")
    return SMPLData.from_checkpoint_buffers({n: flat[SMPL_PREFIX + n] for n in SMPL_BUFFERS})

"""Synthetic state dicts in the official DPMesh checkpoint layout (no real weights).

* `official_meta_state_dict()`: every key of `official_checkpoint_keys.tsv` as a meta tensor of the listed shape
  (zero storage) — drives the real loader over the full-size key set.
* `tiny_official_state_dict(model)`: the weights of a tiny `DPMesh` written back into the official layout
  (LDM names, LoRA triples, aliases, CLIP/schedule/VPoser-encoder extras), for end-to-end loading tests.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from dpmesh_core.checkpoint import convert_official_state_dict
from dpmesh_core.config import official_config
from dpmesh_core.model import DPMesh
from dpmesh_core.synthetic import synthetic_smpl_data


# Committed fixture (names, shapes, dtypes only; no weights): the issue asks for the manifest to live in the repo.
KEYS_TSV = Path(__file__).resolve().parents[1] / "fixtures" / "official_checkpoint_keys.tsv"
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def read_key_table(path: Path = KEYS_TSV) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Rows `(key, shape, dtype)` of the key table (comment and header lines skipped)."""
    rows = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        rows.append((key, dims, _DTYPES[dtype]))
    return rows


def official_meta_state_dict(path: Path = KEYS_TSV) -> dict[str, torch.Tensor]:
    """Full-size official key set, every tensor on the meta device; aliases share the tensor object."""
    rows = read_key_table(path)
    state: dict[str, torch.Tensor] = {}
    for key, shape, dtype in rows:
        state[key] = torch.empty(shape, dtype=dtype, device="meta")
    for key in list(state):
        for alias, target in (
            ("module.backbone.unet.unet.", "module.backbone.sd_model."),
            ("module.backbone.encoder_vq.", "module.backbone.sd_model.first_stage_model."),
        ):
            if key.startswith(alias):
                source = target + key[len(alias) :]
                if source in state:
                    state[key] = state[source]
    return state


def _lora_free(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every LoRA triple `X.{linear.weight, linear.bias, lora_up, lora_down}` by plain `X.weight/X.bias`."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".lora_up.weight")]:
        base = key[: -len(".lora_up.weight")]
        out[base + ".weight"] = torch.empty_like(state[base + ".linear.weight"])
        if base + ".linear.bias" in state:  # q/k/v projections have no bias
            out[base + ".bias"] = out.pop(base + ".linear.bias")
        for suffix in (".lora_up.weight", ".lora_down.weight", ".linear.weight"):
            del out[base + suffix]
    return out


def diffusers_to_ldm_names() -> dict[str, str]:
    """Our backbone keys (`backbone.{unet,controlnet,vae}.*`) → official key (with `module.`), found by tracing
    the real loader over the full-size (LoRA-free) meta key set (traced once per process: a few seconds)."""
    return dict(_traced_ldm_names())


@functools.cache
def _traced_ldm_names() -> dict[str, str]:
    state = _lora_free({k: v for k, v in official_meta_state_dict().items() if "backbone.sd_model." in k})
    model = DPMesh(official_config(), synthetic_smpl_data(), network_device="meta")
    converted = convert_official_state_dict(state, model.backbone)
    by_id = {id(v): k for k, v in state.items()}
    mapping = {}
    for key, value in converted.network.items():
        source = by_id.get(id(value)) or by_id.get(id(value._base))
        if source is None:
            raise AssertionError(f"cannot trace {key}")
        mapping[key] = source
    return mapping


_HEAD_BACK = {"head.cascade_shape_out.": "cascade_shaoe_out."}


def _official_name(key: str) -> str:
    if key.startswith("backbone.fusion."):
        return "module.backbone." + key[len("backbone.fusion.") :]
    if key.startswith("backbone.kp_lifting."):
        return "module." + key[len("backbone.") :]
    if key.startswith("vposer."):
        return "module.vposer.vposer." + key[len("vposer.") :]
    for ours, theirs in _HEAD_BACK.items():
        if key.startswith(ours):
            return "module." + theirs + key[len(ours) :]
    if key.startswith("head."):
        return "module." + key[len("head.") :]
    raise KeyError(key)


def _extras(model: DPMesh, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Non-network keys: CLIP, schedule, post_quant_conv, VPoser encoder (all ignored) and the SMPL buffers."""

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    ldm = "module.backbone.sd_model."
    latent = model.config.vae.latent_channels
    out = {ldm + "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(7)[None],
           ldm + "cond_stage_model.transformer.text_model.final_layer_norm.weight": rnd(8),
           ldm + "first_stage_model.post_quant_conv.weight": rnd(latent, latent, 1, 1),
           ldm + "first_stage_model.post_quant_conv.bias": rnd(latent),
           "module.vposer.vposer.bodyprior_enc_bn1.running_mean": rnd(63),
           "module.vposer.vposer.bodyprior_enc_bn1.num_batches_tracked": torch.tensor(0),
           "module.vposer.vposer.bodyprior_enc_fc1.weight": rnd(4, 63)}  # fmt: skip
    for name in ("betas", "alphas_cumprod", "logvar"):
        out[ldm + name] = rnd(10)
    smpl = model.body_model.data
    th = {"th_betas": torch.zeros(1, 10), "th_shapedirs": torch.from_numpy(smpl.shapedirs),
          "th_posedirs": torch.from_numpy(smpl.posedirs), "th_v_template": torch.from_numpy(smpl.v_template)[None],
          "th_J_regressor": torch.from_numpy(smpl.J_regressor), "th_weights": torch.from_numpy(smpl.weights),
          "th_faces": torch.from_numpy(smpl.faces)}  # fmt: skip
    out.update({"module.human_model_layer." + k: v for k, v in th.items()})
    return out


def tiny_official_state_dict(model: DPMesh, lora_rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights of `model` (any config with the SD block structure) in the official checkpoint layout.

    Backbone Linear layers that carry LoRA in the official file are split into `linear.weight + up @ down` with
    random rank-`lora_rank` factors, so loading exercises the fold. Aliases share tensors, as in the real file.
    """
    gen = torch.Generator().manual_seed(seed)
    official_shapes = {k: s for k, s, _ in read_key_table()}
    names = diffusers_to_ldm_names()
    out: dict[str, torch.Tensor] = {}
    for key, value in model.network_state_dict().items():
        value = value.detach().clone()
        if key not in names:
            out[_official_name(key)] = value
            continue
        ldm = names[key]
        if len(official_shapes.get(ldm, value.shape)) > value.ndim:  # VAE attention: 1x1 convs in LDM
            value = value.reshape(*value.shape, *([1] * (len(official_shapes[ldm]) - value.ndim)))
        base = ldm[: -len(".weight")] if ldm.endswith(".weight") else ""
        if base and base + ".linear.weight" in official_shapes:
            down = torch.randn(lora_rank, value.shape[1], generator=gen) * 0.1
            up = torch.randn(value.shape[0], lora_rank, generator=gen) * 0.1
            out.update({base + ".linear.weight": value - up @ down, base + ".lora_down.weight": down,
                        base + ".lora_up.weight": up})  # fmt: skip
        elif ldm.endswith(".bias") and ldm[: -len(".bias")] + ".linear.weight" in official_shapes:
            out[ldm[: -len(".bias")] + ".linear.bias"] = value
        else:
            out[ldm] = value
    out.update(_extras(model, gen))
    for key in [k for k in out if k.startswith("module.backbone.sd_model.")]:
        out["module.backbone.unet.unet." + key[len("module.backbone.sd_model.") :]] = out[key]
        if key.startswith("module.backbone.sd_model.first_stage_model."):
            out["module.backbone.encoder_vq." + key[len("module.backbone.sd_model.first_stage_model.") :]] = out[key]
    return out

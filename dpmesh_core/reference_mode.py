"""Execution of the official DPMesh code, rebuilt from our modules: the baseline of the GPU benchmark.

What the official test loop does per batch (eval.py:124, cldm/cldm.py:553, cldm/module_utils.py:27-90,
ldm/modules/attention.py:163-195), reproduced here:

* fp16 autocast around the whole forward, fp32 weights;
* LoRA *unfolded*: every LoRA'd UNet Linear computes `linear(x) + lora_up(lora_down(x))` at run time
  (cloneofsimo `LoraInjectedLinear`, r = 64, scale 1, dropout 0): `LoraInjectedLinear` below;
* explicit attention (materialised softmax probabilities) in every attention layer:
  UNet: the monkey-patched forward (`sim = q kᵀ · scale`, softmax, head mean computed for *every* layer, kept only
  for the captured ones, `probs · v`); ControlNet: ldm `CrossAttention` with `_ATTN_PRECISION = "fp32"` (q, k upcast,
  `sim` in fp32 outside autocast); VAE mid-block: the vanilla `AttnBlock` (the official environment.yaml installs no
  xformers, so ldm picks the explicit versions);
* eager execution, batch 12 (configs/main_train.yml:13).

One deviation: VPoser + SMPL (< 0.1 GFLOP of 514) run in fp32 after autocast (smplx rejects mixed dtypes).

The official code itself can be run beside the project (CPU, random weights, recorded I/O) with the tools in
`../shared/tools/official_reference/`; this module is the in-project stand-in used for timing on a GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch import nn

from dpmesh_core.config import DPMeshConfig
from dpmesh_core.model import DPMesh
from dpmesh_core.models.attention_capture import ATTN8_LAYERS, ATTN16_LAYERS, processor_name
from dpmesh_core.models.explicit_attention import ExplicitAttentionProcessor
from dpmesh_core.models.head import HeadOutput
from dpmesh_core.outputs import DPMeshOutput


LORA_SUFFIXES: tuple[str, ...] = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj",
)  # fmt: skip
LoraWeights = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # UNet module name → (lora_down (r×in), lora_up (out×r))


class LoraInjectedLinear(nn.Module):
    """cloneofsimo `lora_diffusion.lora.LoraInjectedLinear` at inference: `linear(x) + up(down(x)) · scale`."""

    def __init__(self, linear: nn.Linear, down: torch.Tensor, up: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.linear = linear
        self.lora_down = nn.Linear(down.shape[1], down.shape[0], bias=False, device=down.device, dtype=down.dtype)
        self.lora_up = nn.Linear(up.shape[1], up.shape[0], bias=False, device=up.device, dtype=up.dtype)
        with torch.no_grad():
            self.lora_down.weight.copy_(down)
            self.lora_up.weight.copy_(up)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x) + self.lora_up(self.lora_down(x)) * self.scale
        return out


def lora_targets(unet: nn.Module) -> dict[str, nn.Linear]:
    """The 144 (official widths) Linear layers of the UNet transformer blocks that carry LoRA (note §0.5)."""
    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, nn.Linear) and ".transformer_blocks." in name and name.endswith(LORA_SUFFIXES)
    }


def random_lora(
    unet: nn.Module, rank: int = 64, seed: int = 0, std: float = 0.02
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Random nonzero LoRA factors `(down, up)` for every target of `unet` (for tests and timing)."""
    gen = torch.Generator().manual_seed(seed)
    lora: dict[str, tuple[torch.Tensor, ...]] = {}
    for name, linear in lora_targets(unet).items():
        out_f, in_f = linear.weight.shape
        down = torch.randn(rank, in_f, generator=gen) / in_f**0.5
        up = torch.randn(out_f, rank, generator=gen) * std
        lora[name] = (down.to(linear.weight), up.to(linear.weight))
    return lora


def fold_lora_into(unet: nn.Module, lora: LoraWeights) -> None:
    """`W ← W + up @ down` in place (what `dpmesh_core.checkpoint.fold_lora` does to checkpoint tensors)."""
    targets = lora_targets(unet)
    with torch.no_grad():
        for name, (down, up) in lora.items():
            weight = targets[name].weight
            weight.add_((up.double() @ down.double()).to(weight.dtype))


def unfold_lora(unet: nn.Module, lora: LoraWeights) -> None:
    """Replace every folded target Linear by `LoraInjectedLinear(base, down, up)` with `base = W − up @ down`."""
    targets = lora_targets(unet)
    missing = sorted(set(targets) - set(lora))
    if missing:
        raise ValueError(f"no LoRA factors for {missing[:3]}... ({len(missing)} layers)")
    modules = dict(unet.named_modules())
    for name, linear in targets.items():
        down, up = lora[name]
        with torch.no_grad():
            linear.weight.sub_((up.double() @ down.double()).to(linear.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, LoraInjectedLinear(linear, down, up))


class ExplicitAttnProcessor(ExplicitAttentionProcessor):
    """Attention with materialised probabilities, as the official ldm code computes it (under fp16 autocast).

    Checks, projections, the head mean and the output step are the base's (`ExplicitAttentionProcessor`).

    Args:
        upcast_qk: compute `q kᵀ` and the softmax in fp32 with autocast off (ControlNet, `_ATTN_PRECISION="fp32"`).
        layer, keep_map: keep the head-averaged probabilities of the pass under `layer` (UNet capture layers).
        head_mean: compute the head mean even when not kept (the patched UNet forward does it for every layer).
    """

    def __init__(
        self,
        *,
        upcast_qk: bool = False,
        layer: str = "",
        keep_map: bool = False,
        head_mean: bool = False,
    ) -> None:
        super().__init__(layer=layer, keep_map=keep_map, head_mean=head_mean)
        self.upcast_qk = upcast_qk

    def attend(
        self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.upcast_qk:
            with torch.autocast(device_type=query.device.type, enabled=False):
                sim = torch.bmm(query.float(), key.float().transpose(1, 2)) * attn.scale
        else:
            sim = torch.bmm(query, key.transpose(1, 2)) * attn.scale
        probs = sim.softmax(dim=-1)
        return probs, torch.bmm(probs.to(value.dtype), value)


def install_explicit_attention(model: DPMesh) -> None:
    """Explicit attention in every attention layer of the UNet (capture layers keep their maps), ControlNet, VAE."""
    backbone = model.backbone
    captured = {processor_name(layer): layer for layer in ATTN16_LAYERS + ATTN8_LAYERS}
    unet_procs: dict[str, ExplicitAttnProcessor] = {}
    for name in backbone.unet.attn_processors:
        layer = captured.get(name, "")
        unet_procs[name] = ExplicitAttnProcessor(layer=layer, keep_map=bool(layer), head_mean=True)
    backbone.unet.set_attn_processor(unet_procs)
    backbone.controlnet.set_attn_processor(ExplicitAttnProcessor(upcast_qk=True))
    backbone.vae.set_attn_processor(AttnProcessor())


class ReferenceDPMesh(nn.Module):
    """`DPMesh` executed as the official code executes it (see the module docstring). Same forward contract."""

    def __init__(self, model: DPMesh, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype

    @property
    def config(self) -> DPMeshConfig:
        """The wrapped model's architecture (its crop size sizes the inputs)."""
        return self.model.config

    def forward(
        self, images: torch.Tensor, joints: torch.Tensor, joints_mask: torch.Tensor, focal: torch.Tensor
    ) -> DPMeshOutput:
        model = self.model
        model.check_crop_size(images)
        enabled = self.autocast_dtype is not None
        with torch.autocast(images.device.type, dtype=self.autocast_dtype or torch.float16, enabled=enabled):
            feat = model.backbone(images.float(), joints[..., :2].float(), joints_mask.float())
            raw = model.head(feat)
        # VPoser + SMPL (< 0.1 GFLOP) outside autocast: smplx's layer does not accept mixed dtypes
        raw = HeadOutput(
            root_pose_6d=raw.root_pose_6d.float(), pose_latent=raw.pose_latent.float(), betas=raw.betas.float(),
            cam_param=raw.cam_param.float(), joint_img=raw.joint_img.float(), hs=raw.hs,
        )  # fmt: skip
        return model.outputs_from_head(raw, focal.float().reshape(-1))


def build_reference_model(
    model: DPMesh,
    *,
    lora: LoraWeights | None = None,
    lora_rank: int = 64,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = torch.float16,
    copy_model: bool = True,
) -> ReferenceDPMesh:
    """The official execution of `model` (whose LoRA is folded, as every loaded `DPMesh`'s is).

    Args:
        model: fp32 `DPMesh`.
        lora: the LoRA factors folded into `model` (e.g. read from the checkpoint); default: random factors of
            `lora_rank` (timing: the function is unchanged up to rounding, since `base = W − up @ down`).
        autocast_dtype: `torch.float16` as the official eval loop; `None` runs fp32 (parity tests).
        copy_model: leave `model` untouched.
    """
    if copy_model:
        model = copy.deepcopy(model)
    model.float().eval().requires_grad_(False)
    unet = model.backbone.unet
    factors: LoraWeights = lora if lora is not None else random_lora(unet, rank=lora_rank, seed=seed)  # type: ignore[assignment]
    unfold_lora(unet, factors)
    install_explicit_attention(model)
    return ReferenceDPMesh(model, autocast_dtype).eval()

"""GPU fast path for DPMesh inference: half-precision weights, channels-last, `torch.compile`, CUDA graphs.

`prepare_for_inference(model, FastPathConfig(...))` returns a `FastDPMesh`, a `DPMesh` with the same forward
signature and outputs that shares (and converts in place) the modules of `model`:

* LoRA is already folded at load (`dpmesh_core.checkpoint.fold_lora`); nothing to do here.
* Backbone (VAE encoder, ControlNet, UNet, fusion) and, unless `fp32_head`, the head run in `dtype` (bf16 or fp16)
  with half-precision *weights* (no autocast, no per-call weight casts).
* Attention: SDPA everywhere except the 10 UNet cross-attention layers whose maps DPMesh uses; those compute
  `softmax(q kᵀ / √d)` in fp32 (`Float32MapCaptureProcessor`). Only these probabilities are materialised:
  `(B·heads, N ≤ 256, 30)` per layer (official 256² crops).
* Numerics-sensitive parts stay fp32: keypoint heatmaps (computed from fp32 keypoints, rounded once), the captured
  softmax maps, VPoser, 6D→axis-angle, camera, SMPL and the joint regressors. Outputs are fp32.
* `channels_last`: the convolutional modules (VAE encoder, ControlNet, UNet, fusion) and the input images use the
  NHWC layout, which cuDNN's tensor-core convolutions prefer; the head (3D reshapes) stays contiguous.
* `compile`: `torch.compile(dynamic=False)` of the whole network + mesh step (GroupNorm+SiLU and other elementwise
  chains fuse; the VAE encoder at 256² is half the FLOPs and mostly such chains around convolutions).
* `cuda_graphs`: the whole step is captured once per fixed batch size and replayed (CUDA only).
* With `compile` or `cuda_graphs`, every call runs at the fixed `batch_size`: larger inputs are split, the last
  partial chunk is padded by repeating its last sample, and outputs are sliced back. Samples are independent
  (per-sample GroupNorm, per-sample focal), so the padding does not change a person's result.
* Concurrent callers (a shared model's host serves each caller from its own thread): a forward pass keeps its state
  call-local (`models.forward_capture`); the lazily built compiled step and graphs are created under a lock, and a
  CUDA graph, whose input and output buffers are one per graph, is replayed by one caller at a time.

The fp32 reference path (plain `DPMesh`) is untouched; `FastDPMesh(fp32, no compile, no graphs)` computes the same
function with the same kernels.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from dpmesh_core.model import DPMesh
from dpmesh_core.models.attention_capture import (
    ATTN8_LAYERS,
    ATTN16_LAYERS,
    AttentionMapCaptureProcessor,
    processor_name,
)
from dpmesh_core.models.head import HeadOutput
from dpmesh_core.outputs import DPMeshOutput


logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Output fields in `DPMeshOutput` order: the compiled / graphed step returns this tuple of tensors.
OUTPUT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DPMeshOutput))
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class FastPathConfig:
    """How `prepare_for_inference` optimises a model.

    Attributes:
        dtype: compute/weight precision of the backbone and head: `torch.bfloat16` (default), `torch.float16` or
            `torch.float32` (then only the layout/compile/graph options apply). Strings ("bfloat16") are accepted.
        channels_last: NHWC layout for the convolutional modules and the input images.
        compile: `torch.compile` the forward step (`dynamic=False`: one graph per fixed batch size).
        compile_mode: `torch.compile` mode ("default", "max-autotune-no-cudagraphs", ...). Use `cuda_graphs` for
            graphs rather than "reduce-overhead".
        cuda_graphs: capture the step in a CUDA graph per fixed batch size and replay it (CUDA only; ignored with
            a warning elsewhere; falls back to no graphs with a warning if capture fails).
        batch_size: the fixed batch size used when `compile` or `cuda_graphs` is on (the pipeline's
            `model.batch_size`); `None` = the size of the first call.
        fp32_head: run the transformer head in fp32 instead of `dtype` (≈1 % of the FLOPs).
        cudnn_benchmark: set `torch.backends.cudnn.benchmark = True` on CUDA (fixed shapes: autotuned convs).
    """

    dtype: torch.dtype | str = torch.bfloat16
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    cuda_graphs: bool = False
    batch_size: int | None = None
    fp32_head: bool = False
    cudnn_benchmark: bool = True

    @property
    def torch_dtype(self) -> torch.dtype:
        """`dtype` as a `torch.dtype`."""
        if isinstance(self.dtype, torch.dtype):
            return self.dtype
        if self.dtype not in DTYPES:
            raise ValueError(f"FastPathConfig.dtype={self.dtype!r}: expected one of {sorted(DTYPES)}")
        return DTYPES[self.dtype]

    @property
    def fixed_shapes(self) -> bool:
        """True when calls are padded to `batch_size` (compiled graphs and CUDA graphs are shape-specialised)."""
        return self.compile or self.cuda_graphs


class Float32MapCaptureProcessor(AttentionMapCaptureProcessor):
    """`AttentionMapCaptureProcessor` with the attention core in fp32 whatever the weights' precision.

    Projections (`to_q/k/v`, `to_out`) run in the model dtype; `softmax(q kᵀ · d^-0.5)`, the head-averaged map and
    `probs · v` are fp32 (N ≤ 256 queries × 30 context tokens: negligible cost), and `probs · v` is rounded back to
    the projections' dtype. Checks and the output step are the base's (`ExplicitAttentionProcessor`).
    """

    def attend(
        self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = query.float(), key.float(), value.float()
        probs = (torch.bmm(q, k.transpose(1, 2)) * attn.scale).softmax(dim=-1)
        return probs, torch.bmm(probs, v).to(value.dtype)


def install_float32_capture(unet: Any) -> None:
    """Swap the 10 capture processors of `unet` for `Float32MapCaptureProcessor`s (same layers)."""
    processors = dict(unet.attn_processors)
    for layer in ATTN16_LAYERS + ATTN8_LAYERS:
        name = processor_name(layer)
        current = processors[name]
        if not isinstance(current, AttentionMapCaptureProcessor):
            raise ValueError(f"{name} has no capture processor (got {type(current).__name__})")
        processors[name] = Float32MapCaptureProcessor(layer)
    unet.set_attn_processor(processors)


def count_materialised_probabilities(unet: Any, batch: int, tokens: int, latent_size: int) -> int:
    """Elements of explicit attention probabilities one UNet pass materialises (SDPA layers count 0).

    Only the capture layers materialise `(B·heads, N, tokens)`, N = (latent_size / 2)² for the `ATTN16_LAYERS` and
    (latent_size / 4)² for the `ATTN8_LAYERS` (`latent_size`: `config.latent_size`, official 32 → 16² and 8²);
    used by tests to check that no other layer does.
    """
    total = 0
    for name, proc in unet.attn_processors.items():
        if isinstance(proc, AttentionMapCaptureProcessor):
            layer = name.removesuffix(".transformer_blocks.0.attn2.processor")
            side = latent_size // 2 if layer in ATTN16_LAYERS else latent_size // 4
            heads = dict(unet.named_modules())[name.removesuffix(".processor")].heads
            total += batch * heads * side * side * tokens
    return total


class _CudaGraphStep:
    """Replays a CUDA graph of `fn` captured on static input buffers (one fixed shape); outputs are cloned.

    The static buffers are one per graph, so copy-in, replay and clone-out run under the step's lock: two callers
    replaying at once would read each other's outputs.
    """

    def __init__(self, fn: StepFn, warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: tuple[torch.Tensor, ...] = ()
        self.static_out: tuple[torch.Tensor, ...] = ()
        self._lock = threading.Lock()

    def capture(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self.static_in = tuple(x.clone() for x in inputs)
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(*self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self.fn(*self.static_in)
        self.graph = graph

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self._lock:
            if self.graph is None:
                self.capture(inputs)
            for static, x in zip(self.static_in, inputs, strict=True):
                static.copy_(x)
            assert self.graph is not None
            self.graph.replay()
            return tuple(out.clone() for out in self.static_out)


class FastDPMesh(DPMesh):
    """A `DPMesh` whose forward runs the fast path (see the module docstring); build with `prepare_for_inference`.

    Shares its submodules with the model it was built from. Inputs may come in any float dtype: images are cast to
    the compute dtype, keypoints/mask/focal to fp32 (`input_dtype` is fp32). All outputs are fp32.
    """

    def __init__(self, model: DPMesh, cfg: FastPathConfig) -> None:
        nn.Module.__init__(self)
        self.config = model.config
        self.backbone = model.backbone
        self.head = model.head
        self.vposer = model.vposer
        self.body_model = model.body_model
        self.model_id = model.model_id
        self.fast_config = cfg
        self.fixed_batch_size = cfg.batch_size
        self._compiled: StepFn | None = None
        self._graphs: dict[int, _CudaGraphStep] = {}
        self._use_graphs = cfg.cuda_graphs
        self._build_lock = threading.Lock()  # the lazily built step, graphs and fixed batch size (see module doc)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.fast_config.torch_dtype

    @property
    def input_dtype(self) -> torch.dtype:
        """Callers keep keypoints and focal in fp32; `forward` casts images to the compute dtype itself."""
        return torch.float32

    def _step(
        self, images: torch.Tensor, joints_xy: torch.Tensor, joints_mask: torch.Tensor, focal: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Network + mesh for one (fixed-size) batch; returns the `OUTPUT_FIELDS` tensors (fp32)."""
        feat = self.backbone(images, joints_xy, joints_mask)
        if self.fast_config.fp32_head:
            feat = feat.float()
        raw = self.head(feat)
        raw32 = HeadOutput(
            root_pose_6d=raw.root_pose_6d.float(), pose_latent=raw.pose_latent.float(), betas=raw.betas.float(),
            cam_param=raw.cam_param.float(), joint_img=raw.joint_img.float(), hs=raw.hs,
        )  # fmt: skip
        out = self.outputs_from_head(raw32, focal)
        return tuple(getattr(out, name) for name in OUTPUT_FIELDS)

    def _step_fn(self, batch: int) -> StepFn:
        with self._build_lock:
            fn: StepFn = self._step
            if self.fast_config.compile:
                if self._compiled is None:
                    self._compiled = torch.compile(self._step, dynamic=False, mode=self.fast_config.compile_mode)
                fn = self._compiled
            if self._use_graphs and self.device.type == "cuda":
                if batch not in self._graphs:
                    self._graphs[batch] = _CudaGraphStep(fn)
                return self._graphs[batch]
            return fn

    def _run(
        self, images: torch.Tensor, joints_xy: torch.Tensor, joints_mask: torch.Tensor, focal: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        fn = self._step_fn(images.shape[0])
        try:
            return fn(images, joints_xy, joints_mask, focal)
        except Exception:
            if not isinstance(fn, _CudaGraphStep) or fn.graph is not None:
                raise
            logger.warning("CUDA graph capture failed; running without graphs", exc_info=True)
            with self._build_lock:
                self._use_graphs = False
                self._graphs.clear()
            return self._step_fn(images.shape[0])(images, joints_xy, joints_mask, focal)

    def forward(
        self, images: torch.Tensor, joints: torch.Tensor, joints_mask: torch.Tensor, focal: torch.Tensor
    ) -> DPMeshOutput:
        """Same contract as `DPMesh.forward`; outputs are fp32."""
        self.check_crop_size(images)
        device = self.device
        images = images.to(device=device, dtype=self.compute_dtype)
        if self.fast_config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        joints_xy = joints[..., :2].to(device=device, dtype=torch.float32)
        mask = joints_mask.to(device=device, dtype=torch.float32)
        focal = focal.to(device=device, dtype=torch.float32).reshape(-1)
        total = images.shape[0]
        size = total
        if self.fast_config.fixed_shapes:
            with self._build_lock:
                if self.fixed_batch_size is None:
                    self.fixed_batch_size = total
                size = self.fixed_batch_size
        chunks: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, total, size):
            stop = min(start + size, total)
            args = [images[start:stop], joints_xy[start:stop], mask[start:stop], focal[start:stop]]
            if stop - start < size:
                args = [pad_batch(x, size) for x in args]
            outs = self._run(*args)
            chunks.append(tuple(o[: stop - start] for o in outs))
        fields = chunks[0] if len(chunks) == 1 else tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))
        return DPMeshOutput(**dict(zip(OUTPUT_FIELDS, fields, strict=True)))

    def extra_repr(self) -> str:
        return f"model_id={self.model_id!r}, fast_config={self.fast_config}"


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad `x` along dim 0 to `size` rows by repeating its last row (valid inputs: no NaN from empty crops)."""
    missing = size - x.shape[0]
    if missing <= 0:
        return x
    pad = x[-1:].expand(missing, *x.shape[1:])
    out = torch.cat([x, pad])
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def prepare_for_inference(model: DPMesh, cfg: FastPathConfig, *, copy_model: bool = False) -> FastDPMesh:
    """Convert `model` for fast inference and return the `FastDPMesh` that runs it.

    Args:
        model: a loaded `DPMesh` (fp32 weights recommended: the conversion rounds once). Modified in place
            (backbone/head dtype and layout, capture processors) unless `copy_model`.
        cfg: the options.
        copy_model: work on a deep copy and leave `model` untouched (keeps the fp32 reference alive).

    Returns:
        `FastDPMesh` in eval mode, gradients off.
    """
    if copy_model:
        model = copy.deepcopy(model)
    dtype = cfg.torch_dtype
    device = next(model.parameters()).device
    model.eval().requires_grad_(False)
    backbone = model.backbone
    backbone.to(dtype=dtype)
    model.head.to(dtype=torch.float32 if cfg.fp32_head else dtype)
    model.vposer.float()
    model.body_model.float()
    install_float32_capture(backbone.unet)
    if cfg.channels_last:
        for module in (backbone.vae, backbone.controlnet, backbone.unet, backbone.fusion):
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if cfg.cuda_graphs and device.type != "cuda":
        logger.warning("FastPathConfig.cuda_graphs needs a CUDA device (model on %s): graphs are off", device)
    if cfg.cudnn_benchmark and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    fast = FastDPMesh(model, cfg)
    return fast.eval().requires_grad_(False)

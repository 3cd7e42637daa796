"""The GPU fast path and the official-execution reference mode, checked on CPU with the tiny model.

Tolerances (tiny model, random weights, zero-initialised tensors redrawn):
* fast path fp32 + channels-last vs the plain fp32 model: backbone features ≤ 5e-5 relative (measured 1.4e-5),
  vertices ≤ 0.1 mm (same function, other convolution kernels; measured 5e-5 m on the random tiny model);
* fast path bf16 vs fp32: root-relative vertex error ≤ 30 mm mean / 120 mm max, fp16: ≤ 5 mm / 20 mm. The tiny
  random network amplifies rounding far more than a trained one; measured: bf16 ≈ 12 / 56 mm, fp16 ≈ 1.3 / 3.4 mm.
  The GPU benchmark (benchmarks/gpu_model.py) reports the same numbers for the full model;
* reference mode (LoRA unfolded, explicit attention everywhere) in fp32 vs the LoRA-folded SDPA model: ≤ 1e-4.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dpmesh_core.fast_path import (
    FastDPMesh,
    FastPathConfig,
    Float32MapCaptureProcessor,
    count_materialised_probabilities,
    pad_batch,
    prepare_for_inference,
)
from dpmesh_core.model import DPMesh, DPMeshOutput
from dpmesh_core.models.attention_capture import AttentionMapCaptureProcessor
from dpmesh_core.models.forward_capture import record_intermediates
from dpmesh_core.reference_mode import (
    ExplicitAttnProcessor,
    LoraInjectedLinear,
    build_reference_model,
    fold_lora_into,
    lora_targets,
    random_lora,
)
from tests.fakes.tiny_dpmesh import build_tiny_dpmesh, tiny_config_at_official_crop, tiny_inputs


@pytest.fixture(scope="module")
def tiny() -> DPMesh:
    return build_tiny_dpmesh()


def run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> DPMeshOutput:
    return run_recording(model, inputs)[0]


def run_recording(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[DPMeshOutput, dict]:
    """The outputs and the pass's intermediates (`record_intermediates`)."""
    with torch.inference_mode(), record_intermediates() as seen:
        out: DPMeshOutput = model(**inputs)
    return out, seen


def rootrel_mm(out: DPMeshOutput, ref: DPMeshOutput) -> torch.Tensor:
    a = out.vertices.double() - out.joints30[:, :1].double()
    b = ref.vertices.double() - ref.joints30[:, :1].double()
    return (a - b).norm(dim=-1) * 1000


def test_fp32_channels_last_matches(tiny: DPMesh) -> None:
    inputs = tiny_inputs(batch=2)
    ref, ref_seen = run_recording(tiny, inputs)
    fast = prepare_for_inference(tiny, FastPathConfig(dtype="float32", channels_last=True), copy_model=True)
    out, seen = run_recording(fast, inputs)
    assert out.vertices.dtype == torch.float32
    for key in ("latent", "f32", "f16a", "f8a"):
        a, b = seen[key].float(), ref_seen[key]
        assert (a - b).norm() / b.norm() <= 5e-5, key  # measured 1.4e-5 (other conv kernels)
    assert (out.vertices - ref.vertices).abs().max() <= 1e-4  # m; the random tiny head amplifies the 1e-6
    assert (out.joint_img - ref.joint_img).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def tiny256() -> DPMesh:
    """The tiny widths at the official 256² crop: the model the half-precision bounds below were measured on."""
    return build_tiny_dpmesh(config=tiny_config_at_official_crop())


@pytest.mark.parametrize(("dtype", "mean_mm", "max_mm"), [("bfloat16", 30.0, 120.0), ("float16", 5.0, 20.0)])
def test_half_precision_close_to_fp32(tiny256: DPMesh, dtype: str, mean_mm: float, max_mm: float) -> None:
    tiny = tiny256
    inputs = tiny_inputs(batch=4, seed=3, config=tiny.config)
    ref = run(tiny, inputs)
    fast = prepare_for_inference(tiny, FastPathConfig(dtype=dtype), copy_model=True)
    assert next(fast.backbone.parameters()).dtype == getattr(torch, dtype)
    assert fast.input_dtype == torch.float32  # the handler feeds fp32 keypoints/focal
    assert next(fast.vposer.parameters()).dtype == torch.float32
    out = run(fast, inputs)
    for name in ("vertices", "smpl_pose", "cam_trans", "joint_img", "joint_proj"):
        assert getattr(out, name).dtype == torch.float32, name
        assert torch.isfinite(getattr(out, name)).all(), name
    err = rootrel_mm(out, ref)
    assert err.mean() <= mean_mm, err.mean().item()
    assert err.max() <= max_mm, err.max().item()


def test_only_map_layers_materialise_probabilities(tiny: DPMesh) -> None:
    fast = prepare_for_inference(tiny, FastPathConfig(dtype="bfloat16"), copy_model=True)
    procs = fast.backbone.unet.attn_processors
    explicit = [n for n, p in procs.items() if isinstance(p, AttentionMapCaptureProcessor)]
    assert len(explicit) == 10
    assert all(isinstance(procs[n], Float32MapCaptureProcessor) for n in explicit)
    assert not any(
        isinstance(p, AttentionMapCaptureProcessor) for p in fast.backbone.controlnet.attn_processors.values()
    )
    heads = 8  # tiny config: attention_head_dim = 8 heads
    latent = tiny.config.latent_size  # 16 for the tiny 128² crops (32 for the official 256²: 16² and 8² maps)
    count = count_materialised_probabilities(fast.backbone.unet, 1, 30, latent)
    assert count == heads * 30 * (5 * (latent // 2) ** 2 + 5 * (latent // 4) ** 2)
    _, seen = run_recording(fast, tiny_inputs(batch=1))
    maps = {k: v for k, v in seen.items() if k.startswith("attn:")}
    assert len(maps) == 10
    assert all(m.dtype == torch.float32 for m in maps.values())
    assert heads * sum(m.numel() for m in maps.values()) == count  # the head means of exactly those probabilities


def test_padding_partial_batch_matches_full_batch(tiny: DPMesh) -> None:
    full = tiny_inputs(batch=4, seed=5)
    fast = prepare_for_inference(tiny, FastPathConfig(dtype="float32", batch_size=4), copy_model=True)
    fast.fast_config = FastPathConfig(dtype="float32", batch_size=4, cuda_graphs=True)  # fixed shapes, eager on CPU
    ref = run(fast, full)
    partial = {k: v[:3] for k, v in full.items()}
    out = run(fast, partial)
    assert out.vertices.shape[0] == 3
    assert torch.equal(out.vertices, ref.vertices[:3])
    assert torch.equal(out.smpl_pose, ref.smpl_pose[:3])
    # larger than the fixed size: split into chunks of 4 (second chunk padded)
    six = {k: torch.cat([v, v[:2]]) for k, v in full.items()}
    out6 = run(fast, six)
    assert torch.equal(out6.vertices[:4], ref.vertices)
    assert torch.equal(out6.vertices[4:], ref.vertices[:2])


def test_pad_batch_repeats_last_row() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(pad_batch(x, 5), torch.tensor([[0, 1], [2, 3], [4, 5], [4, 5], [4, 5.0]]))
    assert pad_batch(x, 3) is x


def test_reference_mode_matches_folded_model(tiny: DPMesh) -> None:
    folded = copy.deepcopy(tiny)
    lora = random_lora(folded.backbone.unet, rank=4, seed=1, std=0.5)
    assert len(lora) == len(lora_targets(folded.backbone.unet)) == 16 * 9
    fold_lora_into(folded.backbone.unet, lora)
    inputs = tiny_inputs(batch=2, seed=7)
    ref, ref_seen = run_recording(folded, inputs)
    reference = build_reference_model(folded, lora=lora, autocast_dtype=None)
    unet = reference.model.backbone.unet
    assert not lora_targets(unet)  # every target is now wrapped
    assert sum(isinstance(m, LoraInjectedLinear) for m in unet.modules()) == 16 * 9
    assert all(isinstance(p, ExplicitAttnProcessor) for p in unet.attn_processors.values())
    assert all(
        isinstance(p, ExplicitAttnProcessor) for p in reference.model.backbone.controlnet.attn_processors.values()
    )
    out, seen = run_recording(reference, inputs)
    # the LoRA contributes: the base weights differ from the folded ones
    assert (run(tiny, inputs).vertices - ref.vertices).abs().max() > 1e-3
    assert (out.vertices - ref.vertices).abs().max() <= 1e-4
    assert (seen["f8a"] - ref_seen["f8a"]).abs().max() <= 1e-4


def _load_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_model.py"
    spec = importlib.util.spec_from_file_location("gpu_model_bench", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_harness_functions_on_cpu(tiny: DPMesh) -> None:
    bench = _load_benchmark()
    args = bench.parse_args(["--device", "cpu", "--tiny", "--iters", "1", "--warmup", "1"])
    device = torch.device("cpu")
    fast = prepare_for_inference(tiny, bench.fast_config(args, "bfloat16", 2), copy_model=True)
    fast.fast_config = FastPathConfig(dtype="bfloat16", batch_size=2)  # no compile in the quick test
    row = bench.measure(fast, "fast", "bfloat16", 2, args, device)
    assert row.crops_per_s is not None
    assert row.crops_per_s > 0
    assert bench.matmul_peak_tflops(device, 64, iters=2) > 0
    flops_fast = bench.flops_per_crop(tiny, device, batch=1)
    reference = build_reference_model(tiny, lora_rank=4, autocast_dtype=None)
    flops_ref = bench.flops_per_crop(reference, device, batch=1)
    assert flops_ref > flops_fast > 2.5e8  # tiny: ~0.5 GFLOP/crop at 128² (~2 at 256²), most of it the VAE encoder
    inputs = bench.make_inputs(2, 0, device, tiny.config)
    acc = bench.accuracy(run(fast, inputs), run(tiny, inputs))
    assert set(acc) >= {"vertex_mm_mean", "vertex_mm_max", "pose_deg_mean", "pose_deg_max"}
    assert acc["pose_deg_max"] < 30
    same = bench.accuracy(run(tiny, inputs), run(tiny, inputs))
    assert same["vertex_mm_max"] == 0
    assert same["pose_deg_max"] < 1e-3


@pytest.mark.slow  # inductor on 2 shared CPU cores: ~150 s
def test_compile_path_runs(tiny: DPMesh) -> None:
    fast = prepare_for_inference(tiny, FastPathConfig(dtype="float32", compile=True, batch_size=2), copy_model=True)
    assert isinstance(fast, FastDPMesh)
    inputs = tiny_inputs(batch=1, seed=2)
    out = run(fast, inputs)
    ref = run(tiny, inputs)
    assert (out.vertices - ref.vertices).abs().max() <= 1e-4

"""DPMesh model throughput on one GPU: the official execution against the fast path, in one run.

Measures, on the same device and the same random inputs (seeded; images uniform in [0, 1], never zeros):
  reference  - the official implementation's execution rebuilt from our modules (`dpmesh_core.reference_mode`):
               fp16 autocast, fp32 weights, LoRA unfolded (`linear(x) + up(down(x))`, r = 64), explicit softmax
               attention in every UNet / ControlNet / VAE attention layer, eager; the official batch is 12.
               The official code itself can be run beside the project (CPU, recorded I/O) with
               ../shared/tools/official_reference/ for an external comparison.
  fast       - `dpmesh_core.fast_path` (half weights, SDPA except the 10 map layers, channels-last,
               torch.compile, CUDA graphs, fixed batch).
For each mode and batch size: crops/s (median over timed iterations, CUDA-event timed, inputs rotated over
3 sets), peak GPU memory, warm-up (compile/capture) seconds. Then: the speed-up (fast at each batch size over the
reference at batch 12), the FLOPs per crop counted with `torch.utils.flop_counter.FlopCounterMode` for both modes,
achieved TFLOP/s, the GPU's measured bf16 dense matmul peak (8192³ products) and the fraction of it achieved, and
the accuracy of each fast dtype (and of the reference) against the fp32 model on the same crops: mean / max vertex
error in mm (absolute in the crop camera and root-relative) and mean / max joint-rotation error in degrees.

`--prep` instead measures crop preparation on one CPU core (decode + crop + heatmap inputs, via
benchmarks/label_pipeline.py's corpus) and prints how many cores feed a GPU of a given crops/s.

Weights: random (official architecture, zero-initialised tensors redrawn so every path is exercised) unless
`--pretrained DIR` (a `dpmesh-convert` folder) is given; timing does not depend on the weights, accuracy does.

Usage:
  python benchmarks/gpu_model.py --device cuda --batch-sizes 12,32,64,128 --out gpu_model.json
  python benchmarks/gpu_model.py --device cpu --tiny            # smoke test of the harness
  python benchmarks/gpu_model.py --prep --gpu-crops-per-s 800
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.flop_counter import FlopCounterMode

from dpmesh_core.config import DPMeshConfig, official_config
from dpmesh_core.fast_path import FastPathConfig, prepare_for_inference
from dpmesh_core.model import DPMesh, DPMeshOutput
from dpmesh_core.reference_mode import build_reference_model
from dpmesh_core.synthetic import synthetic_smpl_data


Inputs = dict[str, torch.Tensor]


class Model(Protocol):
    """A DPMesh execution (`DPMesh`, `FastDPMesh`, `ReferenceDPMesh`): its config sizes the inputs."""

    @property
    def config(self) -> DPMeshConfig: ...

    def __call__(self, **inputs: torch.Tensor) -> DPMeshOutput: ...


REFERENCE_BATCH = 12  # configs/main_train.yml:13
SMPL_VERTICES = 6890


@dataclass
class Row:
    """One measured configuration."""

    mode: str
    dtype: str
    batch: int
    crops_per_s: float | None
    ms_per_batch: float | None
    spread_ms: float | None
    peak_mem_gib: float | None
    warmup_s: float
    error: str = ""


# ----------------------------------------------------------------------------------------------------- models
def redraw_zero_params(model: DPMesh, seed: int = 1) -> None:
    """Give zero-initialised weights (ControlNet zero convs, ...) small random values, as trained weights are."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2 and not param.any():
                param.copy_((torch.randn(param.shape, generator=gen) * 0.02).to(param))


def build_model(args: argparse.Namespace, device: torch.device) -> DPMesh:
    """The fp32 model: tiny, real weights (`--pretrained`), or the official architecture with random weights."""
    if args.tiny:
        model = DPMesh.tiny(seed=0)
        redraw_zero_params(model)
        return model.to(device)
    if args.pretrained:
        return DPMesh.from_pretrained(args.pretrained, device=device)
    torch.manual_seed(0)
    model = DPMesh(official_config(), synthetic_smpl_data(SMPL_VERTICES), network_device=device)
    model = model.to(device).eval().requires_grad_(False)
    redraw_zero_params(model)
    return model


def make_inputs(batch: int, seed: int, device: torch.device, config: DPMeshConfig) -> Inputs:
    """Random inputs in the documented units, sized for `config` (images in [0, 1], keypoints in heatmap-grid px,
    ~70 % valid)."""
    gen = torch.Generator().manual_seed(seed)
    grid = float(config.heatmap_size)
    joints = torch.rand(batch, 30, 3, generator=gen) * torch.tensor([grid, grid, 1.0])
    return {
        "images": torch.rand(batch, 3, config.image_size, config.image_size, generator=gen).to(device),
        "joints": joints.to(device),
        "joints_mask": (torch.rand(batch, 30, 1, generator=gen) > 0.3).float().to(device),
        "focal": (1200.0 + 1300.0 * torch.rand(batch, generator=gen)).to(device),
    }


# ----------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[int], Any], iters: int, device: torch.device) -> list[float]:
    """Seconds of each of `iters` calls `fn(i)` (CUDA events on GPU, perf_counter on CPU)."""
    times = []
    for i in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
    return times


def measure(model: Model, mode: str, dtype: str, batch: int, args: argparse.Namespace, device: torch.device) -> Row:
    """crops/s, spread and peak memory of `model` at `batch` (after warm-up: compile, graph capture, autotune)."""
    sets = [make_inputs(batch, seed, device, model.config) for seed in range(3)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for i in range(args.warmup):
                model(**sets[i % 3])
            synchronize(device)
            warm = time.perf_counter() - t0
            times = time_calls(lambda i: model(**sets[i % 3]), args.iters, device)
    except torch.OutOfMemoryError as exc:
        return Row(mode, dtype, batch, None, None, None, None, 0.0, f"OOM: {str(exc).splitlines()[0][:80]}")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    median = statistics.median(times)
    spread = (max(times) - min(times)) * 1000
    return Row(mode, dtype, batch, batch / median, median * 1000, spread, peak, warm)


def matmul_peak_tflops(device: torch.device, n: int, iters: int = 20) -> float:
    """Measured dense bf16 matmul rate (TFLOP/s) on `device`: median of `n`³ products on random data."""
    dtype = torch.bfloat16
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    times = time_calls(lambda _i: a @ b, iters, device)
    return 2 * n**3 / statistics.median(times) / 1e12


def flops_per_crop(model: Model, device: torch.device, batch: int = 2) -> float:
    """FLOPs of one crop (`FlopCounterMode`: matmul/conv/attention, 1 MAC = 2 FLOPs) over a `batch`-crop call."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**make_inputs(batch, 99, device, model.config))
    return float(counter.get_total_flops()) / batch


# --------------------------------------------------------------------------------------------------- accuracy
def axis_angle_to_rotmat(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues: `(N, 3)` axis-angle → `(N, 3, 3)` rotation matrices."""
    angle = aa.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    x, y, z = (aa / angle).unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


def rotation_error_deg(pose_a: torch.Tensor, pose_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (degrees) between the per-joint rotations of two `(B, 72)` axis-angle poses."""
    ra = axis_angle_to_rotmat(pose_a.double().reshape(-1, 3))
    rb = axis_angle_to_rotmat(pose_b.double().reshape(-1, 3))
    cos = ((ra.transpose(1, 2) @ rb).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def accuracy(out: DPMeshOutput, ref: DPMeshOutput) -> dict[str, float]:
    """Vertex error (mm, absolute and root-relative) and pose error (deg) of `out` against `ref`."""
    v, r = out.vertices.double(), ref.vertices.double()
    absolute = (v - r).norm(dim=-1) * 1000
    rel = ((v - out.joints30[:, :1].double()) - (r - ref.joints30[:, :1].double())).norm(dim=-1) * 1000
    angle = rotation_error_deg(out.smpl_pose, ref.smpl_pose)
    return {
        "vertex_mm_mean": absolute.mean().item(), "vertex_mm_max": absolute.max().item(),
        "vertex_rootrel_mm_mean": rel.mean().item(), "vertex_rootrel_mm_max": rel.max().item(),
        "pose_deg_mean": angle.mean().item(), "pose_deg_max": angle.max().item(),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------ modes
def fast_config(args: argparse.Namespace, dtype: str, batch: int) -> FastPathConfig:
    return FastPathConfig(
        dtype=dtype, channels_last=not args.no_channels_last, compile=not args.no_compile,
        compile_mode=args.compile_mode, cuda_graphs=not args.no_cuda_graphs, batch_size=batch,
    )  # fmt: skip


@contextmanager
def released(device: torch.device) -> Iterator[None]:
    try:
        yield
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    dtypes = args.dtypes.split(",")
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "tiny": args.tiny, "rows": []}  # fmt: skip
    rows: list[Row] = []

    def emit(row: Row) -> None:
        rows.append(row)
        print(json.dumps(asdict(row)), flush=True)
        report["rows"] = [asdict(r) for r in rows]
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))

    report["matmul_bf16_peak_tflops"] = matmul_peak_tflops(device, args.peak_n)
    print(f"measured bf16 matmul peak: {report['matmul_bf16_peak_tflops']:.1f} TFLOP/s", flush=True)
    fp32 = build_model(args, device)
    acc_inputs = make_inputs(args.accuracy_batch, 1234, device, fp32.config)
    with torch.inference_mode():
        fp32_out = fp32(**acc_inputs)
    report["gflop_per_crop_fast"] = flops_per_crop(fp32, device) / 1e9
    report["accuracy"] = {}
    ref_batches = [b for b in batches if b == REFERENCE_BATCH or args.reference_all_batches]
    if "reference" in args.modes:
        # fp16 autocast as eval.py:124; CPU fp16 autocast lacks kernels, so the CPU smoke test uses bf16
        autocast = torch.float16 if device.type == "cuda" else torch.bfloat16
        label = f"{str(autocast).removeprefix('torch.')}-autocast"
        reference = build_reference_model(fp32, lora_rank=args.lora_rank, autocast_dtype=autocast)
        report["gflop_per_crop_reference"] = flops_per_crop(reference, device) / 1e9
        with torch.inference_mode():
            report["accuracy"][f"reference_{label}"] = accuracy(reference(**acc_inputs), fp32_out)
        for batch in ref_batches or [REFERENCE_BATCH]:
            with released(device):
                emit(measure(reference, "reference", label, batch, args, device))
        del reference
        gc.collect()
    if "fast" in args.modes:
        for dtype in dtypes:
            with released(device):
                fast = prepare_for_inference(fp32, fast_config(args, dtype, batches[0]), copy_model=True)
                with torch.inference_mode():
                    report["accuracy"][f"fast_{dtype}"] = accuracy(fast(**acc_inputs), fp32_out)
                for batch in batches:
                    fast.fixed_batch_size = batch
                    emit(measure(fast, "fast", dtype, batch, args, device))
                del fast
    summarize(report, rows)
    return report


def summarize(report: dict[str, Any], rows: list[Row]) -> None:
    """Print the table: crops/s, memory, speed-up over the reference at batch 12, TFLOP/s and peak fraction."""
    peak = report["matmul_bf16_peak_tflops"]
    base = next((r.crops_per_s for r in rows if r.mode == "reference" and r.batch == REFERENCE_BATCH), None)
    print(f"\ndevice: {report['device']}  torch {report['torch']}  bf16 matmul peak {peak:.1f} TFLOP/s")
    print(f"GFLOP/crop (FlopCounterMode): fast {report['gflop_per_crop_fast']:.2f}, "
          f"reference {report.get('gflop_per_crop_reference', float('nan')):.2f}")  # fmt: skip
    print(f"{'mode':<10}{'dtype':<15}{'batch':>6}{'crops/s':>10}{'ms/batch':>10}{'peak GiB':>10}"
          f"{'warmup s':>10}{'speed-up':>10}{'TFLOP/s':>9}{'% peak':>8}")  # fmt: skip
    for r in rows:
        if r.crops_per_s is None:
            print(f"{r.mode:<10}{r.dtype:<15}{r.batch:>6}  {r.error}")
            continue
        gflop = report["gflop_per_crop_reference" if r.mode == "reference" else "gflop_per_crop_fast"]
        tflops = r.crops_per_s * gflop / 1e3
        speed = f"{r.crops_per_s / base:.2f}x" if base else "-"
        mem = f"{r.peak_mem_gib:.2f}" if r.peak_mem_gib is not None else "-"
        print(f"{r.mode:<10}{r.dtype:<15}{r.batch:>6}{r.crops_per_s:>10.1f}{r.ms_per_batch:>10.1f}{mem:>10}"
              f"{r.warmup_s:>10.1f}{speed:>10}{tflops:>9.2f}{100 * tflops / peak:>7.1f}%")  # fmt: skip
    for name, acc in report["accuracy"].items():
        print(f"accuracy vs fp32, {name}: vertices {acc['vertex_mm_mean']:.3f} / {acc['vertex_mm_max']:.3f} mm "
              f"(root-relative {acc['vertex_rootrel_mm_mean']:.3f} / {acc['vertex_rootrel_mm_max']:.3f}), "
              f"pose {acc['pose_deg_mean']:.4f} / {acc['pose_deg_max']:.4f} deg (mean / max)")  # fmt: skip


# ------------------------------------------------------------------------------------------------ preparation
def run_prep(args: argparse.Namespace) -> dict[str, Any]:
    """Crops/s that one CPU core prepares (label_pipeline's corpus and `time_preparation`), and cores per GPU."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import label_pipeline as lp

    torch.set_num_threads(1)
    corpus = lp.build_corpus(Path(args.cache) / f"label-{args.images}", args.images)
    cfg = lp.label_config(corpus, Path(args.cache) / "prep-out", [])
    wall, cpu, crops = lp.time_preparation(corpus, cfg)
    persons = sum(len(c) for c in crops)
    per_core = persons / cpu
    result = {"persons": persons, "wall_s": wall, "cpu_s": cpu, "crops_per_core_s": per_core}
    print(f"crop preparation: {persons} crops, {wall:.2f} s wall, {cpu:.2f} s CPU -> {per_core:.1f} crops/s/core")
    print("cores per GPU = ceil(GPU crops/s / crops_per_core_s / 0.8)  (0.8: headroom for reading, Beam, writing)")
    if args.gpu_crops_per_s:
        cores = math.ceil(args.gpu_crops_per_s / per_core / 0.8)
        result["cores_for_gpu"] = cores
        print(f"for {args.gpu_crops_per_s:.0f} GPU crops/s: {cores} cores")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configuration (harness smoke test)")
    parser.add_argument("--pretrained", help="dpmesh-convert folder with real weights (accuracy on real weights)")
    parser.add_argument("--batch-sizes", default="12,32,64,128")
    parser.add_argument("--dtypes", default="bfloat16,float16", help="fast-path dtypes to time and check")
    parser.add_argument("--modes", default="reference,fast")
    parser.add_argument("--reference-all-batches", action="store_true", help="reference at every batch size too")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--accuracy-batch", type=int, default=16)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--peak-n", type=int, default=8192, help="matmul size of the bf16 peak measurement")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--out", help="write the JSON report here (rewritten after every row)")
    parser.add_argument("--prep", action="store_true", help="measure crop preparation on one CPU core instead")
    parser.add_argument("--images", type=int, default=40, help="--prep: images of the corpus")
    parser.add_argument("--cache", default=".bench", help="--prep: corpus cache folder")
    parser.add_argument("--gpu-crops-per-s", type=float, help="--prep: GPU rate to size the workers for")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.prep:
        return run_prep(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA GPU is visible")
    return run_gpu(args)


if __name__ == "__main__":
    main()

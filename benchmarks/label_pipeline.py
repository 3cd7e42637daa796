"""Labeling throughput and memory: dpmesh-label persons/s against the model alone on the same crops.

Generates (once, cached under ``--cache``) seeded synthetic 640x480 JPEGs with 1-3 stick-figure persons and
their COCO annotations, shards them in-process with ``dpmesh-shard`` into ``<cache>/label-<n>/shards``, then in
one run measures, on the 1x corpus:
  model alone        - ``predict_persons`` (forward + ``to_full_image``) over every person, batches of
                       ``model.batch_size`` cut per shard as the pipeline cuts them, under ``torch.inference_mode()``;
                       the crops are prepared once beforehand and not timed (one warm-up batch is not timed either),
  crop preparation   - streaming the shards, decoding each JPEG and ``prepare_tasks`` (crop + model inputs), in
                       this one process: how many crops/s one CPU core prepares for the GPU,
  pipeline           - ``pipelines.label.job.run(cfg)`` wall time, everything included (Beam start-up, model
                       load, reading, decoding, crops, inference, scoring, Parquet writing), per runner mode,
(``--workers N`` adds a ``multi_processing`` row), and prints wall seconds, CPU seconds (user + system, this process
and its waited-for children: on a shared machine they drift less than wall time), persons/s and the ratio to the
model alone (1.00 = no pipeline overhead). Then it runs the pipeline on the 1x and the 4x corpus, each in a fresh
subprocess (this script with ``--child``), and prints each one's peak RSS (``ru_maxrss`` of the process, plus its
largest child's) and the ratio 4x/1x: the pipeline streams shards and batches, so memory must stay flat.

The model is ``model=tiny`` (the default of dpmesh-label) on CPU. With ``--full-size`` on a machine with an NVIDIA
GPU, the model is the official DPMesh architecture (``official_config()``) with random weights on ``cuda``.

Usage: python benchmarks/label_pipeline.py [--images 40] [--batch-size 8] [--workers 2] [--cache .bench]
                                           [--full-size] [--set KEY=VALUE ...]
"""

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from dpmesh_core.config import CropGeometry
from dpmesh_core.model import DPMesh
from dpmesh_core.prediction import predict_persons
from dpmesh_core.preprocessing import PersonInputs
from pipelines.common.image_decode import decode_rgb
from pipelines.common.shard_members import iter_shard_samples, sample_metadata
from pipelines.config import DEFAULT_MAX_IMAGE_PIXELS, LabelJobConfig, ModelConfig, ShardJobConfig, compose_config
from pipelines.config.storage import StorageConfig
from pipelines.label.job import run as label_run
from pipelines.label.model_handler import DPMeshModelHandler, DPMeshPredictor, load_model
from pipelines.label.persons import PersonTask, person_from_json, prepare_tasks
from pipelines.logging_setup import configure_logging
from pipelines.shard.job import run as shard_run
from tests.fakes.corpus import make_images, write_coco, write_corpus


CHUNK = 100  # images generated per seeded chunk (chunk k uses seed k * CHUNK: a larger corpus extends a smaller)
SHARD_SAMPLES = 25  # shard.max_samples: several shards even for the small default corpus
FULL_SIZE_SMPL_VERTICES = 6890  # the real SMPL mesh size, so the body model costs what it does in production


@dataclass(frozen=True)
class Corpus:
    """A sharded benchmark corpus."""

    images: int
    persons: int
    shards: list[Path]

    @property
    def shard_dir(self) -> Path:
        return self.shards[0].parent


@dataclass(frozen=True)
class Row:
    """One line of the throughput table."""

    name: str
    seconds: float
    cpu_seconds: float
    persons: int

    @property
    def rate(self) -> float:
        return self.persons / self.seconds


def build_corpus(root: Path, n: int) -> Corpus:
    """``n`` seeded 640x480 JPEGs with 1-3 persons, their COCO file and their shards under ``root`` (cached)."""
    stamp = root / ".complete"
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        images = []
        for start in range(0, n, CHUNK):
            chunk = make_images(min(CHUNK, n - start), seed=start, width=640, height=480, persons=(1, 3))
            for i, image in enumerate(chunk):
                image.file_name = f"img_{start + i:06d}.jpg"
            images.extend(chunk)
        write_corpus(str(root / "images"), images)
        write_coco(str(root / "annotations.json"), images)
        cfg = compose_config(
            "dpmesh_shard",
            [
                f"input.images={root / 'images'}",
                f"input.annotations={root / 'annotations.json'}",
                f"output={root / 'shards'}",
                f"shard.max_samples={SHARD_SAMPLES}",
                "shard.validate=header",
                "overwrite=true",
                "log_level=WARNING",
            ],
            ShardJobConfig,
        )
        shard_run(cfg)
        stamp.write_text(json.dumps({"images": n, "persons": sum(len(i.persons) for i in images)}))
    info = json.loads(stamp.read_text())
    return Corpus(info["images"], info["persons"], sorted((root / "shards").rglob("shard-*.tar")))


def label_config(corpus: Corpus, output: Path, overrides: list[str]) -> LabelJobConfig:
    """The ``dpmesh-label`` config of a benchmark run over ``corpus``."""
    return compose_config(
        "dpmesh_label",
        [
            f"input.shards={corpus.shard_dir}",
            f"output={output}",
            "overwrite=true",
            "progress_interval_s=0",
            "log_level=WARNING",
            *overrides,
        ],
        LabelJobConfig,
    )


def full_size_model(cfg: ModelConfig) -> DPMesh:
    """The official DPMesh architecture with seeded random weights, built directly on the configured device."""
    from dpmesh_core.config import official_config
    from dpmesh_core.synthetic import synthetic_smpl_data

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device.value)
    model = DPMesh(
        official_config(), synthetic_smpl_data(FULL_SIZE_SMPL_VERTICES, seed=cfg.seed), network_device=device
    )
    model.model_id = f"official-random-seed{cfg.seed}"
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype.value]
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class FullSizeHandler(DPMeshModelHandler):
    """The pipeline's handler with :func:`full_size_model` instead of a checkpoint."""

    def load_model(self) -> DPMeshPredictor:
        return DPMeshPredictor(full_size_model(self._cfg), self._cfg.threads, self.call_gate(), synthetic_body=True)


def bench_model(cfg: LabelJobConfig, full_size: bool) -> DPMesh:
    """The model the benchmark measures (the configured one, or the random full-size one), with the pipeline's
    thread count (``model.threads``), so both sides of the ratio compute on the same number of threads."""
    torch.set_num_threads(cfg.model.threads)
    return full_size_model(cfg.model) if full_size else load_model(cfg.model, StorageConfig())


def prepare_shard(shard: Path, cfg: LabelJobConfig, geometry: CropGeometry) -> list[PersonInputs]:
    """Every person's model inputs of one shard, in shard order (read, decode, crop at the model's ``geometry``), as
    the pipeline reads them."""
    inputs: list[PersonInputs] = []
    # The benchmark's shard set is made with the shard job's default limit, which labeling follows when unset.
    pixel_limit = cfg.input.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS
    with shard.open("rb") as stream:
        for sample in iter_shard_samples(stream):
            meta = sample_metadata(sample)
            image = decode_rgb(sample.image_bytes() or b"", max_image_pixels=pixel_limit)
            persons = [(i, person_from_json(p)) for i, p in enumerate(meta.get("persons") or [])]
            tasks = prepare_tasks(
                image,
                persons,
                shard=shard.stem,
                image_key=sample.key,
                source_uri="",
                source="annotations",
                geometry=geometry,
            )
            inputs.extend(t.inputs for _, t in tasks if isinstance(t, PersonTask))
    return inputs


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_preparation(
    corpus: Corpus, cfg: LabelJobConfig, geometry: CropGeometry
) -> tuple[float, float, list[list[PersonInputs]]]:
    """Wall and CPU seconds to prepare every crop of the corpus in this process, and the crops per shard."""
    started, cpu = time.perf_counter(), cpu_seconds()
    crops = [prepare_shard(shard, cfg, geometry) for shard in corpus.shards]
    return time.perf_counter() - started, cpu_seconds() - cpu, crops


def shard_batches(crops: list[list[PersonInputs]], batch_size: int) -> list[list[PersonInputs]]:
    """Batches of ``batch_size`` cut per shard in shard order, as ``ReadShardFn`` cuts them."""
    return [shard[i : i + batch_size] for shard in crops for i in range(0, len(shard), batch_size)]


def time_model(model: DPMesh, batches: list[list[PersonInputs]]) -> tuple[float, float]:
    """Wall and CPU seconds of ``predict_persons`` (forward + ``to_full_image``) over all batches (after one untimed
    warm-up batch)."""
    device = model.device

    def forward(batch: list[PersonInputs]) -> None:
        predict_persons(model, batch)

    with torch.inference_mode():
        forward(batches[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        started, cpu = time.perf_counter(), cpu_seconds()
        for batch in batches:
            forward(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()  # to_full_image already copies to host; this is belt and braces
        return time.perf_counter() - started, cpu_seconds() - cpu


def time_pipeline(cfg: LabelJobConfig, full_size: bool) -> tuple[float, float, dict[str, Any]]:
    """Wall and CPU seconds (this process + waited-for children) of one ``dpmesh-label`` run, and its summary."""
    handler = (
        FullSizeHandler(cfg.model, cfg.storage, flip_consistency=cfg.filter.flip_consistency) if full_size else None
    )
    started, cpu = time.perf_counter(), cpu_seconds()
    summary = label_run(cfg, handler=handler)
    return time.perf_counter() - started, cpu_seconds() - cpu, summary


def peak_rss_mib() -> float:
    """Peak RSS of this process plus that of its largest waited-for child, in MiB (``ru_maxrss`` is KiB on Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def run_child(args: argparse.Namespace) -> None:
    """``--child``: one pipeline run over the cached ``--images`` corpus; prints a JSON line for the parent."""
    corpus = build_corpus(args.cache / f"label-{args.images}", args.images)
    cfg = label_config(corpus, args.cache / f"label-{args.images}" / "labels-child", overrides(args))
    seconds, _, summary = time_pipeline(cfg, args.full_size)
    print(json.dumps({"seconds": seconds, "persons_in": summary["counts"]["persons_in"], "rss_mib": peak_rss_mib()}))


def measure_in_child(args: argparse.Namespace, images: int) -> dict[str, float]:
    """Run :func:`run_child` in a fresh interpreter (so its peak RSS is its own) and return what it printed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--images", str(images)]
    command += ["--cache", str(args.cache)] + [f"--batch-size={args.batch_size}"] * bool(args.batch_size)
    command += ["--full-size"] * args.full_size + [f"--set={item}" for item in args.set]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def overrides(args: argparse.Namespace) -> list[str]:
    """Label-config overrides from the flags."""
    device = ["model.device=cuda"] if args.full_size else []
    batch = [f"model.batch_size={args.batch_size}"] if args.batch_size else []
    return [*batch, *device, *args.set]


def print_machine(model: DPMesh) -> None:
    """Machine, software and model line."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, {gpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    params = sum(p.numel() for p in model.parameters()) / 1e6
    device = model.device
    print(f"model: {model.model_id} ({params:.1f} M parameters) on {device.type}, {model.input_dtype}")


def print_rows(rows: list[Row], reference: float) -> None:
    """The throughput table, ratios relative to ``reference`` persons/s."""
    print(f"{'step':<32}{'seconds':>9}{'cpu s':>8}{'persons/s':>11}{'ratio':>8}")
    for row in rows:
        line = f"{row.seconds:>9.2f}{row.cpu_seconds:>8.1f}{row.rate:>11.1f}{row.rate / reference:>8.2f}"
        print(f"{row.name:<32}{line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40, help="images of the 1x corpus (4x is also run)")
    parser.add_argument("--batch-size", type=int, help="model.batch_size (default: the model config's)")
    parser.add_argument("--workers", type=int, default=0, help="also run multi_processing with N workers")
    parser.add_argument("--cache", type=Path, default=Path(".bench"))
    parser.add_argument("--full-size", action="store_true", help="official architecture, random weights (GPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra dpmesh-label override")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("ERROR")  # Beam warns on every run that it cannot sample memory
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    if args.full_size and not torch.cuda.is_available():
        sys.exit(
            "--full-size needs an NVIDIA GPU (the official architecture on CPU would take hours); none is visible"
        )
    if args.child:
        run_child(args)
        return

    corpora = {
        scale: build_corpus(args.cache / f"label-{args.images * scale}", args.images * scale) for scale in (1, 4)
    }
    corpus = corpora[1]
    cfg = label_config(corpus, args.cache / f"label-{args.images}" / "labels", overrides(args))
    model = bench_model(cfg, args.full_size)
    print_machine(model)
    for scale, c in corpora.items():
        print(f"corpus {scale}x: {c.images} JPEGs 640x480, {c.persons} persons, {len(c.shards)} shards")
    print(f"batch size {cfg.model.batch_size}, filter preset {cfg.filter.preset.value}")

    prep_s, prep_cpu, crops = time_preparation(corpus, cfg, model.config.crop_geometry)
    persons = sum(len(shard) for shard in crops)
    assert persons == corpus.persons, (persons, corpus.persons)
    model_s, model_cpu = time_model(model, shard_batches(crops, cfg.model.batch_size))
    del crops, model
    rows = [
        Row("model alone", model_s, model_cpu, persons),
        Row("crop preparation (1 core)", prep_s, prep_cpu, persons),
    ]
    modes: dict[str, list[str]] = {"pipeline in_memory": []}
    if args.workers:
        modes[f"pipeline multi_processing x{args.workers}"] = [
            "runner.running_mode=multi_processing",
            f"runner.num_workers={args.workers}",
        ]
    for name, mode in modes.items():
        mode_cfg = label_config(corpus, cfg.output, [*overrides(args), *mode])
        seconds, cpu, summary = time_pipeline(mode_cfg, args.full_size)
        assert summary["counts"]["persons_in"] == persons, summary["counts"]
        assert summary["reconciled"], summary["counts"]
        rows.append(Row(name, seconds, cpu, persons))
    print_rows(rows, rows[0].rate)

    print("peak memory of a fresh process running the pipeline in_memory (RSS, self + largest child):")
    peaks = {scale: measure_in_child(args, c.images) for scale, c in corpora.items()}
    for scale, peak in peaks.items():
        rate = peak["persons_in"] / peak["seconds"]
        print(f"  {scale}x: {peak['rss_mib']:>7.0f} MiB  ({peak['persons_in']} persons, {rate:.1f} persons/s)")
    print(f"  ratio 4x/1x: {peaks[4]['rss_mib'] / peaks[1]['rss_mib']:.2f} (flat = 1.00)")
    if not args.full_size:
        gpu = "run again with --full-size" if torch.cuda.is_available() else "needs an NVIDIA GPU (none here)"
        print(f"full-size model (official architecture, random weights): {gpu}")


if __name__ == "__main__":
    main()

"""Crop preparation per CPU core: the path before OpenCV, reference and fast crop modes, and the pipeline against
a stand-in model.

Generates a seeded corpus (in memory) of 1920x1080 and 640x480 JPEGs (q90, photographic-like: multi-scale
texture, edges and sensor noise) with 1-4 persons each, square keypoint boxes from 60 px to the full image height,
and in one run, on the same images, on one thread:
  before OpenCV  - the crop path before the fast mode existed (Pillow full-size decode, then OpenCV 4's bilinear
                   warp written out in numpy, which converts the whole image to float32 for every crop):
                   ``input.crop_mode=reference`` exactly as ``dpmesh-label`` runs it, with the warp it calls
                   (``dpmesh_core.preprocessing.warp_crop``) swapped for that numpy arithmetic
                   (``tests/fakes/opencv4_warp.py``) while it is measured; checked once to give the reference mode's
                   crops bit for bit. It also carries the reference mode's one float32 copy per image (the old path
                   had none): about 1.5 ms per 1080p image, some 3% of its time, by which it flatters the fast
                   path's ratio. Being slow (about 20 ms per 1080p crop), it runs ``max(1, repeats // 2)`` timed
                   repeats, the check's pass serving as its warm-up;
  reference      - ``input.crop_mode=reference``: Pillow full decode, float32 image, ``cv2.warpAffine`` (the official
                   float32 warp), per image;
  fast           - ``input.crop_mode=fast``: JPEG decode (OpenCV's libjpeg-turbo, straight to RGB) at 1/2-1/8 where
                   every crop keeps >= 1 decoded px per crop px, uint8 warp;
  decode floor   - the fast path's own decode only (header, then the same decoder at the same reduction, no planning,
                   no crop): what the fast path would cost if cropping were free;
and the PSNR of every fast crop against its reference crop (pooled over all crops, and the worst one). Rates are
crops per CPU second (``time.process_time``: user + system of this process), median of ``--repeats``.

Then it shards ``--pipeline-images`` images (the corpus repeated under new keys) with ``dpmesh-shard`` and runs
``dpmesh-label input.crop_mode=fast`` with a stand-in model that sleeps ``--model-s`` per batch
(``tests/fakes/fake_dpmesh.py`` with 256 px crops; at 0.2 s per batch of 8 it is the slower side: 40 persons/s against
a few hundred crops/s per preparation core), and compares the persons/s of labeling (the sum of the shards' own
``elapsed_s``: reading, decoding, cropping, the model, scoring, writing; Beam's start-up excluded) with the stand-in
alone (``batch_size / model_s``). The default 400 images (about 1,000 persons, 125 batches) make a shard's fixed
costs a few percent of it.

Last line: ``ratio_fast_vs_reference=<x> fast_vs_decode_floor=<x> crops_per_cpu_s_fast=<n>
crops_per_cpu_s_reference=<n> fast_crop_psnr_db=<n> pipeline_vs_model_only=<x> ratio_fast_vs_reference_mode=<x>
crops_per_cpu_s_reference_mode=<n>``, on the 1080p images. In the first six keys the baseline ("reference") is the
crop path before the fast mode existed: ``ratio_fast_vs_reference`` and
``crops_per_cpu_s_reference`` are the fast mode against the "before OpenCV" path above, measured in this run. The
last two give the fast mode against the current ``input.crop_mode=reference`` (OpenCV warp), the crops the PSNR
compares with.

Usage: python benchmarks/crop_prep.py [--images 24] [--repeats 3] [--pipeline-images 400] [--model-s 0.2]
                                     [--batch-size 8] [--cache DIR]
"""

import argparse
import contextlib
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
from PIL import Image

import dpmesh_core.preprocessing
from dpmesh_core.config import CropGeometry, official_config
from dpmesh_core.person_prediction import PersonPrediction
from dpmesh_core.preprocessing import PersonInputs
from pipelines.common.image_decode import open_image
from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.config.label import CropMode
from pipelines.label.job import run as label_run
from pipelines.label.persons import PersonTask, decode_for_crops, person_from_json, prepare_tasks
from pipelines.shard.job import run as shard_run
from tests.fakes.fake_dpmesh import FakeDPMeshHandler, FakePredictor, fake_prediction
from tests.fakes.opencv4_warp import opencv4_linear_warp


GEOMETRY = official_config().crop_geometry  # 256 px crops, as the official model cuts them
SIZES = ((1920, 1080), (640, 480))
PIXEL_LIMIT = 100_000_000


@dataclass(frozen=True)
class Sample:
    """One corpus image: its JPEG bytes, size and persons (the shard JSON's ``persons``)."""

    name: str
    data: bytes
    width: int
    height: int
    persons: list[dict[str, Any]]


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """`(H, W, 3)` uint8: noise summed over octaves (amplitude growing with scale, like natural images' 1/f
    spectrum), a few hard-edged shapes, and sensor noise of 3 grey levels."""
    image = np.zeros((height, width, 3), np.float32)
    for scale in (2, 8, 32, 128):
        small = rng.normal(0, 1, (height // scale + 2, width // scale + 2, 3)).astype(np.float32)
        image += cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC) * scale**0.7
    image = (image - image.mean()) / image.std() * 40 + 120
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(float(c) for c in rng.uniform(20, 235, 3))
        cv2.rectangle(
            image, (x, y), (x + int(rng.integers(20, width // 3)), y + int(rng.integers(20, height // 3))), colour, -1
        )
    image += rng.normal(0, 3, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def person(rng: np.random.Generator, width: int, height: int) -> dict[str, Any]:
    """A standing person's 17 COCO keypoints in a box of 60 px to the full image height (visibility 2)."""
    side = float(rng.uniform(60, height))
    cx, top = float(rng.uniform(0, width)), float(rng.uniform(0, max(1.0, height - side)))
    # (x offset in box widths, y in box heights) of nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles
    layout = [(0, 0.05), (-0.03, 0.03), (0.03, 0.03), (-0.06, 0.05), (0.06, 0.05), (-0.15, 0.18), (0.15, 0.18),
              (-0.2, 0.35), (0.2, 0.35), (-0.22, 0.5), (0.22, 0.5), (-0.1, 0.52), (0.1, 0.52), (-0.1, 0.75),
              (0.1, 0.75), (-0.1, 0.98), (0.1, 0.98)]  # fmt: skip
    keypoints = [[cx + dx * side + float(rng.normal(0, 2)), top + dy * side, 2] for dx, dy in layout]
    return {"bbox_xywh": [cx - 0.25 * side, top, 0.5 * side, side], "keypoints": keypoints}


def make_corpus(n: int, seed: int = 0) -> list[Sample]:
    """``n`` images alternating 1080p and 480p, each with 1-4 persons, JPEG q90."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        width, height = SIZES[i % len(SIZES)]
        buffer = io.BytesIO()
        Image.fromarray(texture(rng, width, height)).save(buffer, "JPEG", quality=90)
        persons = [person(rng, width, height) for _ in range(int(rng.integers(1, 5)))]
        samples.append(Sample(f"img_{i:05d}", buffer.getvalue(), width, height, persons))
    return samples


def prepare(sample: Sample, mode: CropMode) -> list[PersonInputs]:
    """Decode and crop every person of ``sample`` as ``dpmesh-label`` does in ``mode``."""
    opened = open_image(sample.data, max_image_pixels=PIXEL_LIMIT)
    decoded = decode_for_crops(opened, sample.persons, GEOMETRY, mode)
    persons = [(i, person_from_json(p)) for i, p in enumerate(sample.persons)]
    tasks = prepare_tasks(decoded, persons, shard="bench", image_key=sample.name, source_uri="", source="annotations",
                          geometry=GEOMETRY, crop_mode=mode)  # fmt: skip
    return [t.inputs for _, t in tasks if isinstance(t, PersonTask)]


@contextlib.contextmanager
def numpy_warp(warp: Callable[[np.ndarray, np.ndarray, int], np.ndarray] = opencv4_linear_warp) -> Iterator[None]:
    """The crop path before OpenCV, inside: the reference mode's warp (``dpmesh_core.preprocessing.warp_crop``, which
    ``cut_crop`` looks up in its module at each call) is ``warp``, the numpy arithmetic by default; restored after."""
    module = dpmesh_core.preprocessing
    original = module.warp_crop
    module.warp_crop = warp
    try:
        yield
    finally:
        module.warp_crop = original


def check_numpy_warp(samples: Sequence[Sample]) -> None:
    """The substituted path is the one measured and gives the reference mode's crops bit for bit."""
    calls = [0]

    def counted(image: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
        calls[0] += 1
        return opencv4_linear_warp(image, matrix, out_size)

    for s in samples:
        with numpy_warp(counted):
            before = prepare(s, CropMode.reference)
        reference = prepare(s, CropMode.reference)
        assert len(before) == len(reference) == len(s.persons), s.name
        for old, new in zip(before, reference, strict=True):
            assert np.array_equal(old.image, new.image), f"{s.name}: the numpy warp differs from cv2.warpAffine"
    crops = sum(len(s.persons) for s in samples)
    assert calls[0] == crops, f"the numpy warp cut {calls[0]} of {crops} crops: the substitution missed the path"


def chosen_reduction(sample: Sample) -> int:
    opened = open_image(sample.data, max_image_pixels=PIXEL_LIMIT)
    return decode_for_crops(opened, sample.persons, GEOMETRY, CropMode.fast).reduction


def cpu_time(work: Callable[[], object], repeats: int, *, warm_up: bool = True) -> float:
    """Median CPU seconds of ``repeats`` runs of ``work`` (after one untimed warm-up, unless ``warm_up`` is off)."""
    if warm_up:
        work()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def psnr_db(mse: float) -> float:
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def measure_crops(samples: Sequence[Sample], repeats: int) -> dict[str, float]:
    crops = sum(len(s.persons) for s in samples)
    reductions = [chosen_reduction(s) for s in samples]
    check_numpy_warp(samples)  # also its warm-up: every crop of the path just cut once
    with numpy_warp():
        before_s = cpu_time(
            lambda: [prepare(s, CropMode.reference) for s in samples], max(1, repeats // 2), warm_up=False
        )
    ref_s = cpu_time(lambda: [prepare(s, CropMode.reference) for s in samples], repeats)
    fast_s = cpu_time(lambda: [prepare(s, CropMode.fast) for s in samples], repeats)
    floor_s = cpu_time(
        lambda: [
            open_image(s.data, max_image_pixels=PIXEL_LIMIT).decode(d, fast=True)
            for s, d in zip(samples, reductions, strict=True)
        ],
        repeats,
    )
    errors = []
    for s in samples:
        for ref, fast in zip(prepare(s, CropMode.reference), prepare(s, CropMode.fast), strict=True):
            errors.append(float(np.mean(((ref.image - fast.image) * 255.0) ** 2)))
    return {
        "crops": crops,
        "before_per_cpu_s": crops / before_s,
        "reference_per_cpu_s": crops / ref_s,
        "fast_per_cpu_s": crops / fast_s,
        "floor_per_cpu_s": crops / floor_s,
        "psnr_db": psnr_db(float(np.mean(errors))),
        "worst_psnr_db": psnr_db(max(errors)),
        "reductions": {d: reductions.count(d) for d in sorted(set(reductions))},
    }


class _Predictor256(FakePredictor):
    """The stand-in model with the official model's 256 px crops."""

    def crop_geometry(self) -> CropGeometry:
        return GEOMETRY

    def predict(
        self, persons: Sequence[PersonInputs], flip_consistency: bool = False, caller: int | None = None
    ) -> tuple[list[PersonPrediction], list[float | None]]:
        with self._gate.call(caller):
            return [fake_prediction(p, GEOMETRY) for p in persons], [None for _ in persons]


class _Handler256(FakeDPMeshHandler):
    def load_model(self) -> FakePredictor:
        return _Predictor256(super().load_model()._gate)


def measure_pipeline(
    samples: Sequence[Sample], root: Path, model_s: float, batch_size: int, n_images: int
) -> dict[str, float]:
    """dpmesh-label (fast crops) persons/s with the stand-in model, against the stand-in alone, on ``n_images``
    images (``samples`` repeated under new names)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    for image_id in range(1, n_images + 1):
        s = samples[(image_id - 1) % len(samples)]
        name = f"img_{image_id:06d}"
        (images / f"{name}.jpg").write_bytes(s.data)
        coco["images"].append({"id": image_id, "file_name": f"{name}.jpg", "width": s.width, "height": s.height})
        for p in s.persons:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": p["bbox_xywh"], "keypoints": [v for kp in p["keypoints"] for v in kp], "num_keypoints": 17,
                "area": p["bbox_xywh"][2] * p["bbox_xywh"][3],
            })  # fmt: skip
    (root / "coco.json").write_text(json.dumps(coco))
    shard_cfg = compose_config(
        "dpmesh_shard",
        [f"input.images={images}", f"input.annotations={root / 'coco.json'}", f"output={root / 'shards'}",
         "shard.max_samples=1000", "overwrite=true", "log_level=WARNING"],
        ShardJobConfig,
    )  # fmt: skip
    shard_run(shard_cfg)
    cfg = compose_config(
        "dpmesh_label",
        [f"input.shards={root / 'shards'}", f"output={root / 'labels'}", "overwrite=true", "progress_interval_s=0",
         "log_level=WARNING", "input.crop_mode=fast", f"model.batch_size={batch_size}"],
        LabelJobConfig,
    )  # fmt: skip
    label_run(cfg, handler=_Handler256(cfg.model, seconds_per_batch=model_s))
    markers = [json.loads(p.read_text()) for p in sorted((root / "labels" / "_done").glob("*.json"))]
    persons = sum(m["counts"]["persons_in"] for m in markers)
    elapsed = sum(m["elapsed_s"] for m in markers)
    batches = sum(-(-m["counts"]["persons_in"] // batch_size) for m in markers)
    return {"persons": persons, "pipeline_per_s": persons / elapsed, "model_per_s": persons / (batches * model_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline-images", type=int, default=400, help="images labeled by dpmesh-label")
    parser.add_argument("--model-s", type=float, default=0.2, help="stand-in model seconds per batch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # per core: the pipeline runs OpenCV single-threaded too
    samples = make_corpus(args.images)
    for width, height in SIZES:
        sizes = [len(s.data) for s in samples if s.width == width]
        print(f"{width}x{height}: {len(sizes)} JPEGs q90, {np.mean(sizes) / 1e3:.0f} kB mean "
              f"({min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} kB)")  # fmt: skip
    print("| images | crops | before OpenCV (Pillow + numpy warp) crops/CPU-s | reference mode (OpenCV warp) "
          "crops/CPU-s | fast crops/CPU-s | fast / before OpenCV | fast / reference mode | decode floor crops/CPU-s "
          "| fast / floor | PSNR dB (worst) | reductions |")  # fmt: skip
    results = {}
    for width, height in SIZES:
        subset = [s for s in samples if s.width == width]
        r = measure_crops(subset, args.repeats)
        results[width] = r
        print(f"| {width}x{height} | {r['crops']} | {r['before_per_cpu_s']:.0f} | {r['reference_per_cpu_s']:.0f} | "
              f"{r['fast_per_cpu_s']:.0f} | {r['fast_per_cpu_s'] / r['before_per_cpu_s']:.2f} | "
              f"{r['fast_per_cpu_s'] / r['reference_per_cpu_s']:.2f} | {r['floor_per_cpu_s']:.0f} | "
              f"{r['fast_per_cpu_s'] / r['floor_per_cpu_s']:.2f} | {r['psnr_db']:.1f} ({r['worst_psnr_db']:.1f}) | "
              f"{r['reductions']} |")  # fmt: skip
    root = args.cache or Path(tempfile.mkdtemp(prefix="crop-prep-"))
    try:
        pipe = measure_pipeline(samples, root, args.model_s, args.batch_size, args.pipeline_images)
    finally:
        if args.cache is None:
            shutil.rmtree(root, ignore_errors=True)
    ratio_pipe = pipe["pipeline_per_s"] / pipe["model_per_s"]
    print(f"dpmesh-label input.crop_mode=fast, stand-in model {args.model_s} s per batch of {args.batch_size}: "
          f"{pipe['pipeline_per_s']:.1f} persons/s against {pipe['model_per_s']:.1f} for the model alone "
          f"({pipe['persons']} persons)")  # fmt: skip
    hd = results[1920]
    print(
        f"ratio_fast_vs_reference={hd['fast_per_cpu_s'] / hd['before_per_cpu_s']:.2f} "
        f"fast_vs_decode_floor={hd['fast_per_cpu_s'] / hd['floor_per_cpu_s']:.2f} "
        f"crops_per_cpu_s_fast={hd['fast_per_cpu_s']:.0f} crops_per_cpu_s_reference={hd['before_per_cpu_s']:.0f} "
        f"fast_crop_psnr_db={hd['psnr_db']:.1f} pipeline_vs_model_only={ratio_pipe:.2f} "
        f"ratio_fast_vs_reference_mode={hd['fast_per_cpu_s'] / hd['reference_per_cpu_s']:.2f} "
        f"crops_per_cpu_s_reference_mode={hd['reference_per_cpu_s']:.0f}"
    )


if __name__ == "__main__":
    main()

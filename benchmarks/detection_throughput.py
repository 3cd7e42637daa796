"""Finding people: images/s through the person detector + top-down keypoints, as the pipeline runs them.

Per image batch (``--batch-size`` images, as ``detector.batch_size``): RT-DETR on the batch, the top-down crops of
its persons (at most ``--max-persons`` each), ViTPose on them in batches of ``--pose-batch-size``: the code of the
detection stage (:mod:`pipelines.label.detection.models`), without Beam. Images are seeded synthetic 640x480 scenes,
decoded beforehand (decode cost is measured by ``benchmarks/shard_throughput.py``). One warm-up batch is not timed.

Default: the tiny random RT-DETR and ViTPose of the tests (same classes, tiny widths) on CPU: it measures the
pipeline code's CPU overhead (pre-processing, crops, heatmap decoding), not a real model. With ``--full-size`` on
a machine with an NVIDIA GPU: the real-size configurations (RT-DETR R50vd as ``PekingU/rtdetr_r50vd_coco_o365``,
ViTPose-B as ``usyd-community/vitpose-base-simple``) with random weights on ``cuda``; the weights being random,
the detector finds ``--max-persons`` people per image at any score (``min_score=0``), so the keypoint model's load
is the cap.

Usage: python benchmarks/detection_throughput.py [--images 32] [--batch-size 8] [--pose-batch-size 32]
                                                 [--max-persons 4] [--full-size] [--dtype float16]
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import DetectorConfig, DetectorName, Device, DType
from pipelines.config.storage import StorageConfig
from pipelines.label.detection.models import detect_persons, estimate_keypoints, load_detector, load_pose_model
from pipelines.label.detection.person_crops import box_center_scale, crop_person
from tests.fakes.corpus import make_images
from tests.fakes.tiny_detectors import save_tiny_detector, save_tiny_pose


def save_full_size(root: Path) -> tuple[str, str]:
    """Real-size RT-DETR (R50vd, 80 COCO classes) and ViTPose-B with random weights, saved like checkpoints."""
    from transformers import (
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrImageProcessor,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    labels = {i: f"class_{i}" for i in range(80)} | {0: "person"}
    detector = RTDetrForObjectDetection(RTDetrConfig(num_labels=80, id2label=labels, label2id={"person": 0}))
    detector.save_pretrained(root / "det")
    RTDetrImageProcessor(size={"height": 640, "width": 640}).save_pretrained(root / "det")
    pose = VitPoseForPoseEstimation(VitPoseConfig(num_labels=17))  # ViT-B backbone, 256x192 input
    pose.save_pretrained(root / "pose")
    VitPoseImageProcessor().save_pretrained(root / "pose")
    return str(root / "det"), str(root / "pose")


def run_batches(detector, pose, images, cfg: DetectorConfig) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Detection + keypoints over ``images`` as the pipeline batches them; returns (images, persons)."""
    persons = 0
    for start in range(0, len(images), cfg.batch_size):
        batch = images[start : start + cfg.batch_size]
        found = detect_persons(detector, batch, min_score=cfg.min_score, max_persons=cfg.max_persons)
        crops, centers, scales = [], [], []
        for image, (boxes, _) in zip(batch, found, strict=True):
            for box in boxes:
                center, scale = box_center_scale(box, pose.input_hw)
                crops.append(crop_person(image, center, scale, pose.input_hw))
                centers.append(center)
                scales.append(scale)
        for p in range(0, len(crops), cfg.pose_batch_size):
            chunk = slice(p, p + cfg.pose_batch_size)
            estimate_keypoints(pose, np.stack(crops[chunk]), np.stack(centers[chunk]), np.stack(scales[chunk]))
        persons += len(crops)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(images), persons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pose-batch-size", type=int, default=32)
    parser.add_argument("--max-persons", type=int, default=4)
    parser.add_argument("--full-size", action="store_true", help="real-size models with random weights on a GPU")
    parser.add_argument("--dtype", choices=[d.value for d in DType], default="float32")
    args = parser.parse_args()

    if args.full_size and not torch.cuda.is_available():
        print("--full-size needs an NVIDIA GPU (torch.cuda.is_available() is False here); run without it for the")
        print("CPU measurement with the tiny models, or on a GPU machine for the real-size configurations.")
        sys.exit(2)
    torch.manual_seed(0)
    scenes = make_images(args.images, seed=3, width=640, height=480, persons=(1, 3))
    images = [np.asarray(Image.open(io.BytesIO(s.data)).convert("RGB")) for s in scenes]
    with tempfile.TemporaryDirectory(prefix="dpmesh-detbench-") as tmp:
        root = Path(tmp)
        if args.full_size:
            det_path, pose_path = save_full_size(root)
        else:
            det_path, pose_path = save_tiny_detector(root / "det"), save_tiny_pose(root / "pose")
        cfg = DetectorConfig(
            name=DetectorName.vitpose,
            detector_model=det_path,
            pose_model=pose_path,
            device=Device.cuda if args.full_size else Device.cpu,
            dtype=DType(args.dtype),
            batch_size=args.batch_size,
            pose_batch_size=args.pose_batch_size,
            min_score=0.0,
            max_persons=args.max_persons,
        )
        started = time.perf_counter()
        detector, pose = load_detector(cfg, StorageConfig()), load_pose_model(cfg, StorageConfig())
        load_s = time.perf_counter() - started
        run_batches(detector, pose, images[: args.batch_size], cfg)  # warm-up
        started = time.perf_counter()
        cpu_started = time.process_time()
        n_images, n_persons = run_batches(detector, pose, images, cfg)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started

    device = torch.cuda.get_device_name() if args.full_size else f"CPU ({torch.get_num_threads()} torch threads)"
    kind = "full-size (RT-DETR R50vd + ViTPose-B), random weights" if args.full_size else "tiny random models"
    print(f"detection + keypoints, {kind}, {device}, {args.dtype}")
    print(f"  batch {args.batch_size} images, pose batch {args.pose_batch_size}, <= {args.max_persons} persons/image")
    print(f"  model load        {load_s:8.2f} s")
    print(f"  images            {n_images:8d}     persons {n_persons}")
    print(f"  wall              {wall:8.2f} s     cpu {cpu:.2f} s")
    print(f"  images/s          {n_images / wall:8.2f}")
    print(f"  persons/s         {n_persons / wall:8.2f}")


if __name__ == "__main__":
    main()

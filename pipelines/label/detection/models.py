"""The two models that find people: a person detector and a top-down COCO-17 keypoint model (``transformers``).

* Detector: any ``AutoModelForObjectDetection`` checkpoint with a ``person`` label and DETR-style outputs
  (``logits``, ``pred_boxes`` as normalised cx, cy, w, h), e.g. RT-DETR / RT-DETRv2. Images are prepared by the
  checkpoint's own image processor.
* Keypoints: ``VitPoseForPoseEstimation``. The top-down crop (box padded x1.25 to the model's aspect ratio,
  affine-warped to its input size: :mod:`pipelines.label.detection.person_crops`) and the heatmap decoding
  (argmax with a quarter-pixel shift towards the higher neighbour, mapped back through the box) follow
  transformers' ``VitPoseImageProcessor`` (``box_to_center_and_scale``, ``get_warp_matrix``,
  ``transform_preds``), implemented on numpy and PIL because that processor needs scipy, which the workers do
  not ship. Normalisation constants and input size come from the checkpoint's ``preprocessor_config.json``.

Weights come from a local directory, an object-store prefix (copied once with :func:`pipelines.weights.local_copy`)
or a hub id (``from_pretrained``; the hub cache makes later runs work offline).
"""

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.common.torch_device import TORCH_DTYPES, checked_device
from pipelines.config import ConfigError, DetectorConfig
from pipelines.config.storage import StorageConfig
from pipelines.label.detection.person_crops import NORMALIZE_FACTOR
from pipelines.storage import parse_uri
from pipelines.weights import local_copy


logger = logging.getLogger(__name__)

PERSON_LABEL = "person"


def resolve_weights(source: str, cache_dir: str, storage_cfg: StorageConfig) -> str:
    """A local directory for an object-store prefix; local paths and hub ids unchanged."""
    if parse_uri(source).scheme in ("s3", "gs"):
        return local_copy(source, os.path.expanduser(cache_dir), storage_cfg)
    return source


def _pretrained_kwargs(source: str, revision: str | None) -> dict[str, Any]:
    """``from_pretrained`` arguments: a revision only for hub ids (a local folder has none)."""
    return {} if os.path.isdir(source) or revision is None else {"revision": revision}


def weights_id(model: Any, source: str, revision: str | None) -> str:
    """What produced the detections: ``<source>@<commit or revision>`` (hub commit when the hub resolved one)."""
    commit = getattr(model.config, "_commit_hash", None) or revision
    return f"{source}@{commit}" if commit else source


def check_detector_device(cfg: DetectorConfig) -> torch.device:
    """The detector's device; fails at launch when ``detector.device=cuda`` and no GPU is visible."""
    return checked_device(cfg.device, "detector.device")


@dataclass
class LoadedDetector:
    """A person detector on its device with its image processor and person class index."""

    model: Any
    processor: Any
    person_label: int
    focal_loss: bool
    model_id: str


@dataclass
class LoadedPoseModel:
    """A ViTPose model on its device with its input size (h, w) and normalisation."""

    model: Any
    input_hw: tuple[int, int]
    mean: np.ndarray
    std: np.ndarray
    rescale: float
    model_id: str


def load_detector(cfg: DetectorConfig, storage_cfg: StorageConfig) -> LoadedDetector:
    """The configured detector, in eval mode.

    Raises:
        ConfigError: if the checkpoint has no ``person`` label.
    """
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    source = resolve_weights(cfg.detector_model, cfg.cache_dir, storage_cfg)
    kwargs = _pretrained_kwargs(source, cfg.detector_revision)
    model = AutoModelForObjectDetection.from_pretrained(source, **kwargs)
    processor = AutoImageProcessor.from_pretrained(source, **kwargs)
    labels = {str(name).lower(): int(idx) for idx, name in model.config.id2label.items()}
    if PERSON_LABEL not in labels:
        raise ConfigError(f"detector.detector_model={cfg.detector_model!r} has no 'person' label in id2label")
    model = model.to(device=check_detector_device(cfg), dtype=TORCH_DTYPES[cfg.dtype]).eval()
    return LoadedDetector(
        model=model,
        processor=processor,
        person_label=labels[PERSON_LABEL],
        focal_loss=bool(getattr(model.config, "use_focal_loss", True)),
        model_id=weights_id(model, cfg.detector_model, cfg.detector_revision),
    )


def load_pose_model(cfg: DetectorConfig, storage_cfg: StorageConfig) -> LoadedPoseModel:
    """The configured ViTPose model, in eval mode, with its preprocessing constants."""
    from transformers import AutoImageProcessor, VitPoseForPoseEstimation

    source = resolve_weights(cfg.pose_model, cfg.cache_dir, storage_cfg)
    kwargs = _pretrained_kwargs(source, cfg.pose_revision)
    model = VitPoseForPoseEstimation.from_pretrained(source, **kwargs)
    processor = AutoImageProcessor.from_pretrained(source, **kwargs)
    if model.config.num_labels != 17:
        raise ConfigError(
            f"detector.pose_model={cfg.pose_model!r} predicts {model.config.num_labels} keypoints, not COCO-17"
        )
    height, width = _input_hw(processor)
    model = model.to(device=check_detector_device(cfg), dtype=TORCH_DTYPES[cfg.dtype]).eval()
    return LoadedPoseModel(
        model=model,
        input_hw=(int(height), int(width)),
        mean=np.asarray(processor.image_mean, dtype=np.float32),
        std=np.asarray(processor.image_std, dtype=np.float32),
        rescale=float(getattr(processor, "rescale_factor", 1 / 255)),
        model_id=weights_id(model, cfg.pose_model, cfg.pose_revision),
    )


def _input_hw(processor: Any) -> tuple[int, int]:
    size = processor.size
    height, width = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
    return int(height), int(width)


def pose_input_size(cfg: DetectorConfig, storage_cfg: StorageConfig) -> tuple[int, int]:
    """The pose model's input `(h, w)` from its image processor config (the weights are not loaded)."""
    from transformers import AutoImageProcessor

    source = resolve_weights(cfg.pose_model, cfg.cache_dir, storage_cfg)
    return _input_hw(AutoImageProcessor.from_pretrained(source, **_pretrained_kwargs(source, cfg.pose_revision)))


def detect_persons(
    detector: LoadedDetector, images: list[np.ndarray], *, min_score: float, max_persons: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image ``(boxes (N, 4) xyxy px float32, scores (N,) float32)``: persons with score >= ``min_score``.

    ``images`` are `(H, W, 3)` uint8 RGB. Boxes are clipped to the image; persons are ordered by score, highest
    first (ties by box), at most ``max_persons``.
    """
    param = next(detector.model.parameters())
    inputs = detector.processor(images=images, return_tensors="pt")
    pixels = inputs["pixel_values"].to(device=param.device, dtype=param.dtype)
    with torch.inference_mode():
        outputs = detector.model(pixel_values=pixels)
    logits = outputs.logits.float()
    probs = logits.sigmoid() if detector.focal_loss else logits.softmax(-1)
    scores_all = probs[..., detector.person_label].cpu().numpy()
    boxes_all = outputs.pred_boxes.float().cpu().numpy()
    results = []
    for image, scores, cxcywh in zip(images, scores_all, boxes_all, strict=True):
        h, w = image.shape[:2]
        boxes = np.stack(
            [
                (cxcywh[:, 0] - cxcywh[:, 2] / 2) * w,
                (cxcywh[:, 1] - cxcywh[:, 3] / 2) * h,
                (cxcywh[:, 0] + cxcywh[:, 2] / 2) * w,
                (cxcywh[:, 1] + cxcywh[:, 3] / 2) * h,
            ],
            axis=1,
        )
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        keep = (scores >= min_score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        order = sorted(np.flatnonzero(keep), key=lambda i: (-float(scores[i]), *boxes[i].tolist()))[:max_persons]
        results.append((boxes[order].reshape(-1, 4), scores[order].astype(np.float32)))
    return results


def estimate_keypoints(
    pose: LoadedPoseModel, crops: np.ndarray, centers: np.ndarray, scales: np.ndarray
) -> np.ndarray:
    """`(N, 17, 3)` float32 COCO-17 keypoints (x, y image px, score clipped to [0, 1]) of `(N, h, w, 3)` crops."""
    if not len(crops):
        return np.zeros((0, 17, 3), dtype=np.float32)
    param = next(pose.model.parameters())
    pixels = (crops.astype(np.float32) * pose.rescale - pose.mean) / pose.std
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        heatmaps = pose.model(pixel_values=tensor.to(device=param.device, dtype=param.dtype)).heatmaps
    return decode_heatmaps(heatmaps.float().cpu().numpy(), centers, scales)


def decode_heatmaps(heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """`(N, K, 3)` keypoints in image px from `(N, K, H, W)` heatmaps of boxes ``(centers, scales)``.

    Argmax, shifted a quarter pixel towards the higher neighbour (the classic top-down refinement), then mapped
    back through the box as transformers' ``transform_preds`` does (unbiased: heatmap ``W - 1`` spans the box).
    """
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    index = flat.argmax(-1)
    score = np.take_along_axis(flat, index[..., None], -1)[..., 0]
    x, y = (index % w).astype(np.float32), (index // w).astype(np.float32)
    xi, yi = (index % w), (index // w)
    rows = np.arange(n)[:, None], np.arange(k)[None, :]
    right = heatmaps[(*rows, yi, np.minimum(xi + 1, w - 1))]
    left = heatmaps[(*rows, yi, np.maximum(xi - 1, 0))]
    down = heatmaps[(*rows, np.minimum(yi + 1, h - 1), xi)]
    up = heatmaps[(*rows, np.maximum(yi - 1, 0), xi)]
    x += 0.25 * np.sign(right - left) * ((xi > 0) & (xi < w - 1))
    y += 0.25 * np.sign(down - up) * ((yi > 0) & (yi < h - 1))
    size = scales * NORMALIZE_FACTOR
    px = x * (size[:, 0:1] / (w - 1)) + centers[:, 0:1] - size[:, 0:1] / 2
    py = y * (size[:, 1:2] / (h - 1)) + centers[:, 1:2] - size[:, 1:2] / 2
    conf = np.clip(np.nan_to_num(score, nan=0.0), 0.0, 1.0)
    return np.stack([px, py, conf], axis=-1).astype(np.float32)

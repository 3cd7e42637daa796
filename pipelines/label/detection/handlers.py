"""Beam ``ModelHandler`` s of the detection stage: a person detector and a top-down keypoint model.

Like the DPMesh handler, each element already is one forward pass, cut in shard order by the stage's readers
(an :class:`ImageBatch` of ``detector.batch_size`` images, a :class:`PoseBatch` of at most
``detector.pose_batch_size`` persons), so every rerun computes each image and person in the same batch and
gives the same bits. One model per process, one per machine on GPU (``share_model_across_processes``).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.config import DetectorConfig, Device
from pipelines.config.storage import StorageConfig
from pipelines.label.detection.models import (
    LoadedDetector,
    LoadedPoseModel,
    cached,
    detect_persons,
    estimate_keypoints,
)
from pipelines.label.detection.records import DetectedPerson
from pipelines.label.inputs import AnnotatedPerson


METRICS_NAMESPACE = "dpmesh_detection"


@dataclass(frozen=True)
class ImageBatch:
    """Consecutive images of a shard that need detection, decoded (`(H, W, 3)` uint8 RGB)."""

    batch_id: str
    shard: str
    keys: tuple[str, ...]
    images: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Detections:
    """The detector's persons of one image: `(N, 4)` xyxy px boxes and `(N,)` scores, highest first."""

    key: str
    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class PoseItem:
    """One detected person's top-down crop and where it came from."""

    key: str
    box_idx: int
    n_boxes: int
    crop: np.ndarray  # (h, w, 3) uint8 at the pose model's input size
    center: np.ndarray
    scale: np.ndarray
    box_xyxy: np.ndarray
    score: float


@dataclass(frozen=True)
class PoseBatch:
    """Consecutive detected persons of a shard, one keypoint forward pass."""

    batch_id: str
    shard: str
    items: tuple[PoseItem, ...]


class _Handler(ModelHandler):  # type: ignore[type-arg]
    def __init__(
        self, cfg: DetectorConfig, storage_cfg: StorageConfig, resource_hints: dict[str, str] | None = None
    ) -> None:
        self._cfg = cfg
        self._storage_cfg = storage_cfg
        self._resource_hints = dict(resource_hints or {})

    def get_resource_hints(self) -> dict[str, str]:
        return dict(self._resource_hints)  # right fitting: only the model steps run on GPU workers

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 1}  # each element is a model batch already

    def share_model_across_processes(self) -> bool:
        return self._cfg.device == Device.cuda

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class PersonDetectorHandler(_Handler):
    """:class:`ImageBatch` -> ``PredictionResult(example=the batch, inference=[Detections per image])``.

    The result keeps the batch (its images) so the next fused step crops persons without a second decode;
    nothing after that step holds pixels.
    """

    def load_model(self) -> LoadedDetector:
        model: LoadedDetector = cached("detector", self._cfg, self._storage_cfg)
        return model

    def run_inference(
        self, batch: Sequence[ImageBatch], model: LoadedDetector, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        results = []
        for image_batch in batch:
            found = detect_persons(
                model, list(image_batch.images), min_score=self._cfg.min_score, max_persons=self._cfg.max_persons
            )
            inference = [
                Detections(key, boxes, scores) for key, (boxes, scores) in zip(image_batch.keys, found, strict=True)
            ]
            results.append(PredictionResult(example=image_batch, inference=inference, model_id=model.model_id))
        return results

    def get_num_bytes(self, batch: Sequence[ImageBatch]) -> int:
        return sum(image.nbytes for image_batch in batch for image in image_batch.images)


class KeypointHandler(_Handler):
    """:class:`PoseBatch` -> ``PredictionResult(example=batch id, inference=[DetectedPerson per item])``."""

    def load_model(self) -> LoadedPoseModel:
        model: LoadedPoseModel = cached("pose", self._cfg, self._storage_cfg)
        return model

    def run_inference(
        self, batch: Sequence[PoseBatch], model: LoadedPoseModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        results = []
        for pose_batch in batch:
            items = pose_batch.items
            keypoints = estimate_keypoints(
                model,
                np.stack([item.crop for item in items]),
                np.stack([item.center for item in items]),
                np.stack([item.scale for item in items]),
            )
            persons = [
                DetectedPerson(
                    item.key, item.box_idx, item.n_boxes, AnnotatedPerson(item.box_xyxy, kp, float(item.score))
                )
                for item, kp in zip(items, keypoints, strict=True)
            ]
            results.append(PredictionResult(example=pose_batch.batch_id, inference=persons, model_id=model.model_id))
        return results

    def get_num_bytes(self, batch: Sequence[PoseBatch]) -> int:
        return sum(item.crop.nbytes for pose_batch in batch for item in pose_batch.items)

"""Beam ``ModelHandler`` s of the detection stage: a person detector and a top-down keypoint model.

Like the DPMesh handler, each element already is one forward pass, cut in shard order by the stage's readers
(an :class:`ImageBatch` of ``detector.batch_size`` images, a :class:`PoseBatch` of at most
``detector.pose_batch_size`` persons), so every rerun computes each image and person in the same batch and
gives the same bits. One model per process, one per machine on GPU (``share_model_across_processes``); a shared
model's calls overlap, bounded by its :class:`~pipelines.common.model_host.CallGate` (``detector.concurrent_calls``).
"""

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.base import PredictionResult

from pipelines.common.batch_handler import PerBatchModelHandler
from pipelines.common.metrics import DETECTION_METRICS
from pipelines.common.model_host import CallGate, HostStats, OverlapProbe
from pipelines.config import DetectorConfig
from pipelines.config.storage import StorageConfig
from pipelines.label.detection.models import (
    LoadedDetector,
    LoadedPoseModel,
    detect_persons,
    estimate_keypoints,
    load_detector,
    load_pose_model,
)
from pipelines.label.detection.records import DetectedPerson, Detections, ImageBatch, PoseBatch
from pipelines.label.persons import AnnotatedPerson


class DetectorService:
    """A loaded person detector behind methods only (what a shared model's proxy can forward); calls pass through
    ``gate`` and keep nothing between them."""

    def __init__(self, loaded: LoadedDetector, threads: int, gate: CallGate) -> None:
        self._loaded = loaded
        self._threads = threads
        self._gate = gate

    def model_id(self) -> str:
        return self._loaded.model_id

    def host_stats(self) -> HostStats:
        return self._gate.stats()

    def detect(
        self, images: list[np.ndarray], min_score: float, max_persons: int, caller: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image ``(boxes (N, 4) xyxy px, scores (N,))``; see :func:`detect_persons`."""
        with self._gate.call(caller):
            torch.set_num_threads(self._threads)  # per call: see DPMeshPredictor.predict
            return detect_persons(self._loaded, images, min_score=min_score, max_persons=max_persons)


class PoseService:
    """A loaded ViTPose model behind methods only; calls pass through ``gate`` and keep nothing between them."""

    def __init__(self, loaded: LoadedPoseModel, threads: int, gate: CallGate) -> None:
        self._loaded = loaded
        self._threads = threads
        self._gate = gate

    def model_id(self) -> str:
        return self._loaded.model_id

    def host_stats(self) -> HostStats:
        return self._gate.stats()

    def input_hw(self) -> tuple[int, int]:
        """The model's input `(h, w)` in px, the size of the top-down crops it takes."""
        return self._loaded.input_hw

    def estimate(
        self, crops: np.ndarray, centers: np.ndarray, scales: np.ndarray, caller: int | None = None
    ) -> np.ndarray:
        """`(N, 17, 3)` COCO-17 keypoints in image px; see :func:`estimate_keypoints`."""
        with self._gate.call(caller):
            torch.set_num_threads(self._threads)  # per call: see DPMeshPredictor.predict
            return estimate_keypoints(self._loaded, crops, centers, scales)


def _install_probe(model: Any, probe: OverlapProbe | None) -> None:
    """The overlap test hook after the network's backbone (RT-DETR: ``model.backbone``; ViTPose: ``backbone``),
    mid-pass: the encoder, decoder or head of the held call still has to run."""
    if probe is None:
        return
    modules = dict(model.named_modules())
    name = next((n for n in ("model.backbone", "backbone") if n in modules), None)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no backbone module to hold calls at")
    modules[name].register_forward_hook(probe)


class _Handler(PerBatchModelHandler[Any, Any, Any]):
    """The detection handlers' common part: configs, and the policy of :class:`PerBatchModelHandler`."""

    metrics_namespace = DETECTION_METRICS
    _cfg: DetectorConfig

    def __init__(
        self, cfg: DetectorConfig, storage_cfg: StorageConfig, resource_hints: dict[str, str] | None = None
    ) -> None:
        super().__init__(cfg, resource_hints)
        self._storage_cfg = storage_cfg


class PersonDetectorHandler(_Handler):
    """:class:`ImageBatch` -> ``PredictionResult(example=the batch, inference=[Detections per image])``.

    The result keeps the batch (its images) so the next fused step crops persons without a second decode;
    nothing after that step holds pixels.
    """

    kind = "detector"

    def load_model(self) -> DetectorService:
        gate = self.call_gate()
        loaded = load_detector(self._cfg, self._storage_cfg)
        _install_probe(loaded.model, self.overlap_probe())
        return DetectorService(loaded, self._cfg.threads, gate)

    def run_inference(
        self, batch: Sequence[ImageBatch], model: DetectorService, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        results = []
        model_id = model.model_id()
        for image_batch in batch:
            found = model.detect(list(image_batch.images), self._cfg.min_score, self._cfg.max_persons, os.getpid())
            inference = [
                Detections(key, boxes, scores) for key, (boxes, scores) in zip(image_batch.keys, found, strict=True)
            ]
            results.append(PredictionResult(example=image_batch, inference=inference, model_id=model_id))
        return results

    def get_num_bytes(self, batch: Sequence[ImageBatch]) -> int:
        return sum(image.nbytes for image_batch in batch for image in image_batch.images)


class KeypointHandler(_Handler):
    """:class:`PoseBatch` -> ``PredictionResult(example=batch id, inference=[DetectedPerson per item])``."""

    kind = "pose"

    def load_model(self) -> PoseService:
        gate = self.call_gate()
        loaded = load_pose_model(self._cfg, self._storage_cfg)
        _install_probe(loaded.model, self.overlap_probe())
        return PoseService(loaded, self._cfg.threads, gate)

    def run_inference(
        self, batch: Sequence[PoseBatch], model: PoseService, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        results = []
        model_id = model.model_id()
        for pose_batch in batch:
            items = pose_batch.items
            keypoints = model.estimate(
                np.stack([item.crop for item in items]),
                np.stack([item.center for item in items]),
                np.stack([item.scale for item in items]),
                os.getpid(),
            )
            persons = [
                DetectedPerson(
                    item.key, item.box_idx, item.n_boxes, AnnotatedPerson(item.box_xyxy, kp, float(item.score))
                )
                for item, kp in zip(items, keypoints, strict=True)
            ]
            results.append(PredictionResult(example=pose_batch.batch_id, inference=persons, model_id=model_id))
        return results

    def get_num_bytes(self, batch: Sequence[PoseBatch]) -> int:
        return sum(item.crop.nbytes for pose_batch in batch for item in pose_batch.items)

"""Detection inside the per-shard labeling step: the persons of the images that have none in their annotations.

The shard reader hands over decoded images in shard order; those that need detection (every image with
``detector=vitpose``, the unannotated ones with ``auto``) are detected in batches of ``detector.batch_size``
consecutive images, their persons cropped and their keypoints estimated in batches of ``detector.pose_batch_size``
(cut per detector batch, in image and score order). The batches are therefore the same on every run and runner,
and so are the bits. Decoded images never leave the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import DetectorConfig, DetectorName
from pipelines.label.detection.person_crops import box_center_scale, crop_person
from pipelines.label.detection.records import (
    DetectionFailure,
    ImageBatch,
    ImageDetections,
    ModelUsed,
    PoseBatch,
    PoseItem,
    ShardDetections,
    assemble,
)


if TYPE_CHECKING:  # the handlers import torch and transformers; this module runs where no model is loaded
    from pipelines.label.detection.handlers import KeypointHandler, PersonDetectorHandler


def needs_detection(detector: DetectorName, meta: dict[str, Any]) -> bool:
    """Whether a sample's persons come from detection: always for ``vitpose``, unannotated samples for ``auto``."""
    if detector == DetectorName.vitpose:
        return True
    return detector == DetectorName.auto and not meta.get("annotated")


class ShardDetector:
    """Finds persons in batches of images with a detector and a keypoint model, both used through their handlers.

    Args:
        cfg: The detector config (batch sizes, thresholds).
        detector_handler, pose_handler: The two Beam model handlers.
        detector_model, pose_model: What their ``load_model`` returned (or a proxy to it in another process).
    """

    def __init__(
        self,
        cfg: DetectorConfig,
        detector_handler: PersonDetectorHandler,
        pose_handler: KeypointHandler,
        detector_model: Any,
        pose_model: Any,
    ) -> None:
        self._cfg = cfg
        self._detector_handler = detector_handler
        self._pose_handler = pose_handler
        self._detector_model = detector_model
        self._pose_model = pose_model
        self._pose_hw: tuple[int, int] | None = None

    @property
    def batch_size(self) -> int:
        """Images per detector forward pass."""
        return self._cfg.batch_size

    def host_stats(self) -> dict[str, dict[str, Any]]:
        """How both models are hosted (method calls: either may be a proxy), by kind."""
        return {
            self._detector_handler.kind: self._detector_model.host_stats().as_dict(),
            self._pose_handler.kind: self._pose_model.host_stats().as_dict(),
        }

    def detect(self, batch_id: str, keys: Sequence[str], images: Sequence[np.ndarray]) -> ShardDetections:
        """The persons of one batch of images (`(H, W, 3)` uint8 RGB), by key.

        A model that raises fails detection for every image of its batch (an error per image, like an
        out-of-memory batch), never the shard.
        """
        shard = batch_id.split("/", 1)[0]
        image_batch = ImageBatch(batch_id, shard, tuple(keys), tuple(images))
        records: list[object] = []
        try:
            (result,) = self._detector_handler.run_inference([image_batch], self._detector_model)
        except Exception as exc:  # a model error on this input: it becomes error rows, as RunInference's DLQ would
            return assemble([DetectionFailure(key, _message(exc)) for key in keys])
        records.append(ModelUsed("detector", result.model_id or ""))
        items: list[PoseItem] = []
        for image, detections in zip(images, result.inference, strict=True):
            if not len(detections.boxes):
                records.append(ImageDetections(detections.key))
                continue
            for idx, (box, score) in enumerate(zip(detections.boxes, detections.scores, strict=True)):
                center, scale = box_center_scale(box, self._input_hw())
                crop = crop_person(image, center, scale, self._input_hw())
                n_boxes = len(detections.boxes)
                items.append(PoseItem(detections.key, idx, n_boxes, crop, center, scale, box, float(score)))
        size = self._cfg.pose_batch_size
        for start in range(0, len(items), size):
            pose_batch = PoseBatch(f"{batch_id}/{start // size:04d}", shard, tuple(items[start : start + size]))
            try:
                (posed,) = self._pose_handler.run_inference([pose_batch], self._pose_model)
            except Exception as exc:  # as above: every image with a person in this batch fails detection
                records.extend(
                    DetectionFailure(key, _message(exc)) for key in sorted({i.key for i in pose_batch.items})
                )
                continue
            records.append(ModelUsed("pose", posed.model_id or ""))
            records.extend(posed.inference)
        return assemble(records)

    def _input_hw(self) -> tuple[int, int]:
        if self._pose_hw is None:
            self._pose_hw = tuple(self._pose_model.input_hw())  # type: ignore[assignment]
        assert self._pose_hw is not None
        return self._pose_hw


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

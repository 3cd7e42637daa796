"""The detection stage of ``dpmesh-label detector=vitpose|auto``.

::

    shard URIs -> ReadImagesForDetection (decode the images that need people found, batches in shard order)
               -> RunInference(detector)        keyed by image batch id
               -> CropPersons (top-down crops; images without persons go straight to the result)
               -> RunInference(ViTPose)         keyed by person batch id
               -> per-person records (box, 17 keypoints, scores: small)
               -> CoGroupByKey(shard) with the shard URIs -> (shard URI, ShardDetections)

The shard reader of the labeling steps (:class:`pipelines.label.shard_steps.ReadShardFn`) then re-reads each
shard with its detections as the persons of the images that had none, so DPMesh batches are cut exactly as for
annotated shards. Decoded images never cross a shuffle: they live from the reader through the detector to the
crop step, which Beam fuses into one stage after the shard spread.
"""

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from pipelines.config import DetectorConfig, DetectorName
from pipelines.config.storage import StorageConfig
from pipelines.label.detection.handlers import (
    METRICS_NAMESPACE,
    ImageBatch,
    KeypointHandler,
    PersonDetectorHandler,
    PoseBatch,
    PoseItem,
)
from pipelines.label.detection.models import box_center_scale, crop_person, pose_input_size
from pipelines.label.detection.records import DetectionFailure, ImageDetections, ModelUsed, assemble
from pipelines.image_decode import ImageDecodeError, decode_rgb
from pipelines.label.inputs import ShardReadError, iter_shard_samples, sample_metadata
from pipelines.storage import Storage


def shard_name_of(uri: str) -> str:
    """``shard-000003`` for ``.../shard-000003.tar``."""
    return uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar")


def needs_detection(detector: DetectorName, meta: dict[str, Any]) -> bool:
    """Whether a sample's persons come from detection: always for ``vitpose``, unannotated samples for ``auto``."""
    if detector == DetectorName.vitpose:
        return True
    return detector == DetectorName.auto and not meta.get("annotated")


class ReadImagesForDetectionFn(beam.DoFn):
    """Input: a shard URI. Outputs :class:`ImageBatch` es of the images that need detection, in shard order.

    Samples the shard reader will report anyway (unreadable JSON, undecodable image, a truncated tar) are
    skipped here: the labeling reader decodes the same bytes and writes their error rows.
    """

    def __init__(self, storage_cfg: StorageConfig, detector_cfg: DetectorConfig, max_image_pixels: int) -> None:
        self._storage_cfg = storage_cfg
        self._cfg = detector_cfg
        self._max_pixels = max_image_pixels
        self._images = Metrics.counter(METRICS_NAMESPACE, "images_to_detect")

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)

    def process(self, shard_uri: str) -> Iterator[ImageBatch]:
        shard = shard_name_of(shard_uri)
        keys: list[str] = []
        images: list[np.ndarray] = []
        batches = 0
        try:
            with self._storage.open_read(shard_uri) as stream:
                for sample in iter_shard_samples(stream):
                    image = self._image(sample)
                    if image is None:
                        continue
                    keys.append(sample.key)
                    images.append(image)
                    if len(keys) == self._cfg.batch_size:
                        yield ImageBatch(f"{shard}/{batches:06d}", shard, tuple(keys), tuple(images))
                        keys, images, batches = [], [], batches + 1
        except (ShardReadError, OSError):
            pass  # reported by the labeling reader (label.read)
        if keys:
            yield ImageBatch(f"{shard}/{batches:06d}", shard, tuple(keys), tuple(images))

    def _image(self, sample: Any) -> np.ndarray | None:
        try:
            meta = sample_metadata(sample)
        except ValueError:
            return None
        if not needs_detection(self._cfg.name, meta):
            return None
        try:
            image = decode_rgb(sample.image_bytes() or b"", max_image_pixels=self._max_pixels)
        except ImageDecodeError:
            return None
        self._images.inc()
        return image


class CropPersonsFn(beam.DoFn):
    """Input: ``(image batch id, PredictionResult)`` of the detector.

    Outputs :class:`PoseBatch` es of the detected persons' crops (at most ``pose_batch_size``, in image and score
    order), and, tagged ``records``, ``(shard, record)`` for images without persons and the detector's model id.
    """

    RECORDS = "records"

    def __init__(self, detector_cfg: DetectorConfig, storage_cfg: StorageConfig) -> None:
        self._cfg = detector_cfg
        self._storage_cfg = storage_cfg
        self._persons = Metrics.counter(METRICS_NAMESPACE, "persons_detected")

    def setup(self) -> None:
        # The pose model's input size, from its image processor config (the weights load in the keypoint step).
        self._input_hw = pose_input_size(self._cfg, self._storage_cfg)

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[Any]:
        batch_id, result = element
        image_batch: ImageBatch = result.example
        shard = image_batch.shard
        yield beam.pvalue.TaggedOutput(self.RECORDS, (shard, ModelUsed("detector", result.model_id or "")))
        items: list[PoseItem] = []
        for image, detections in zip(image_batch.images, result.inference, strict=True):
            n_boxes = len(detections.boxes)
            if not n_boxes:
                yield beam.pvalue.TaggedOutput(self.RECORDS, (shard, ImageDetections(detections.key)))
                continue
            self._persons.inc(n_boxes)
            for idx, (box, score) in enumerate(zip(detections.boxes, detections.scores, strict=True)):
                center, scale = box_center_scale(box, self._hw())
                crop = crop_person(image, center, scale, self._hw())
                items.append(PoseItem(detections.key, idx, n_boxes, crop, center, scale, box, float(score)))
        size = self._cfg.pose_batch_size
        for start in range(0, len(items), size):
            yield PoseBatch(f"{batch_id}/{start // size:04d}", shard, tuple(items[start : start + size]))

    def _hw(self) -> tuple[int, int]:
        return self._input_hw


def pose_results_to_records(element: tuple[str, PredictionResult]) -> Iterator[tuple[str, Any]]:
    """``(shard, record)`` for every person of a keypoint batch, and the pose model's id."""
    batch_id, result = element
    shard = batch_id.split("/", 1)[0]
    yield shard, ModelUsed("pose", result.model_id or "")
    for person in result.inference:
        yield shard, person


def failed_detection_to_records(failure: Any) -> Iterator[tuple[str, Any]]:
    """A batch that raised in the detector or the keypoint model: every image in it fails detection.

    ``failure`` is Beam's dead letter ``([(batch id, ImageBatch | PoseBatch)], (type, message, traceback))``.
    """
    elements, (exc_type, exc_message, _) = failure
    message = f"{getattr(exc_type, '__name__', exc_type)}: {exc_message}"
    for _, batch in elements:
        keys = batch.keys if isinstance(batch, ImageBatch) else sorted({item.key for item in batch.items})
        for key in keys:
            yield batch.shard, DetectionFailure(key, message)


def join_shard_detections(element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[tuple[str, Any]]:
    """``(shard URI, ShardDetections)`` from the CoGroupByKey of shard URIs and detection records."""
    _, grouped = element
    records = list(grouped["records"])
    for uri in grouped["uri"]:
        yield uri, assemble(records)


class DetectPersons(beam.PTransform):  # type: ignore[type-arg]
    """Shard URIs -> ``(shard URI, ShardDetections)``, one per shard (empty for shards with nothing to detect)."""

    def __init__(
        self,
        storage_cfg: StorageConfig,
        detector_cfg: DetectorConfig,
        max_image_pixels: int,
        *,
        detector_handler: Any = None,
        pose_handler: Any = None,
        resource_hints: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._storage_cfg = storage_cfg
        self._cfg = detector_cfg
        self._max_pixels = max_image_pixels
        self._detector_handler = detector_handler or PersonDetectorHandler(detector_cfg, storage_cfg, resource_hints)
        self._pose_handler = pose_handler or KeypointHandler(detector_cfg, storage_cfg, resource_hints)

    def expand(self, shard_uris: Any) -> Any:
        detected, detector_failures = (
            shard_uris
            | "ReadImagesForDetection"
            >> beam.ParDo(ReadImagesForDetectionFn(self._storage_cfg, self._cfg, self._max_pixels))
            | "KeyByImageBatch" >> beam.Map(lambda image_batch: (image_batch.batch_id, image_batch))
            | "DetectPersons" >> RunInference(KeyedModelHandler(self._detector_handler)).with_exception_handling()
        )
        cropped = detected | "CropPersons" >> beam.ParDo(CropPersonsFn(self._cfg, self._storage_cfg)).with_outputs(
            CropPersonsFn.RECORDS, main="pose_batches"
        )
        posed, pose_failures = (
            cropped.pose_batches
            | "KeyByPoseBatch" >> beam.Map(lambda pose_batch: (pose_batch.batch_id, pose_batch))
            | "EstimateKeypoints" >> RunInference(KeyedModelHandler(self._pose_handler)).with_exception_handling()
        )
        records = (
            cropped[CropPersonsFn.RECORDS],
            posed | "PoseRecords" >> beam.FlatMap(pose_results_to_records),
            detector_failures.failed_inferences | "FailedDetections" >> beam.FlatMap(failed_detection_to_records),
            pose_failures.failed_inferences | "FailedKeypoints" >> beam.FlatMap(failed_detection_to_records),
        ) | "AllDetectionRecords" >> beam.Flatten()
        uris = shard_uris | "KeyShardUris" >> beam.Map(lambda uri: (shard_name_of(uri), uri))
        return (
            {"uri": uris, "records": records}
            | "GroupDetectionsByShard" >> beam.CoGroupByKey()
            | "JoinShardDetections" >> beam.FlatMap(join_shard_detections)
        )

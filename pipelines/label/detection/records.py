"""The detection stage's records, torch-free: the batches its two models run on, and what it hands to the shard
reader (per image, the detected persons or why there are none).

Torch-free so that the per-shard step imports no model code: the models come in through their handlers.
"""

from dataclasses import dataclass, field

import numpy as np

from pipelines.label.persons import AnnotatedPerson


@dataclass(frozen=True)
class ImageDetections:
    """The persons found in one image, in person-index order (detector score, highest first).

    Attributes:
        key: The sample key.
        persons: Detected persons: box, ViTPose keypoints (confidence = heatmap score), ``det_score``.
        error: Why detection failed for this image (then ``persons`` is empty); None on success.
    """

    key: str
    persons: tuple[AnnotatedPerson, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class DetectedPerson:
    """One person of an image as the keypoint step returns it (``box_idx`` orders the image's persons)."""

    key: str
    box_idx: int
    n_boxes: int
    person: AnnotatedPerson


@dataclass(frozen=True)
class DetectionFailure:
    """Detection or keypoint inference raised for a batch holding this image."""

    key: str
    error: str


@dataclass(frozen=True)
class ModelUsed:
    """The weights (``<source>@<revision>``) of the ``detector`` or ``pose`` step that produced a shard's records."""

    kind: str
    model_id: str


@dataclass(frozen=True)
class ShardDetections:
    """A shard's detection results by image key, and the weights that produced them.

    An image the detection stage was meant to see but that has no entry was not decodable there (the shard
    reader reports it when it decodes it) or the shard could not be read to it.
    """

    images: dict[str, ImageDetections] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)


def assemble(records: list[object]) -> ShardDetections:
    """A shard's :class:`ShardDetections` from its detection records, in any order.

    Records are :class:`ImageDetections` (images without persons), :class:`DetectedPerson` s,
    :class:`DetectionFailure` s and :class:`ModelUsed` s. An image with a failure, or missing some of its
    persons, becomes an error.
    """
    found: dict[str, dict[int, DetectedPerson]] = {}
    expected: dict[str, int] = {}
    failures: dict[str, str] = {}
    images: dict[str, ImageDetections] = {}
    models: dict[str, str] = {}
    for record in records:
        if isinstance(record, ImageDetections):
            images[record.key] = record
        elif isinstance(record, DetectedPerson):
            found.setdefault(record.key, {})[record.box_idx] = record
            expected[record.key] = record.n_boxes
        elif isinstance(record, DetectionFailure):
            failures[record.key] = min(failures.get(record.key, record.error), record.error)
        elif isinstance(record, ModelUsed):
            models[record.kind] = record.model_id
    for key, persons in found.items():
        if len(persons) != expected[key]:
            failures.setdefault(key, f"{expected[key] - len(persons)} of {expected[key]} persons lack keypoints")
            continue
        images[key] = ImageDetections(key, tuple(persons[i].person for i in range(expected[key])))
    for key, error in failures.items():
        images[key] = ImageDetections(key, (), error)
    return ShardDetections(dict(sorted(images.items())), dict(sorted(models.items())))


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

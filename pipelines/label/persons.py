"""From a shard's samples to per-person model inputs: reading persons, preparing crops, batching.

Everything here runs on CPU workers before the GPU step. Each image is decoded once and every person in it becomes
one :class:`PersonTask` (the shard's tar is streamed by `pipelines.common.shard_members.iter_shard_samples`).
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpmesh_core.config import CropGeometry
from dpmesh_core.errors import InvalidPersonInput
from dpmesh_core.fast_crop import cut_fast_crop, max_reduction
from dpmesh_core.joints import coco17_to_smpl30
from dpmesh_core.preprocessing import CONF_THRESHOLD, PersonInputs, PersonPlan, cut_crop, plan_person
from pipelines.common.image_decode import DecodedImage, OpenedImage
from pipelines.config.label import CropMode
from schemas import COCO_VISIBILITY_CONFIDENCE


@dataclass(frozen=True)
class AnnotatedPerson:
    """A person as the shard's JSON gives it, in full-image pixels.

    Attributes:
        bbox_xyxy: `(4,)` float32 box; from the annotation, else the extent of the labelled keypoints.
        keypoints_2d: `(17, 3)` float32 COCO-17 x, y (px) and confidence in [0, 1].
        det_score: Detector score, when a detector produced the person.
        annotation_id: The source annotation's id as text (``annotation_id`` column), None when it has none.
    """

    bbox_xyxy: np.ndarray
    keypoints_2d: np.ndarray
    det_score: float | None = None
    annotation_id: str | None = None


def person_from_json(person: dict[str, Any], *, coco_visibility: bool = True) -> AnnotatedPerson:
    """A person of a sample's JSON (``bbox_xywh`` and 17 x [x, y, v] ``keypoints``).

    With ``coco_visibility`` the third keypoint value is a COCO visibility flag (0/1/2, as annotation
    files hold) mapped through ``schemas.COCO_VISIBILITY_CONFIDENCE`` (2 -> 1, 1 -> 0.5: an occluded keypoint's
    position is still known, and DPMesh is made for occlusion, so it stays a valid input; 0 -> 0); otherwise it is
    already a confidence.

    Raises:
        ValueError: if the keypoints are not 17 numeric triples.
    """
    raw = np.asarray(person.get("keypoints"), dtype=np.float64)
    if raw.shape != (17, 3):
        raise ValueError(f"person keypoints have shape {raw.shape}, expected (17, 3)")
    keypoints = raw.astype(np.float32)
    if coco_visibility:
        keypoints[:, 2] = [COCO_VISIBILITY_CONFIDENCE.get(int(v), 0.0) if np.isfinite(v) else v for v in raw[:, 2]]
    annotation_id = person.get("annotation_id")
    return AnnotatedPerson(
        _bbox_xyxy(person.get("bbox_xywh"), keypoints),
        keypoints,
        person.get("score"),
        None if annotation_id is None else str(annotation_id),
    )


def _bbox_xyxy(bbox_xywh: Any, keypoints: np.ndarray) -> np.ndarray:
    if bbox_xywh is not None and len(bbox_xywh) == 4:
        x, y, w, h = (float(v) for v in bbox_xywh)
        return np.array([x, y, x + w, y + h], dtype=np.float32)
    labelled = keypoints[keypoints[:, 2] > 0]
    if not len(labelled):
        return np.zeros(4, dtype=np.float32)
    return np.array([*labelled[:, :2].min(0), *labelled[:, :2].max(0)], dtype=np.float32)


@dataclass(frozen=True)
class PersonTask:
    """One person ready for the model, with what the outputs need to be scored and written.

    Attributes:
        sample_id: ``<image_key>_p<person_idx>``, the key through inference.
        shard: Shard name (``shard-000003``); image_key, source_uri: the image.
        person_idx: Index of the person in the image's JSON.
        image_width, image_height: Image size in px (EXIF orientation applied).
        person: The input person (box, keypoints, detector score).
        keypoint_source: Where the keypoints came from (``annotations``, ``vitpose``).
        other_boxes: `(K, 4)` xyxy boxes of the other persons of the image (for crowding).
        inputs: The model inputs (crop, 30 keypoints in the model's keypoint grid, mask, focal).
        other_keypoints: `(K, 17, 3)` keypoints of the same other persons, same source (for the crowd index).
        shard_uri: The shard tar the image came from (``shard_uri`` column).
    """

    sample_id: str
    shard: str
    image_key: str
    source_uri: str
    person_idx: int
    image_width: int
    image_height: int
    person: AnnotatedPerson
    keypoint_source: str
    other_boxes: np.ndarray
    inputs: PersonInputs
    other_keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 17, 3), np.float32))
    shard_uri: str = ""


@dataclass(frozen=True)
class PersonBatch:
    """One model batch: consecutive persons of a shard, in shard order.

    Batches are cut by the shard reader, not by Beam's adaptive ``BatchElements``: each person is then
    computed in the same batch on every run and runner, which keeps outputs bit-identical (CPU and GPU
    kernels round differently for different batch compositions) and batch shapes fixed.

    Attributes:
        batch_id: ``<shard>/<index:06d>``, the inference key.
        tasks: The persons, at most ``model.batch_size``.
    """

    batch_id: str
    tasks: tuple[PersonTask, ...]


@dataclass(frozen=True)
class PlannedImage(DecodedImage):
    """A decoded image with the plans its decode scale was chosen from, keyed by the person's `(17, 3)` float32
    keypoints' bytes (a plan is a function of the keypoints, the image size and the geometry only):
    :func:`prepare_tasks` reuses them instead of planning each person twice."""

    plans: dict[bytes, PersonPlan] = field(default_factory=dict)
    geometry: CropGeometry | None = None  # the plans' (reused only for the same)


def decode_for_crops(
    opened: OpenedImage, persons: list[dict[str, Any]], geometry: CropGeometry, crop_mode: CropMode
) -> DecodedImage:
    """Decodes an image once for all its persons: full size in ``reference`` mode; in ``fast`` mode at the
    largest JPEG reduction at which every person's crop keeps at least one decoded pixel per crop pixel
    (:func:`dpmesh_core.fast_crop.max_reduction`), by OpenCV where it decodes as Pillow does
    (:meth:`OpenedImage.decode`).

    ``persons`` are the sample's raw JSON persons; one that cannot be read or planned does not limit the scale
    (it becomes an error row later, as in ``reference`` mode).

    Raises:
        ImageDecodeError: the pixels cannot be decoded.
    """
    if crop_mode == CropMode.reference:
        return opened.decode(1)
    plans: dict[bytes, PersonPlan] = {}
    for raw in persons:
        try:
            keypoints = person_from_json(raw).keypoints_2d
            plans[keypoints.tobytes()] = plan_person(coco17_to_smpl30(keypoints), opened.full_hw, geometry)
        except (ValueError, TypeError):
            continue
    decoded = opened.decode(max_reduction(list(plans.values()), opened.max_reduction()), fast=True)
    return PlannedImage(decoded.pixels, decoded.reduction, decoded.full_hw, plans, geometry)


def prepare_tasks(
    image: np.ndarray | DecodedImage,
    persons: list[tuple[int, AnnotatedPerson]],
    *,
    shard: str,
    image_key: str,
    source_uri: str,
    source: str,
    geometry: CropGeometry,
    shard_uri: str = "",
    crop_mode: CropMode = CropMode.reference,
) -> Iterator[tuple[int, PersonTask | ValueError]]:
    """``(person_idx, task)`` for each indexed person, or ``(person_idx, error)`` for one that cannot be prepared.

    ``image`` is `(H, W, 3)` uint8 RGB, or a :class:`DecodedImage` (possibly reduced, ``fast`` mode only); crops
    are cut with ``geometry``, the model's (``DPMeshPredictor.crop_geometry()``): ``reference`` mode cuts the
    official crop (the float32 warp of the full image, converted once for all persons), ``fast`` mode the uint8
    warp of the decoded image (:mod:`dpmesh_core.fast_crop`). Errors are ``dpmesh_core.InvalidPersonInput`` (no
    valid keypoint, non-finite values, degenerate box); they become error rows, one per person. A person that
    errors still counts as a neighbour of the others (its box and keypoints are in the image, labeled or not).
    """
    decoded = image if isinstance(image, DecodedImage) else DecodedImage(image, 1, (image.shape[0], image.shape[1]))
    if crop_mode == CropMode.reference and decoded.reduction != 1:
        raise ValueError("reference crops are cut from the full-size image")
    height, width = decoded.full_hw
    planned = decoded.plans if isinstance(decoded, PlannedImage) and decoded.geometry == geometry else {}
    full_float: np.ndarray | None = None
    boxes = np.stack([p.bbox_xyxy for _, p in persons]) if persons else np.zeros((0, 4), np.float32)
    keypoints = np.stack([p.keypoints_2d for _, p in persons]) if persons else np.zeros((0, 17, 3), np.float32)
    for position, (idx, person) in enumerate(persons):
        try:
            _check_inside(person, width, height)
            plan = planned.get(person.keypoints_2d.tobytes()) if person.keypoints_2d.dtype == np.float32 else None
            if plan is None:
                plan = plan_person(coco17_to_smpl30(person.keypoints_2d), decoded.full_hw, geometry)
            if crop_mode == CropMode.fast:
                inputs = cut_fast_crop(decoded.pixels, decoded.reduction, plan)
            else:
                if full_float is None:  # once per image, not per person: the official warp reads float32
                    full_float = decoded.pixels.astype(np.float32)
                inputs = cut_crop(full_float, plan)
        except ValueError as exc:
            yield idx, exc
            continue
        yield (
            idx,
            PersonTask(
                sample_id=f"{image_key}_p{idx}",
                shard=shard,
                image_key=image_key,
                source_uri=source_uri,
                person_idx=idx,
                image_width=int(width),
                image_height=int(height),
                person=person,
                keypoint_source=source,
                other_boxes=np.delete(boxes, position, axis=0),
                inputs=inputs,
                other_keypoints=np.delete(keypoints, position, axis=0),
                shard_uri=shard_uri,
            ),
        )


def _check_inside(person: AnnotatedPerson, width: int, height: int) -> None:
    """A person none of whose valid keypoints lies in the image would get a blank crop and an empty heatmap.

    The official code would still run it; the pipeline reports it instead of labeling nothing.
    """
    kp = person.keypoints_2d
    valid = np.isfinite(kp).all(axis=1) & (kp[:, 2] > CONF_THRESHOLD)
    inside = valid & (kp[:, 0] >= 0) & (kp[:, 0] < width) & (kp[:, 1] >= 0) & (kp[:, 1] < height)
    if valid.any() and not inside.any():
        raise InvalidPersonInput(
            "bbox_outside_image", f"none of the {int(valid.sum())} valid keypoints is in the image"
        )

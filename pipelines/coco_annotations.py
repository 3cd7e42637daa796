"""Reading COCO-format person keypoint annotations and joining them to images by file name.

A COCO file holds ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``, ``bbox`` as
x, y, w, h in pixels, ``keypoints`` as 17 x (x, y, v) flattened, ``iscrowd``) and ``categories``.
Only the person category is read. Crowd regions (``iscrowd=1``) have no keypoints and are skipped.
A malformed person is dropped from its image and reported, and its image keeps the others.
"""

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


COCO_NUM_KEYPOINTS = 17


@dataclass(frozen=True)
class AnnotationProblem:
    """A person annotation that could not be used."""

    file_name: str
    annotation_id: Any
    reason: str
    message: str


@dataclass(frozen=True)
class ImageAnnotations:
    """Every usable person annotation of one image, in annotation-id order.

    ``persons`` are JSON-ready dicts: ``bbox_xywh`` (4 floats, px), ``keypoints`` (17 x [x, y, v],
    px and COCO visibility 0/1/2), ``annotation_id``, ``num_keypoints``.
    """

    file_name: str
    persons: tuple[dict[str, Any], ...]
    problems: tuple[AnnotationProblem, ...] = field(default=())


def join_name(path: str) -> str:
    """The name images and annotations are joined on: the base file name (COCO ``file_name`` convention)."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def parse_coco(content: bytes) -> Iterator[ImageAnnotations]:
    """Parse a COCO keypoint file into per-image annotations: every listed image, with or without persons.

    Raises:
        ValueError: if the file is not a COCO annotation file at all (a launch-time problem, not a
            per-element one).
    """
    try:
        doc = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ValueError(f"annotation file is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError("annotation file is not COCO format: no 'images' list")
    file_names = {img["id"]: img["file_name"] for img in doc["images"] if "id" in img and "file_name" in img}
    person_ids = _person_category_ids(doc.get("categories", []))
    persons: dict[Any, list[dict[str, Any]]] = {}
    problems: dict[Any, list[AnnotationProblem]] = {}
    for ann in sorted(doc.get("annotations", []), key=lambda a: str(a.get("id", ""))):
        image_id = ann.get("image_id")
        if image_id not in file_names or (person_ids and ann.get("category_id") not in person_ids):
            continue
        if ann.get("iscrowd", 0):
            continue
        try:
            persons.setdefault(image_id, []).append(_person(ann))
        except ValueError as exc:
            problem = AnnotationProblem(file_names[image_id], ann.get("id"), "invalid_annotation", str(exc))
            problems.setdefault(image_id, []).append(problem)
    for image_id in sorted(file_names, key=lambda i: (file_names[i], str(i))):
        yield ImageAnnotations(
            file_name=file_names[image_id],
            persons=tuple(persons.get(image_id, ())),
            problems=tuple(problems.get(image_id, ())),
        )


def _person_category_ids(categories: list[dict[str, Any]]) -> set[Any]:
    return {c["id"] for c in categories if c.get("name") == "person" and "id" in c}


def _person(ann: dict[str, Any]) -> dict[str, Any]:
    keypoints = ann.get("keypoints")
    if not isinstance(keypoints, list) or len(keypoints) != 3 * COCO_NUM_KEYPOINTS:
        count = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
        raise ValueError(f"keypoints must be a list of {3 * COCO_NUM_KEYPOINTS} numbers, got {count}")
    values = [_finite(v, "keypoints") for v in keypoints]
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
    box = [_finite(v, "bbox") for v in bbox]
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"bbox has a negative size: {bbox!r}")
    triples = [values[i : i + 3] for i in range(0, len(values), 3)]
    return {
        "annotation_id": ann.get("id"),
        "bbox_xywh": box,
        "keypoints": triples,
        "num_keypoints": sum(1 for t in triples if t[2] > 0),
    }


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} holds a non-finite or non-numeric value {value!r}")
    return float(value)

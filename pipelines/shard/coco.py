"""Reading COCO-format person keypoint annotations and joining them to images by file name.

Other skeletons (CrowdPose, AI Challenger) are mapped to COCO-17 by :mod:`pipelines.shard.annotation_formats`.

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
    return parse_coco_document(doc)


def parse_coco_document(
    doc: Any, *, num_keypoints: int = COCO_NUM_KEYPOINTS, mapping: tuple[int | None, ...] | None = None
) -> Iterator[ImageAnnotations]:
    """Per-image annotations of a parsed COCO-layout document whose persons have ``num_keypoints`` joints.

    ``mapping`` gives each source joint's COCO-17 index (None: dropped), for skeletons other than COCO-17
    in the COCO layout (CrowdPose, see :mod:`pipelines.shard.annotation_formats`).

    Raises:
        ValueError: if ``doc`` is not in the COCO layout.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError("annotation file is not COCO format: no 'images' list")
    file_names = {
        img["id"]: img["file_name"]
        for img in doc["images"]
        if isinstance(img, dict) and "id" in img and "file_name" in img
    }
    person_ids = _person_category_ids(doc.get("categories", []))
    persons: dict[Any, list[dict[str, Any]]] = {}
    problems: dict[Any, list[AnnotationProblem]] = {}
    annotations = [a for a in doc.get("annotations", []) if isinstance(a, dict)]
    for ann in sorted(annotations, key=lambda a: str(a.get("id", ""))):
        image_id = ann.get("image_id")
        if image_id not in file_names or (person_ids and ann.get("category_id") not in person_ids):
            continue
        if ann.get("iscrowd", 0):
            continue
        try:
            persons.setdefault(image_id, []).append(
                person_record(
                    ann.get("id"), ann.get("bbox"), ann.get("keypoints"), num_keypoints=num_keypoints, mapping=mapping
                )
            )
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
    return {c["id"] for c in categories if isinstance(c, dict) and c.get("name") == "person" and "id" in c}


def person_record(
    annotation_id: Any,
    bbox: Any,
    keypoints: Any,
    *,
    num_keypoints: int = COCO_NUM_KEYPOINTS,
    mapping: tuple[int | None, ...] | None = None,
) -> dict[str, Any]:
    """The JSON-ready person of a sample: ``bbox_xywh`` and 17 COCO ``[x, y, v]`` ``keypoints``.

    ``keypoints`` is the flat source list (``num_keypoints`` x (x, y, v), v in COCO's 0/1/2); ``mapping``
    sends source joint i to COCO-17 index ``mapping[i]``; COCO joints nobody maps to are ``[0, 0, 0]``.

    Raises:
        ValueError: wrong length, a non-finite or non-numeric value, a malformed or negative-size box.
    """
    if not isinstance(keypoints, list) or len(keypoints) != 3 * num_keypoints:
        count = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
        raise ValueError(f"keypoints must be a list of {3 * num_keypoints} numbers, got {count}")
    values = [_finite(v, "keypoints") for v in keypoints]
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
    box = [_finite(v, "bbox") for v in bbox]
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"bbox has a negative size: {bbox!r}")
    source = [values[i : i + 3] for i in range(0, len(values), 3)]
    if mapping is None:
        triples = source
    else:
        triples = [[0.0, 0.0, 0.0] for _ in range(COCO_NUM_KEYPOINTS)]
        for triple, target in zip(source, mapping, strict=True):
            if target is not None and triple[2] > 0:
                triples[target] = triple
    return {
        "annotation_id": annotation_id,
        "bbox_xywh": box,
        "keypoints": triples,
        "num_keypoints": sum(1 for t in triples if t[2] > 0),
    }


# Coordinates beyond this are not pixels of any image the jobs accept (max_image_pixels), and would overflow the
# float32 columns downstream (1e300 becomes inf there).
MAX_COORDINATE = 1e7


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} holds a non-finite or non-numeric value {value!r}")
    if abs(value) > MAX_COORDINATE:
        raise ValueError(f"{what} holds {value!r}, out of range (|value| <= {MAX_COORDINATE:g} px)")
    return float(value)

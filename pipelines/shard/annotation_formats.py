"""Person keypoint annotation files in other skeletons, mapped to COCO-17 at shard time.

Three formats are read, all joined to images by base file name (:func:`pipelines.shard.coco.join_name`):

* ``coco``: COCO person keypoints (COCO itself, OCHuman, anything in the COCO layout with 17 joints).
* ``crowdpose``: CrowdPose, COCO layout with 14 joints per person.
* ``aic``: AI Challenger keypoints, its own layout: a JSON list of ``{"image_id", "human_annotations":
  {"human1": [x1, y1, x2, y2]}, "keypoint_annotations": {"human1": [x, y, v] * 14}}``; the image file is
  ``<image_id>.jpg``.

Joint orders (verified against OpenMMLab mmpose ``configs/_base_/datasets/crowdpose.py`` and
``configs/_base_/datasets/aic.py``, github.com/open-mmlab/mmpose, which cite the datasets' own repositories
github.com/Jeff-sjtu/CrowdPose and github.com/AIChallenger/AI_Challenger_2017):

* CrowdPose: left_shoulder, right_shoulder, left_elbow, right_elbow, left_wrist, right_wrist, left_hip,
  right_hip, left_knee, right_knee, left_ankle, right_ankle, head (top_head), neck.
* AI Challenger: right_shoulder, right_elbow, right_wrist, left_shoulder, left_elbow, left_wrist, right_hip,
  right_knee, right_ankle, left_hip, left_knee, left_ankle, head_top, neck. Its visibility flag is
  1 = visible, 2 = labelled but occluded, 3 = not labelled (AI Challenger 2017 keypoint task description),
  mapped to COCO's 2, 1, 0.

COCO-17 has no head-top or neck, and neither 14-joint set has the five face points: those COCO joints are
written as not labelled ``[0, 0, 0]`` and the head-top and neck are dropped.
"""

import json
from collections.abc import Iterator
from enum import Enum
from typing import Any

from pipelines.shard.coco import (
    COCO_NUM_KEYPOINTS,
    AnnotationProblem,
    ImageAnnotations,
    parse_coco_document,
    person_record,
)
from schemas.annotations import COCO17_KEYPOINT_NAMES


class AnnotationFormat(str, Enum):
    """The layout and skeleton of an ``input.annotations`` file."""

    auto = "auto"  # detected from the file (an error when it cannot tell)
    coco = "coco"
    crowdpose = "crowdpose"
    aic = "aic"


COCO17_JOINTS: tuple[str, ...] = COCO17_KEYPOINT_NAMES  # one home: the `keypoints_2d` column contract
COCO17_INDEX = {name: i for i, name in enumerate(COCO17_JOINTS)}

CROWDPOSE_JOINTS: tuple[str, ...] = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck",
)  # fmt: skip
AIC_JOINTS: tuple[str, ...] = (
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck",
)  # fmt: skip

# AI Challenger visibility -> COCO visibility (2 visible, 1 labelled but occluded, 0 not labelled).
AIC_TO_COCO_VISIBILITY = {1: 2, 2: 1, 3: 0}


def to_coco17_map(joints: tuple[str, ...]) -> tuple[int | None, ...]:
    """For each source joint, its COCO-17 index, or None for joints COCO-17 lacks (head top, neck)."""
    return tuple(COCO17_INDEX.get(name) for name in joints)


CROWDPOSE_TO_COCO17 = to_coco17_map(CROWDPOSE_JOINTS)
AIC_TO_COCO17 = to_coco17_map(AIC_JOINTS)


def parse_annotations(
    content: bytes, annotation_format: AnnotationFormat | str = "auto"
) -> Iterator[ImageAnnotations]:
    """Per-image persons (COCO-17) of an annotation file in ``annotation_format``.

    Raises:
        ValueError: the file is not JSON, not in the named format, or (``auto``) its format cannot be told.
    """
    try:
        doc = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ValueError(f"annotation file is not valid JSON: {exc}") from exc
    fmt = AnnotationFormat(annotation_format)
    if fmt == AnnotationFormat.auto:
        fmt = detect_format(doc)
    if fmt == AnnotationFormat.aic:
        return parse_aic_document(doc)
    if fmt == AnnotationFormat.crowdpose:
        return parse_coco_document(doc, num_keypoints=len(CROWDPOSE_JOINTS), mapping=CROWDPOSE_TO_COCO17)
    return parse_coco_document(doc)


def detect_format(doc: Any) -> AnnotationFormat:
    """The format of a parsed annotation file, when the file says it unambiguously.

    A list of samples with ``keypoint_annotations`` is AI Challenger; a COCO layout is ``coco`` or
    ``crowdpose`` by its keypoints per person (51 or 42 numbers): a file holding both is ambiguous (other
    lengths are malformed persons, reported when the file is parsed).

    Raises:
        ValueError: naming what was found and the ``input.annotation_format=`` to set.
    """
    hint = "set input.annotation_format=coco|crowdpose|aic"
    if isinstance(doc, list):
        if doc and all(isinstance(s, dict) and "keypoint_annotations" in s for s in doc):
            return AnnotationFormat.aic
        raise ValueError(f"annotation file is a JSON list but not AI Challenger keypoint samples; {hint}")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"annotation file is neither COCO layout (no 'images' list) nor AI Challenger; {hint}")
    lengths = {len(a["keypoints"]) for a in doc.get("annotations", []) if isinstance(a.get("keypoints"), list)}
    known = lengths & {3 * len(CROWDPOSE_JOINTS), 3 * COCO_NUM_KEYPOINTS}  # others are malformed persons
    if known == {3 * len(CROWDPOSE_JOINTS)}:
        return AnnotationFormat.crowdpose
    if known <= {3 * COCO_NUM_KEYPOINTS}:
        return AnnotationFormat.coco  # also a file without persons (images only)
    raise ValueError(f"annotation file mixes 17- and 14-joint persons; {hint}")


def parse_aic_document(doc: Any) -> Iterator[ImageAnnotations]:
    """Per-image persons of an AI Challenger keypoint file (every listed image, in file-name order).

    Raises:
        ValueError: if ``doc`` is not a list of AI Challenger samples.
    """
    if not isinstance(doc, list):
        raise ValueError("annotation file is not AI Challenger format: expected a JSON list of samples")
    images: dict[str, tuple[list[dict[str, Any]], list[AnnotationProblem]]] = {}
    for sample in doc:
        if not isinstance(sample, dict) or not isinstance(sample.get("image_id"), str):
            continue
        file_name = sample["image_id"] + ".jpg"
        persons, problems = images.setdefault(file_name, ([], []))
        boxes = sample.get("human_annotations") or {}
        keypoints = sample.get("keypoint_annotations") or {}
        for human in sorted(set(keypoints) | set(boxes), key=_human_order):
            try:
                persons.append(_aic_person(human, boxes.get(human), keypoints.get(human)))
            except ValueError as exc:
                problems.append(AnnotationProblem(file_name, human, "invalid_annotation", str(exc)))
    for file_name in sorted(images):
        persons, problems = images[file_name]
        yield ImageAnnotations(file_name=file_name, persons=tuple(persons), problems=tuple(problems))


def _human_order(name: str) -> tuple[int, str]:
    """``human2`` before ``human10``."""
    digits = name.removeprefix("human")
    return (int(digits), name) if digits.isdigit() else (1 << 30, name)


def _aic_person(human: str, box: Any, keypoints: Any) -> dict[str, Any]:
    if not isinstance(keypoints, list) or len(keypoints) != 3 * len(AIC_JOINTS):
        count = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
        raise ValueError(f"keypoints must be a list of {3 * len(AIC_JOINTS)} numbers, got {count}")
    if not isinstance(box, list) or len(box) != 4:
        raise ValueError(f"box must be [x1, y1, x2, y2], got {box!r}")
    triples: list[list[Any]] = []
    for i in range(0, len(keypoints), 3):
        x, y, v = keypoints[i : i + 3]
        if isinstance(v, bool) or not isinstance(v, int | float) or v not in AIC_TO_COCO_VISIBILITY:
            raise ValueError(f"keypoint {i // 3} has visibility {v!r}, expected 1, 2 or 3")
        triples.append([x, y, AIC_TO_COCO_VISIBILITY[int(v)]])
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
        raise ValueError(f"box holds a non-numeric value: {box!r}")
    x1, y1, x2, y2 = box
    flat = [v for t in triples for v in t]
    return person_record(human, [x1, y1, x2 - x1, y2 - y1], flat, num_keypoints=len(AIC_JOINTS), mapping=AIC_TO_COCO17)

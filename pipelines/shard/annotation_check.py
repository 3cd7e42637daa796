"""Checking an annotation file's structure at launch, so that a malformed file fails in one line naming the
field and the fix, before the pipeline starts, instead of as a worker traceback.

Structure is checked here (the lists and the id / file-name types the join relies on); a malformed *person*
(wrong keypoint count, NaN, a box out of range) is an element-level problem, reported as an
``invalid_annotation`` row while its image keeps the other persons.
"""

import json
from collections.abc import Iterator
from typing import Any

from pipelines.shard.annotation_formats import AnnotationFormat, detect_format, parse_annotations


_MAX_LISTED = 5


def check_annotation_file(content: bytes, annotation_format: AnnotationFormat | str) -> dict[str, Any]:
    """Validate an annotation file; return what the manifest records about it.

    Returns:
        ``{"format", "images", "annotations_without_image", "image_ids_without_image"}``: the format used, how many
        images it lists, and the annotations whose ``image_id`` names no listed image (they cannot be joined and
        are left out; the first few ids are kept).

    Raises:
        ValueError: one line: the field (``annotations[3].id``), what it holds and what it must hold.
    """
    try:
        doc = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    fmt = AnnotationFormat(annotation_format)
    as_aic = fmt == AnnotationFormat.aic or (fmt == AnnotationFormat.auto and isinstance(doc, list))
    problem = next(_aic_problems(doc) if as_aic else _coco_problems(doc), None)
    if problem:  # checked before the format is told: telling it walks the same lists
        raise ValueError(problem)
    if fmt == AnnotationFormat.auto:
        fmt = detect_format(doc)
    dangling = [] if fmt == AnnotationFormat.aic else _dangling_image_ids(doc)
    try:
        images = sum(1 for _ in parse_annotations(content, fmt))
    except (TypeError, KeyError, AttributeError) as exc:  # a structure this check does not know yet
        raise ValueError(f"malformed {fmt.value} file: {type(exc).__name__}: {exc}") from None
    return {
        "format": fmt.value,
        "images": images,
        "annotations_without_image": len(dangling),
        "image_ids_without_image": sorted({str(i) for i in dangling})[:_MAX_LISTED],
    }


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _coco_problems(doc: Any) -> Iterator[str]:
    if not isinstance(doc, dict):
        yield f"the top level must be a JSON object with 'images' and 'annotations', got {_kind(doc)}"
        return
    for name in ("images", "annotations", "categories"):
        if name in doc and not isinstance(doc[name], list):
            yield f"'{name}' must be a list, got {_kind(doc[name])} ({str(doc[name])[:40]})"
            return
    seen: dict[Any, int] = {}
    for i, image in enumerate(doc.get("images", [])):
        where = f"images[{i}]"
        if not isinstance(image, dict):
            yield f"{where} must be an object with 'id' and 'file_name', got {_kind(image)}"
        elif not _is_id(image.get("id")):
            yield f"{where}.id must be an integer or a string, got {_kind(image.get('id'))} {image.get('id')!r}"
        elif not isinstance(image.get("file_name"), str) or not image["file_name"]:
            value = image.get("file_name")
            yield f"{where}.file_name must be a non-empty string, got {_kind(value)} {value!r}"
        elif image["id"] in seen:
            yield f"{where}.id {image['id']!r} repeats images[{seen[image['id']]}].id; image ids must be unique"
        else:
            seen[image["id"]] = i
    for i, ann in enumerate(doc.get("annotations", [])):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            yield f"{where} must be an object, got {_kind(ann)}"
            continue
        for field in ("id", "image_id"):
            if not _is_id(ann.get(field)):
                yield f"{where}.{field} must be an integer or a string, got {_kind(ann.get(field))} {ann.get(field)!r}"
        if "category_id" in ann and not _is_id(ann["category_id"]):
            yield f"{where}.category_id must be an integer or a string, got {_kind(ann['category_id'])}"
    for i, category in enumerate(doc.get("categories", [])):
        if not isinstance(category, dict):
            yield f"categories[{i}] must be an object with 'id' and 'name', got {_kind(category)}"


def _dangling_image_ids(doc: dict[str, Any]) -> list[Any]:
    ids = {image["id"] for image in doc.get("images", [])}
    return [ann["image_id"] for ann in doc.get("annotations", []) if ann["image_id"] not in ids]


def _aic_problems(doc: Any) -> Iterator[str]:
    if not isinstance(doc, list):
        yield f"an AI Challenger file must be a JSON list of samples, got {_kind(doc)}"
        return
    for i, sample in enumerate(doc):
        where = f"[{i}]"
        if not isinstance(sample, dict):
            yield f"{where} must be an object, got {_kind(sample)}"
        elif not isinstance(sample.get("image_id"), str) or not sample["image_id"]:
            yield f"{where}.image_id must be a non-empty string, got {_kind(sample.get('image_id'))}"
        else:
            for field in ("human_annotations", "keypoint_annotations"):
                if field in sample and not isinstance(sample[field], dict):
                    yield f"{where}.{field} must be an object of humanN entries, got {_kind(sample[field])}"

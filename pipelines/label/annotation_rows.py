"""Building rows of the annotations table (:data:`schemas.ANNOTATION_SCHEMA`) from scored predictions."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas import SCHEMA_VERSION


if TYPE_CHECKING:  # types only: writers and dpmesh-refilter import this module without loading torch
    from dpmesh_core.body_identity import BodyModelId
    from dpmesh_core.confidence import ConfidenceSignals
    from dpmesh_core.occlusion import OcclusionSignals
    from dpmesh_core.person_prediction import PersonPrediction
    from pipelines.label.persons import PersonTask


def _floats(array: np.ndarray) -> list[Any]:
    """Nested lists of Python floats (float32 values), the shape Arrow's fixed-size lists take."""
    result: list[Any] = np.asarray(array, dtype=np.float32).tolist()
    return result


def annotation_row(
    task: PersonTask,
    prediction: PersonPrediction,
    signals: ConfidenceSignals,
    occlusion: OcclusionSignals,
    *,
    confidence: float,
    quality_tier: str,
    reasons: list[str],
    model_id: str,
    body_model: BodyModelId | None,
) -> dict[str, Any]:
    """One row per person: inputs, SMPL parameters in the full-image camera, every signal, the verdict, lineage
    (shard URI, source annotation id, body model) and occlusion metadata."""
    x, y, w, h = (float(v) for v in prediction.crop_bbox_xywh)
    row: dict[str, Any] = {
        "sample_id": task.sample_id,
        "image_key": task.image_key,
        "shard": task.shard,
        "source_uri": task.source_uri,
        "image_width": task.image_width,
        "image_height": task.image_height,
        "person_idx": task.person_idx,
        "bbox_xyxy": _floats(task.person.bbox_xyxy),
        "crop_bbox_xywh": [x, y, w, h],
        "keypoints_2d": _floats(task.person.keypoints_2d),
        "keypoint_source": task.keypoint_source,
        "global_orient": _floats(prediction.global_orient),
        "body_pose": _floats(prediction.body_pose),
        "betas": _floats(prediction.betas),
        "transl": _floats(prediction.transl),
        "focal_length": float(prediction.focal_length),
        "principal_point": _floats(prediction.principal_point),
        "joints_3d": _floats(prediction.joints_3d),
        "joints_2d_proj": _floats(prediction.joints_2d_proj),
        "confidence": float(confidence),
        "quality_tier": quality_tier,
        "reasons": list(reasons),
        "model_id": model_id,
        "schema_version": SCHEMA_VERSION,
        "shard_uri": task.shard_uri,
        "annotation_id": task.person.annotation_id,
        "body_model": None if body_model is None else body_model.name,
        "body_model_sha256": None if body_model is None else body_model.sha256,
    }
    for values in (signals, occlusion):
        for field in dataclasses.fields(values):
            row[field.name] = getattr(values, field.name)
    return row


def annotation_sort_key(row: dict[str, Any]) -> tuple[str, int]:
    """Rows are written in (image key, person index) order, so reruns give identical files."""
    return row["image_key"], row["person_idx"]

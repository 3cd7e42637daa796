"""Scoring one labeled person: confidence signals, occlusion metadata, confidence and tier, as an annotation row."""

from typing import Any

from dpmesh_core.calibration import ConfidenceCalibration
from dpmesh_core.confidence import FilterThresholds, score_person
from dpmesh_core.occlusion import compute_occlusion
from pipelines.label.annotation_rows import annotation_row
from pipelines.label.records import LabeledPerson


ACCEPTED, REJECTED = "accepted", "rejected"


def score_labeled(
    labeled: LabeledPerson,
    model_id: str,
    thresholds: FilterThresholds,
    calibration: ConfidenceCalibration | None = None,
) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """``(ACCEPTED | REJECTED, annotation row, reasons)`` for one person's prediction (``calibration``: see
    `dpmesh_core.confidence.combine`)."""
    task, prediction = labeled.task, labeled.prediction
    image_hw = (task.image_height, task.image_width)
    scored = score_person(
        prediction,
        keypoints_2d=task.person.keypoints_2d,
        image_hw=image_hw,
        bbox_xyxy=task.person.bbox_xyxy,
        other_boxes=task.other_boxes,
        det_score=task.person.det_score,
        thresholds=thresholds,
        flip_pa_mpjpe_mm=labeled.flip_pa_mpjpe_mm,
        calibration=calibration,
    )
    # Metadata for selecting occlusion subsets, not a filter signal: it never changes confidence, tier or reasons.
    occlusion = compute_occlusion(
        task.person.keypoints_2d,
        task.keypoint_source,
        task.person.bbox_xyxy,
        task.other_keypoints,
        prediction.joints_3d,
        float(prediction.focal_length),
        prediction.principal_point,
        image_hw,
    )
    row = annotation_row(
        task,
        prediction,
        scored.signals,
        occlusion,
        confidence=scored.confidence,
        quality_tier=scored.quality_tier,
        reasons=list(scored.reasons),
        model_id=model_id,
        body_model=labeled.body_model,
    )
    return (ACCEPTED if scored.accepted else REJECTED), row, tuple(scored.reasons)

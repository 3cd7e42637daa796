"""Scoring one labeled person: ``dpmesh_core.confidence`` signals, confidence and tier, as an annotation row."""

from typing import Any

from dpmesh_core.confidence import FilterThresholds, score_person
from pipelines.label.annotation_rows import annotation_row
from pipelines.label.model_handler import LabeledPerson


ACCEPTED, REJECTED = "accepted", "rejected"


def score_labeled(
    labeled: LabeledPerson, model_id: str, thresholds: FilterThresholds
) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """``(ACCEPTED | REJECTED, annotation row, reasons)`` for one person's prediction."""
    task, prediction = labeled.task, labeled.prediction
    scored = score_person(
        prediction,
        keypoints_2d=task.person.keypoints_2d,
        image_hw=(task.image_height, task.image_width),
        bbox_xyxy=task.person.bbox_xyxy,
        other_boxes=task.other_boxes,
        det_score=task.person.det_score,
        thresholds=thresholds,
        flip_pa_mpjpe_mm=labeled.flip_pa_mpjpe_mm,
    )
    row = annotation_row(
        task,
        prediction,
        scored.signals,
        confidence=scored.confidence,
        quality_tier=scored.quality_tier,
        reasons=list(scored.reasons),
        model_id=model_id,
    )
    return (ACCEPTED if scored.accepted else REJECTED), row, tuple(scored.reasons)

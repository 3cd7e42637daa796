"""The typed records of ``dpmesh-label``'s per-shard step (the shard unit itself is
:mod:`pipelines.common.label_units`).

Torch-free, so the driver's planning and the per-shard step load no model code (the model comes in through its
handler).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:  # type names only: their modules import torch
    from dpmesh_core.body_identity import BodyModelId
    from dpmesh_core.person_prediction import PersonPrediction
    from pipelines.label.persons import PersonTask


@dataclass(frozen=True)
class LabeledPerson:
    """A person's task (without its crop), the model's prediction for it and the body model that made the mesh."""

    task: PersonTask
    prediction: PersonPrediction
    flip_pa_mpjpe_mm: float | None = None
    body_model: BodyModelId | None = None

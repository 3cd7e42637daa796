"""The typed records of ``dpmesh-label``'s per-shard step that planning, writing and refiltering share.

Torch-free, so ``dpmesh-refilter``, the driver's planning and the per-shard step load no model code (the model
comes in through its handler).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:  # type names only: their modules import torch
    from dpmesh_core.body_identity import BodyModelId
    from dpmesh_core.person_prediction import PersonPrediction
    from pipelines.label.inputs import PersonTask


@dataclass(frozen=True)
class ShardTask:
    """One shard to label: the unit of work, of commit and of resume.

    Attributes:
        uri: The shard tar.
        name: ``shard-NNNNNN``.
        identity: What the shard is: ``{"tar_bytes": int, "tar_sha1": str | None}`` from the shard set's manifest
            (``tar_sha1`` None when labeled without one). The marker records it, so a changed shard is relabeled.
        max_image_pixels: The pixel limit its shard set was made with (``shard.max_image_pixels`` in the
            manifest); None when the manifest does not say.
    """

    uri: str
    name: str
    identity: dict[str, Any]
    max_image_pixels: int | None = None


@dataclass
class ShardReport:
    """The per-shard counts the reader keeps (``images_in = images_ok + images_errored``) and what it read."""

    counts: Counter[str] = field(
        default_factory=lambda: Counter({"images_in": 0, "images_ok": 0, "images_errored": 0, "persons_in": 0})
    )
    tar_bytes: int = 0
    tar_sha1: str = ""
    detector_models: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LabeledPerson:
    """A person's task (without its crop), the model's prediction for it and the body model that made the mesh."""

    task: PersonTask
    prediction: PersonPrediction
    flip_pa_mpjpe_mm: float | None = None
    body_model: BodyModelId | None = None

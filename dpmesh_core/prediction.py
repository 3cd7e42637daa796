"""The one prediction path: prepared persons → one forward pass → full-image predictions (+ the flip signal).

`predict_persons` is the only place that calls the model on persons: `DPMesh.predict` (notebooks), the pipeline's
model handler and the benchmarks all go through it, so the sequence `model(**batch_inputs(...))` →
`to_full_image(...)` and the flip test around it are written once. The crop geometry is always the model's own
(`model.config.crop_geometry`).

This module does not import `dpmesh_core.model` (which imports it for `DPMesh.predict`): it types the model by
the `PersonModel` protocol below, which `DPMesh` and `FastDPMesh` satisfy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from dpmesh_core.body_model import BodyModel
from dpmesh_core.config import CropGeometry, DPMeshConfig
from dpmesh_core.flip import flip_consistency_mm, flip_person_inputs, unflip_pose
from dpmesh_core.joints import coco17_to_smpl30, openpose18_to_smpl30
from dpmesh_core.outputs import DPMeshOutput
from dpmesh_core.person_prediction import PersonPrediction
from dpmesh_core.postprocessing import batch_inputs, to_full_image
from dpmesh_core.preprocessing import PersonInputs, prepare_person


KEYPOINT_CONVERTERS = {"coco17": coco17_to_smpl30, "openpose18": openpose18_to_smpl30}


class PersonModel(Protocol):
    """What prediction needs of a model: its config (crop geometry), placement, body model and forward."""

    @property
    def config(self) -> DPMeshConfig: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def input_dtype(self) -> torch.dtype: ...

    @property
    def body_model(self) -> BodyModel: ...

    def __call__(
        self, images: torch.Tensor, joints: torch.Tensor, joints_mask: torch.Tensor, focal: torch.Tensor
    ) -> DPMeshOutput: ...


@dataclass(frozen=True)
class BatchPrediction:
    """What `predict_persons` returns, one entry per input person, in input order.

    Attributes:
        persons: the predictions in full-image coordinates.
        flip_pa_mpjpe_mm: PA-MPJPE (mm, SMPL-24) between each prediction and the un-flipped prediction on its
            mirrored crop; None for every person when the flip test was not asked for.
    """

    persons: list[PersonPrediction]
    flip_pa_mpjpe_mm: list[float | None]


def predict_persons(model: PersonModel, persons: Sequence[PersonInputs], *, flip: bool = False) -> BatchPrediction:
    """One forward pass over `persons` (one model batch), in full-image coordinates; with `flip`, a second pass over
    the mirrored crops gives each person's flip consistency (`dpmesh_core.flip`), at twice the model cost.

    Runs under `torch.inference_mode()`. Inputs must have been prepared with the model's geometry
    (`prepare_person(..., model.config.crop_geometry)`); the model rejects crops of another size.

    Args:
        model: a `DPMesh` (or `FastDPMesh`).
        persons: inputs from `dpmesh_core.preprocessing.prepare_person`, in batch order.
        flip: also run the flip test.
    """
    if not persons:
        return BatchPrediction([], [])
    geometry = model.config.crop_geometry
    with torch.inference_mode():
        predictions = to_full_image(_forward(model, persons), persons, geometry)
        flips: list[float | None] = [None] * len(persons)
        if flip:
            flips = list(_flip_pa_mpjpe_mm(model, persons, predictions, geometry))
    return BatchPrediction(predictions, flips)


def predict_image(
    model: PersonModel, image: np.ndarray, keypoints: np.ndarray, keypoint_format: str = "coco17"
) -> list[PersonPrediction]:
    """Pre-process every person of one image, run one batch, post-process (`DPMesh.predict`).

    Args:
        image: `(H, W, 3)` uint8 RGB.
        keypoints: `(P, 17, 3)` COCO-17 (or `(P, 18, 3)` OpenPose-18 with `keypoint_format="openpose18"`), x, y in
            image px and confidence; a single `(17, 3)` person is accepted too.

    Raises:
        InvalidPersonInput: for the first invalid person (notebook use; the pipeline handles persons one by one).
        ValueError: unknown `keypoint_format`.
    """
    if keypoint_format not in KEYPOINT_CONVERTERS:
        raise ValueError(f"keypoint_format={keypoint_format!r}; expected one of {sorted(KEYPOINT_CONVERTERS)}")
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim == 2:
        keypoints = keypoints[None]
    geometry = model.config.crop_geometry
    persons = [prepare_person(image, KEYPOINT_CONVERTERS[keypoint_format](kp), geometry) for kp in keypoints]
    return predict_persons(model, persons).persons


def _forward(model: PersonModel, persons: Sequence[PersonInputs]) -> DPMeshOutput:
    return model(**batch_inputs(persons, model.device, model.input_dtype))


def _flip_pa_mpjpe_mm(
    model: PersonModel, persons: Sequence[PersonInputs], preds: Sequence[PersonPrediction], geometry: CropGeometry
) -> list[float]:
    """PA-MPJPE (mm, SMPL-24) between each prediction and the un-flipped prediction on its mirrored crop."""
    out = _forward(model, [flip_person_inputs(p, geometry) for p in persons])
    # The un-flip is a numpy step; the body model then runs where the flipped outputs live, in their dtype.
    pose = torch.from_numpy(unflip_pose(out.smpl_pose.float().cpu().numpy())).to(
        out.smpl_shape.device, out.smpl_shape.dtype
    )
    # Translation does not matter: PA-MPJPE removes a similarity transform.
    vertices = model.body_model(pose, out.smpl_shape, torch.zeros_like(out.cam_trans))
    joints = model.body_model.joints30(vertices)[:, :24].float().cpu().numpy()
    return [flip_consistency_mm(np.asarray(p.joints_3d), joints[i]) for i, p in enumerate(preds)]

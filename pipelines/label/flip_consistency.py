"""Flip test-time consistency on the model's device: run the mirrored batch and compare the un-flipped bodies.

The pure steps (mirroring inputs, the SMPL pose un-flip, PA-MPJPE) live in ``dpmesh_core.flip``; this
runs the call sequence documented there inside the model handler, so it costs one more forward pass.
"""

from collections.abc import Sequence

import numpy as np
import torch

from dpmesh_core.flip import flip_consistency_mm, flip_person_inputs, unflip_pose
from dpmesh_core.model import DPMesh
from dpmesh_core.postprocessing import PersonPrediction, batch_inputs
from dpmesh_core.preprocessing import PersonInputs


def flip_pa_mpjpe_mm(model: DPMesh, persons: Sequence[PersonInputs], preds: Sequence[PersonPrediction]) -> list[float]:
    """PA-MPJPE (mm, SMPL-24) between each prediction and the un-flipped prediction on its mirrored crop."""
    mirrored = [flip_person_inputs(p) for p in persons]
    out = model(**batch_inputs(mirrored, model.device, model.input_dtype))
    pose = torch.from_numpy(unflip_pose(out.smpl_pose.float().cpu().numpy())).to(
        out.smpl_shape.device, out.smpl_shape.dtype
    )
    vertices = model.body_model(pose, out.smpl_shape, torch.zeros_like(out.cam_trans))
    joints = model.body_model.joints30(vertices)[:, :24].float().cpu().numpy()
    return [flip_consistency_mm(np.asarray(p.joints_3d), joints[i]) for i, p in enumerate(preds)]

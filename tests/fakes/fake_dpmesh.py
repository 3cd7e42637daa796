"""A stand-in for the DPMesh model handler, numpy only: for tests of the pipeline around the model.

Runner, resume, fault and byte-identity tests check what the pipeline does with predictions (batching in shard
order, commit, resume, the same bytes on every runner), not the network. `FakeDPMeshHandler` has what the
labeling step uses of `pipelines.label.model_handler.DPMeshModelHandler` (``load_model`` returns a predictor used
through methods only, so it can be shared across processes the same way; ``run_inference`` gives results with
``.inference``) but imports neither torch nor diffusers, so its worker processes start in a fraction of the
time. It is not a Beam ``ModelHandler`` subclass on purpose: that module imports torch. One end-to-end test per
job keeps the real tiny model.

The prediction is a deterministic function of each person's inputs, pixels included (a corrupted crop changes
it): the input keypoints, mapped back to the image, become the reprojected COCO-17 joints (plus an offset that
follows the crop's mean colour), and the camera-frame joints are those pixels back-projected at a depth that
also follows the crop. So labels are finite, mostly accepted by the filter, and differ between persons.
"""

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from dpmesh_core.body_identity import BodyModelId
from dpmesh_core.config import CropGeometry
from dpmesh_core.joints import COCO17_FROM_SMPL30, GRAPH15_FROM_SMPL30
from dpmesh_core.person_prediction import PersonPrediction
from dpmesh_core.preprocessing import PersonInputs
from pipelines.common.metrics import LABEL_METRICS
from pipelines.common.model_host import CallGate, HostStats, resolve_concurrent_calls
from pipelines.common.shared_model import model_tag
from pipelines.config import ModelConfig, ShareMode, config_to_dict
from pipelines.label.persons import PersonBatch
from pipelines.label.records import LabeledPerson


FAKE_MODEL_ID = "fake-dpmesh-numpy"
FAKE_BODY = BodyModelId(name="fake_body_for_tests", sha256="0" * 64)
FAKE_GEOMETRY = CropGeometry(crop_size=64, heatmap_size=8)  # small crops: the fake never looks at detail
_SMPL24 = 24


def fake_prediction(person: PersonInputs, geometry: CropGeometry) -> PersonPrediction:
    """The fake model's full-image prediction for one prepared person (see the module doc)."""
    colour = person.image.reshape(3, -1).mean(axis=1).astype(np.float64)  # (3,) in [0, 1]
    grid_to_crop = geometry.crop_size / geometry.heatmap_size
    crop_px = person.joints[:, :2].astype(np.float64) * grid_to_crop
    image_px = crop_px @ person.crop2img[:, :2].T.astype(np.float64) + person.crop2img[:, 2]  # (30, 2)
    image_px = image_px + (colour[:2] - 0.5) * 2.0  # at most 1 px: the pixels reach the label
    height, width = person.image_hw
    principal = np.array([width / 2.0, height / 2.0])
    depth = 4.0 + 2.0 * float(colour[2])  # m
    camera = np.column_stack([(image_px - principal) * depth / person.focal, np.full(len(image_px), depth)])
    orient = np.array([np.pi, 0.0, 0.0]) + 0.1 * (colour - 0.5)
    crop_side = float(person.bbox_xywh[2])
    return PersonPrediction(
        global_orient=orient.astype(np.float32),
        body_pose=np.tile(0.05 * (colour - 0.5), 23).astype(np.float32),
        betas=np.linspace(-0.5, 0.5, 10, dtype=np.float32) * float(colour.mean()),
        transl=camera[:_SMPL24].mean(axis=0).astype(np.float32),
        focal_length=float(person.focal),
        principal_point=principal.astype(np.float32),
        joints_3d=camera[:_SMPL24].astype(np.float32),
        coco17_3d=camera[list(COCO17_FROM_SMPL30)].astype(np.float32),
        joints_2d_proj=image_px[list(COCO17_FROM_SMPL30)].astype(np.float32),
        vposer_z=np.zeros(32, np.float32),
        joint_img=np.column_stack([crop_px[list(GRAPH15_FROM_SMPL30)] / geometry.crop_size, np.full(15, 0.5)]).astype(
            np.float32
        ),
        smpl_joints15_img=(crop_px[list(GRAPH15_FROM_SMPL30)] / geometry.crop_size).astype(np.float32),
        crop_bbox_xywh=person.bbox_xywh.astype(np.float32),
        cam_trans_crop=np.array([0.0, 0.0, depth * geometry.crop_size / max(crop_side, 1.0)], np.float32),
        vertices=np.zeros((0, 3), np.float32),
    )


class FakePredictor:
    """What `FakeDPMeshHandler.load_model` returns: `DPMeshPredictor`'s methods, on numpy, behind the same gate."""

    def __init__(self, gate: CallGate) -> None:
        self._gate = gate

    def host_stats(self) -> HostStats:
        return self._gate.stats()

    def model_id(self) -> str:
        return FAKE_MODEL_ID

    def body_model(self) -> BodyModelId:
        return FAKE_BODY

    def crop_geometry(self) -> CropGeometry:
        return FAKE_GEOMETRY

    def predict(
        self, persons: Sequence[PersonInputs], flip_consistency: bool = False, caller: int | None = None
    ) -> tuple[list[PersonPrediction], list[float | None]]:
        with self._gate.call(caller):
            predictions = [fake_prediction(p, FAKE_GEOMETRY) for p in persons]
        flips: list[float | None] = [0.0 if flip_consistency else None for _ in persons]
        return predictions, flips


class FakeResult(NamedTuple):
    """The fields of Beam's ``PredictionResult`` that the labeling step reads."""

    example: str
    inference: list[LabeledPerson]
    model_id: str


class FakeDPMeshHandler:
    """`DPMeshModelHandler`'s surface over `FakePredictor` (model config: sharing, and the tag that names it).

    ``seconds_per_batch`` makes each batch take at least that long, like a real model (for kill and timing tests).
    """

    kind = "dpmesh"  # it stands in for the DPMesh handler (the marker's model_hosts key)

    def __init__(self, cfg: ModelConfig, *, flip_consistency: bool = False, seconds_per_batch: float = 0.0) -> None:
        self._cfg = cfg
        self._flip = flip_consistency
        self._seconds_per_batch = seconds_per_batch

    def load_model(self) -> FakePredictor:
        cfg = self._cfg
        limit = resolve_concurrent_calls(cfg.concurrent_calls, cfg.device.value, cfg.threads)
        return FakePredictor(CallGate(limit, shared=self.share_model_across_processes()))

    def run_inference(
        self, batch: Sequence[PersonBatch], model: FakePredictor, inference_args: dict[str, Any] | None = None
    ) -> list[FakeResult]:
        results = []
        for person_batch in batch:
            time.sleep(self._seconds_per_batch)
            tasks = list(person_batch.tasks)
            predictions, flips = model.predict([t.inputs for t in tasks], self._flip, os.getpid())
            body = model.body_model()
            labeled = [
                LabeledPerson(replace(t, inputs=replace(t.inputs, image=np.zeros((0,), np.float32))), p, f, body)
                for t, p, f in zip(tasks, predictions, flips, strict=True)
            ]
            results.append(FakeResult(person_batch.batch_id, labeled, FAKE_MODEL_ID))
        return results

    def model_tag(self) -> str:
        return model_tag("fake-dpmesh", config_to_dict(self._cfg))

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 1}

    def share_model_across_processes(self) -> bool:
        return ShareMode(self._cfg.share_across_processes).enabled(self._cfg.device)

    def get_metrics_namespace(self) -> str:
        return LABEL_METRICS

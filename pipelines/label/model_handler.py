"""The Beam ModelHandler that runs DPMesh on batches of persons.

It receives :class:`PersonBatch` elements, already cut by the shard reader to ``model.batch_size`` persons in
shard order, so each element is one forward pass. The model is one per process, or one per machine on GPU
(``share_model_across_processes``: Dataflow starts one SDK process per vCPU, and a copy each would not fit on
the GPU; see :mod:`pipelines.common.shared_model`), and runs under ``torch.inference_mode()``. A shared model is
called by several processes at once: its forward passes keep their state call-local, and the predictor's
:class:`~pipelines.common.model_host.CallGate` decides how many run together (``model.concurrent_calls``).
"""

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.base import PredictionResult

from dpmesh_core.body_identity import BodyModelId, body_model_id
from dpmesh_core.body_model import SMPLData
from dpmesh_core.config import CropGeometry
from dpmesh_core.fast_path import FastPathConfig, prepare_for_inference
from dpmesh_core.model import DPMesh
from dpmesh_core.person_prediction import PersonPrediction
from dpmesh_core.prediction import predict_persons
from dpmesh_core.preprocessing import PersonInputs
from pipelines.common.batch_handler import PerBatchModelHandler
from pipelines.common.metrics import LABEL_METRICS
from pipelines.common.model_host import CallGate, HostStats
from pipelines.common.torch_device import TORCH_DTYPES, checked_device
from pipelines.config import ModelConfig, ModelName
from pipelines.config.storage import StorageConfig
from pipelines.label.persons import PersonBatch, PersonTask
from pipelines.label.records import LabeledPerson
from pipelines.weights import local_copy


logger = logging.getLogger(__name__)


def check_device(cfg: ModelConfig) -> torch.device:
    """The model's device; fails at launch when ``model.device=cuda`` and no GPU is visible."""
    return checked_device(cfg.device, "model.device")


def load_model(cfg: ModelConfig, storage_cfg: StorageConfig) -> DPMesh:
    """Build the configured model on its device, in eval mode, weights frozen.

    With ``model.fast_path`` the weights are loaded in fp32 and converted once by
    ``dpmesh_core.fast_path.prepare_for_inference`` (compute dtype ``model.dtype``, fixed batch ``model.batch_size``).
    """
    device = check_device(cfg)
    dtype = torch.float32 if cfg.fast_path else TORCH_DTYPES[cfg.dtype]
    model = _load_network(cfg, storage_cfg, device, dtype)
    if not cfg.fast_path:
        return model
    fast_cfg = FastPathConfig(
        dtype=TORCH_DTYPES[cfg.dtype], channels_last=cfg.channels_last, compile=cfg.compile,
        cuda_graphs=cfg.cuda_graphs, batch_size=cfg.batch_size,
    )  # fmt: skip
    return prepare_for_inference(model, fast_cfg)


def _load_network(cfg: ModelConfig, storage_cfg: StorageConfig, device: torch.device, dtype: torch.dtype) -> DPMesh:
    if cfg.name == ModelName.tiny:
        return DPMesh.tiny(seed=cfg.seed).to(device=device, dtype=dtype).eval()
    cache = os.path.expanduser(cfg.cache_dir)
    if cfg.pretrained:
        return DPMesh.from_pretrained(local_copy(cfg.pretrained, cache, storage_cfg), device=device, dtype=dtype)
    smpl = None
    if cfg.smpl_model:
        smpl = SMPLData.read(local_copy(cfg.smpl_model, cache, storage_cfg))
    checkpoint = local_copy(str(cfg.checkpoint), cache, storage_cfg)
    return DPMesh.from_official_checkpoint(checkpoint, device=device, dtype=dtype, smpl=smpl)


class DPMeshPredictor:
    """A loaded DPMesh behind methods only: what a handler loads and what crosses a process boundary.

    With a model shared across processes, callers hold a proxy to this object; every argument and result of its
    methods is pickled (numpy arrays and dataclasses of them), and nothing is read as an attribute. The proxy's
    host serves each caller from its own thread, so ``predict`` runs concurrently: it keeps nothing between calls
    (the model's forward passes are call-local) and passes through ``gate``, which bounds how many run at once.
    """

    def __init__(self, model: DPMesh, threads: int, gate: CallGate, *, synthetic_body: bool) -> None:
        """``synthetic_body``: the model runs the tiny configuration's random body, which must not be named SMPL."""
        self._model = model
        self._threads = threads
        self._gate = gate
        # Hashed once per process (about 17 MB of SMPL arrays), not per batch.
        self._body_model = body_model_id(model.body_model.data, synthetic=synthetic_body)

    def model_id(self) -> str:
        """The checkpoint's content hash (``model_id`` column)."""
        return self._model.model_id

    def body_model(self) -> BodyModelId:
        """Name and array hash of the body model (``body_model`` / ``body_model_sha256`` columns)."""
        return self._body_model

    def crop_geometry(self) -> CropGeometry:
        """The crop and keypoint-grid sizes persons must be prepared with for this model (its config's)."""
        return self._model.config.crop_geometry

    def host_stats(self) -> HostStats:
        """How the model is hosted and what its host has seen (recorded in each shard's marker)."""
        return self._gate.stats()

    def predict(
        self, persons: Sequence[PersonInputs], flip_consistency: bool = False, caller: int | None = None
    ) -> tuple[list[PersonPrediction], list[float | None]]:
        """One forward pass over ``persons`` (one model batch) in full-image coordinates, and per person the flip
        PA-MPJPE in mm (None without ``flip_consistency``): ``dpmesh_core.prediction.predict_persons``.

        The predictions leave without vertices (`(6890, 3)` each, which no column needs): they would be most of
        what a shared model pickles back to its callers. A mesh with non-finite values leaves as one NaN vertex,
        so the scorer still rejects it (``non_finite_output``). ``caller``: the calling process's pid (counted by
        the gate).
        """
        with self._gate.call(caller):
            # Per call, in the calling thread: a shared model runs in its host's server threads, and OpenMP's thread
            # count is per thread, so a count set once elsewhere would not reach them (and the bits would differ).
            torch.set_num_threads(self._threads)
            result = predict_persons(self._model, persons, flip=flip_consistency)
        return [replace(p, vertices=_vertices_stand_in(p.vertices)) for p in result.persons], result.flip_pa_mpjpe_mm


def _vertices_stand_in(vertices: np.ndarray) -> np.ndarray:
    """`(0, 3)` for a finite mesh, `(1, 3)` NaN for one that is not."""
    finite = bool(np.isfinite(vertices).all())
    return np.zeros((0, 3), np.float32) if finite else np.full((1, 3), np.nan, np.float32)


class DPMeshModelHandler(PerBatchModelHandler[PersonBatch, list[LabeledPerson], DPMeshPredictor]):
    """Runs DPMesh on :class:`PersonBatch` es; holds only picklable configs until ``load_model``.

    ``dpmesh-label`` calls it from its per-shard step (:mod:`pipelines.label.label_shard`); it also runs under
    ``RunInference(KeyedModelHandler(...))``. Either way the model is a :class:`DPMeshPredictor`, possibly a proxy
    to one in another process, and is used through its methods only. Each element is one forward pass of
    ``model.batch_size`` persons (see :class:`PersonBatch`); sharing and hints follow
    :class:`~pipelines.common.batch_handler.PerBatchModelHandler`.
    """

    kind = "dpmesh"
    metrics_namespace = LABEL_METRICS
    _cfg: ModelConfig

    def __init__(
        self,
        cfg: ModelConfig,
        storage_cfg: StorageConfig,
        *,
        flip_consistency: bool = False,
        resource_hints: dict[str, str] | None = None,
    ) -> None:
        super().__init__(cfg, resource_hints)
        self._storage_cfg = storage_cfg
        self._flip = flip_consistency

    def load_model(self) -> DPMeshPredictor:
        cfg = self._cfg
        torch.set_num_threads(cfg.threads)  # the process that runs the model (see ModelConfig.threads)
        gate = self.call_gate()
        model = load_model(cfg, self._storage_cfg)
        if (probe := self.overlap_probe()) is not None:  # test hook: mid-pass, after the UNet wrote maps and taps
            model.backbone.unet.register_forward_hook(probe)
        limit = gate.stats().concurrent_calls
        logger.info("loaded model %s on %s (%s), %d concurrent call(s)", model.model_id, cfg.device.value,
                    cfg.dtype.value, limit)  # fmt: skip
        return DPMeshPredictor(model, cfg.threads, gate, synthetic_body=cfg.name == ModelName.tiny)

    def run_inference(
        self, batch: Sequence[PersonBatch], model: DPMeshPredictor, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        """One forward pass per :class:`PersonBatch`; the result's inference is one LabeledPerson per person."""
        model_id = model.model_id()
        return [self._run_batch(person_batch, model, model_id) for person_batch in batch]

    def _run_batch(self, person_batch: PersonBatch, model: DPMeshPredictor, model_id: str) -> PredictionResult:
        tasks = list(person_batch.tasks)
        predictions, flips = model.predict([t.inputs for t in tasks], self._flip, os.getpid())
        body = model.body_model()  # a method call: the model may be a proxy to another process
        labeled = [
            LabeledPerson(_without_crop(t), p, f, body) for t, p, f in zip(tasks, predictions, flips, strict=True)
        ]
        return PredictionResult(example=person_batch.batch_id, inference=labeled, model_id=model_id)

    def get_num_bytes(self, batch: Sequence[PersonBatch]) -> int:
        return sum(t.inputs.image.nbytes for person_batch in batch for t in person_batch.tasks)


def _without_crop(task: PersonTask) -> PersonTask:
    """The task minus its 786 kB float crop, which nothing after inference needs."""
    empty = np.zeros((0,), dtype=np.float32)
    return replace(task, inputs=replace(task.inputs, image=empty))

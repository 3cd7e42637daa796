"""The Beam ModelHandler that runs DPMesh on batches of persons.

``RunInference(KeyedModelHandler(DPMeshModelHandler(cfg)))`` receives :class:`PersonBatch` elements,
already cut by the shard reader to ``model.batch_size`` persons in shard order, so each element is one
forward pass (``BatchElements`` passes them one by one). It loads one model per process, or one per
machine on GPU (``share_model_across_processes``: Dataflow starts one SDK process per vCPU, and a copy
each would not fit on the GPU), and runs under ``torch.inference_mode()``.
"""

import io
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from dpmesh_core.body_model import SMPLData
from dpmesh_core.fast_path import FastPathConfig, prepare_for_inference
from dpmesh_core.model import DPMesh
from dpmesh_core.postprocessing import PersonPrediction, batch_inputs, to_full_image
from pipelines.config import ConfigError, Device, DType, ModelConfig, ModelName, config_to_dict
from pipelines.config.storage import StorageConfig
from pipelines.label.flip_consistency import flip_pa_mpjpe_mm
from pipelines.label.inputs import PersonBatch, PersonTask
from pipelines.weights import local_copy


logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "dpmesh"
_TORCH_DTYPES = {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16}


@dataclass(frozen=True)
class LabeledPerson:
    """A person's task (without its crop) and the model's prediction for it."""

    task: PersonTask
    prediction: PersonPrediction
    flip_pa_mpjpe_mm: float | None = None


def check_device(cfg: ModelConfig) -> None:
    """Fail at launch when ``model.device=cuda`` and no GPU is visible (never fall back to CPU silently)."""
    if cfg.device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda but no CUDA GPU is visible; pass model.device=cpu to run on CPU")


def load_model(cfg: ModelConfig, storage_cfg: StorageConfig) -> DPMesh:
    """Build the configured model on its device, in eval mode, weights frozen.

    With ``model.fast_path`` the weights are loaded in fp32 and converted once by
    ``dpmesh_core.fast_path.prepare_for_inference`` (compute dtype ``model.dtype``, fixed batch ``model.batch_size``).
    """
    check_device(cfg)
    device = torch.device(cfg.device.value)
    dtype = torch.float32 if cfg.fast_path else _TORCH_DTYPES[cfg.dtype]
    model = _load_network(cfg, storage_cfg, device, dtype)
    if not cfg.fast_path:
        return model
    fast_cfg = FastPathConfig(
        dtype=_TORCH_DTYPES[cfg.dtype], channels_last=cfg.channels_last, compile=cfg.compile,
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
        with open(local_copy(cfg.smpl_model, cache, storage_cfg), "rb") as f:
            smpl = SMPLData.from_arrays(dict(np.load(io.BytesIO(f.read()))))
    checkpoint = local_copy(str(cfg.checkpoint), cache, storage_cfg)
    return DPMesh.from_official_checkpoint(checkpoint, device=device, dtype=dtype, smpl=smpl)


_MODEL_CACHE: dict[str, DPMesh] = {}
_MODEL_CACHE_LOCK = threading.Lock()


def cached_model(cfg: ModelConfig, storage_cfg: StorageConfig) -> DPMesh:
    """The model for ``cfg``, loaded once per process and kept for later pipelines (``dpmesh-label`` waves).

    Beam's own sharing lives as long as one pipeline; a real checkpoint takes tens of seconds to load, so
    the one most recent model stays cached in the process (a new config replaces it).
    """
    key = json.dumps(config_to_dict(cfg), sort_keys=True)
    with _MODEL_CACHE_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE.clear()
            model = load_model(cfg, storage_cfg)
            logger.info("loaded model %s on %s (%s)", model.model_id, cfg.device.value, cfg.dtype.value)
            _MODEL_CACHE[key] = model
        return _MODEL_CACHE[key]


class DPMeshModelHandler(ModelHandler[PersonBatch, list[LabeledPerson], DPMesh]):
    """Runs DPMesh on :class:`PersonBatch` es; holds only picklable configs until ``load_model``."""

    def __init__(
        self,
        cfg: ModelConfig,
        storage_cfg: StorageConfig,
        *,
        flip_consistency: bool = False,
        resource_hints: dict[str, str] | None = None,
    ) -> None:
        self._cfg = cfg
        self._storage_cfg = storage_cfg
        self._flip = flip_consistency
        self._resource_hints = dict(resource_hints or {})

    def load_model(self) -> DPMesh:
        return cached_model(self._cfg, self._storage_cfg)

    def run_inference(
        self, batch: Sequence[PersonBatch], model: DPMesh, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        """One forward pass per :class:`PersonBatch`; the result's inference is one LabeledPerson per person."""
        return [self._run_batch(person_batch, model) for person_batch in batch]

    def _run_batch(self, person_batch: PersonBatch, model: DPMesh) -> PredictionResult:
        tasks = list(person_batch.tasks)
        inputs = [t.inputs for t in tasks]
        with torch.inference_mode():
            predictions = to_full_image(model(**batch_inputs(inputs, model.device, model.input_dtype)), inputs)
            flips = self._flip_errors(model, tasks, predictions) if self._flip else [None] * len(tasks)
        labeled = [LabeledPerson(_without_crop(t), p, f) for t, p, f in zip(tasks, predictions, flips, strict=True)]
        return PredictionResult(example=person_batch.batch_id, inference=labeled, model_id=model.model_id)

    def _flip_errors(
        self, model: DPMesh, tasks: list[PersonTask], preds: list[PersonPrediction]
    ) -> list[float | None]:
        return flip_pa_mpjpe_mm(model, [t.inputs for t in tasks], preds)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # Each element already is a model batch of model.batch_size persons (see PersonBatch).
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_resource_hints(self) -> dict[str, str]:
        """Right fitting: the accelerator hint that puts only this step on GPU workers (empty otherwise)."""
        return dict(self._resource_hints)

    def share_model_across_processes(self) -> bool:
        return self._cfg.device == Device.cuda

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def get_num_bytes(self, batch: Sequence[PersonBatch]) -> int:
        return sum(t.inputs.image.nbytes for person_batch in batch for t in person_batch.tasks)


def _without_crop(task: PersonTask) -> PersonTask:
    """The task minus its 786 kB float crop, which nothing after inference needs."""
    empty = np.zeros((0,), dtype=np.float32)
    return replace(task, inputs=replace(task.inputs, image=empty))

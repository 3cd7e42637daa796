"""DPMesh (CVPR 2024) re-implementation: model, checkpoint loading, pre/post-processing, geometry.

Importing this package does not import torch: the public names below are resolved lazily (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from dpmesh_core.body_model import BodyModel, SMPLData
    from dpmesh_core.config import CropGeometry, DPMeshConfig, official_config, tiny_config
    from dpmesh_core.errors import CheckpointKeyError, InvalidPersonInput
    from dpmesh_core.model import DPMesh
    from dpmesh_core.outputs import DPMeshOutput
    from dpmesh_core.person_prediction import PersonPrediction
    from dpmesh_core.prediction import BatchPrediction, predict_persons
    from dpmesh_core.preprocessing import PersonInputs, prepare_person

_LAZY: dict[str, str] = {
    "DPMesh": "dpmesh_core.model",
    "DPMeshOutput": "dpmesh_core.outputs",
    "DPMeshConfig": "dpmesh_core.config",
    "CropGeometry": "dpmesh_core.config",
    "official_config": "dpmesh_core.config",
    "tiny_config": "dpmesh_core.config",
    "BodyModel": "dpmesh_core.body_model",
    "SMPLData": "dpmesh_core.body_model",
    "InvalidPersonInput": "dpmesh_core.errors",
    "CheckpointKeyError": "dpmesh_core.errors",
    "PersonInputs": "dpmesh_core.preprocessing",
    "prepare_person": "dpmesh_core.preprocessing",
    "PersonPrediction": "dpmesh_core.person_prediction",
    "BatchPrediction": "dpmesh_core.prediction",
    "predict_persons": "dpmesh_core.prediction",
}
__all__ = [
    "BatchPrediction",
    "BodyModel",
    "CheckpointKeyError",
    "CropGeometry",
    "DPMesh",
    "DPMeshConfig",
    "DPMeshOutput",
    "InvalidPersonInput",
    "PersonInputs",
    "PersonPrediction",
    "SMPLData",
    "official_config",
    "predict_persons",
    "prepare_person",
    "tiny_config",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dpmesh_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""Which body model produced a label: a truthful name and a content hash of the arrays as loaded.

``body_model_sha256`` hashes the arrays the model actually runs (`SMPLData`), not a container file: the same SMPL
reaches the model from an official checkpoint's buffers, an ``.npz`` from ``dpmesh-convert-smpl`` or a
``smpl.safetensors`` of ``save_pretrained``, and a hash of either file would differ (zip timestamps, headers) while
the body is the same. To check a file against a label: ``body_model_sha256(SMPLData.from_arrays(np.load(path)))``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
    from dpmesh_core.body_model import SMPLData

SMPL_NEUTRAL_NAME = "smpl_neutral_10_betas"
"""The SMPL neutral body of the official checkpoints (or of ``model.smpl_model``), 10 shape coefficients."""

# Hashed in this order; head_top_regressor only when present (it changes joint 29, not the SMPL-24 joints).
_HASHED_ARRAYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "f", "head_top_regressor")


def synthetic_body_name(num_vertices: int) -> str:
    """Name of the random SMPL-layout body of the tiny model (`dpmesh_core.synthetic`): not SMPL, not a human shape."""
    return f"synthetic_random_body_{num_vertices}v"


@dataclass(frozen=True)
class BodyModelId:
    """The ``body_model`` and ``body_model_sha256`` columns."""

    name: str
    sha256: str


def body_model_sha256(data: SMPLData) -> str:
    """sha256 (hex) of the body-model arrays as the model uses them.

    Bytes hashed, per array of ``SMPLData.to_arrays()`` in the order v_template, shapedirs, posedirs, J_regressor,
    weights, f, head_top_regressor (when present): ``name``, ``dtype.str``, ``shape`` as text, then the C-order
    bytes. float32 arrays (int64 faces) as `SMPLData` stores them; shapedirs already cut to 10 betas.
    """
    arrays = data.to_arrays()
    digest = hashlib.sha256()
    for name in _HASHED_ARRAYS:
        if name not in arrays:
            continue
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def body_model_id(data: SMPLData, *, synthetic: bool) -> BodyModelId:
    """Name and hash of ``data``; ``synthetic`` for the tiny model's random body (never called SMPL)."""
    name = synthetic_body_name(data.num_vertices) if synthetic else SMPL_NEUTRAL_NAME
    return BodyModelId(name, body_model_sha256(data))

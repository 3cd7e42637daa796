"""The SMPL mesh of a label row: the body model the labels were made with, posed by the row's parameters.

Rows store SMPL parameters, not vertices (`(6890, 3)` per person would dwarf every other column), so the report runs
the body model again: ``dpmesh_core.body_model.BodyModel`` posed with ``global_orient + body_pose`` (axis-angle),
``betas`` and ``transl`` gives the vertices in the row's full-image camera frame (OpenCV axes, metres), exactly as
the label job computed them (its vertices are the crop-camera mesh shifted by ``transl - cam_trans``, which is what
posing with ``transl`` does). Torch is imported here only when a mesh is needed: the report's command imports none.
"""

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import ConfigError, StorageConfig
from pipelines.weights import local_copy


if TYPE_CHECKING:
    from dpmesh_core.body_model import SMPLData

_CACHE_DIR = "~/.cache/dpmesh-pseudolabel"
# Vertices of the tiny model's synthetic body (``DPMesh.tiny``).
TINY_BODY_VERTICES = 64


@dataclasses.dataclass(frozen=True)
class Body:
    """A body model for posing rows.

    Attributes:
        data: The SMPL arrays (``faces`` `(F, 3)` indexes the vertices).
        source: Where it came from, in words (shown in the report).
    """

    data: "SMPLData"
    source: str

    @property
    def faces(self) -> np.ndarray:
        """`(F, 3)` int64 vertex indices."""
        return np.asarray(self.data.faces, dtype=np.int64)


def _npz_body(uri: str, storage_cfg: StorageConfig, what: str) -> Body:
    """An SMPL ``.npz`` (``dpmesh-convert-smpl``), read as the label job reads ``model.smpl_model``."""
    from dpmesh_core.body_model import SMPLData

    return Body(SMPLData.read(local_copy(uri, os.path.expanduser(_CACHE_DIR), storage_cfg)), f"{what} {uri}")


def resolve_body(
    summary: dict[str, Any] | None, smpl_model: str | None, storage_cfg: StorageConfig, *, source_summary: Any = None
) -> Body:
    """The body model to pose rows with.

    ``smpl_model`` (``report.smpl_model``) wins; otherwise the labeling run's model config (``_summary.json``'s
    ``config.model``): the tiny model's synthetic body for ``model=tiny``, ``model.smpl_model``, or the
    ``smpl.safetensors`` of ``model.pretrained``. A ``dpmesh-refilter`` output names its source output;
    ``source_summary`` is that output's summary.

    Raises:
        ConfigError: the body model cannot be told (no summary, or an official checkpoint without an SMPL file,
            whose arrays would mean loading the whole checkpoint); the message names ``report.smpl_model``.
    """
    if smpl_model:
        return _npz_body(smpl_model, storage_cfg, "report.smpl_model")
    config = (summary or {}).get("config") or {}
    model = config.get("model")
    if model is None and source_summary is not None:
        return resolve_body(source_summary, None, storage_cfg)
    fix = "pass report.smpl_model=<SMPL neutral .npz from dpmesh-convert-smpl>"
    if model is None:
        raise ConfigError(f"the labels' summary does not say which body model made them; {fix}")
    if model.get("name") == "tiny":
        from dpmesh_core.synthetic import synthetic_smpl_data

        seed = int(model.get("seed", 0))
        # DPMesh.tiny's body, built without importing the network (diffusers takes many seconds to import); a test
        # checks it equals DPMesh.tiny(seed).body_model.data.
        data = synthetic_smpl_data(num_vertices=TINY_BODY_VERTICES, seed=seed)
        return Body(data, f"the tiny model's synthetic body (model.seed={seed})")
    if model.get("smpl_model"):
        return _npz_body(str(model["smpl_model"]), storage_cfg, "model.smpl_model")
    if model.get("pretrained"):
        from dpmesh_core.body_model import SMPLData
        from dpmesh_core.pretrained import SMPL_NAME

        folder = local_copy(str(model["pretrained"]), os.path.expanduser(_CACHE_DIR), storage_cfg)
        data = SMPLData.read(os.path.join(folder, SMPL_NAME))
        return Body(data, f"{SMPL_NAME} of model.pretrained {model['pretrained']}")
    raise ConfigError(f"the labels were made from an official checkpoint whose SMPL arrays live inside it; {fix}")


def pose_vertices(body: Body, rows: list[dict[str, Any]]) -> np.ndarray:
    """`(B, N, 3)` float32 vertices (m, full-image camera frame, OpenCV axes) of ``rows``' SMPL parameters."""
    import torch

    from dpmesh_core.body_model import BodyModel

    if not rows:
        return np.zeros((0, body.data.num_vertices, 3), np.float32)
    model = BodyModel(body.data).eval()

    def stack(*names: str) -> torch.Tensor:
        parts = [np.concatenate([np.asarray(r[n], np.float32).reshape(-1) for n in names]) for r in rows]
        return torch.from_numpy(np.stack(parts))

    with torch.inference_mode():
        vertices = model(stack("global_orient", "body_pose"), stack("betas"), stack("transl"))
    return np.asarray(vertices.numpy(), dtype=np.float32)


def project(points: np.ndarray, focal: float, principal: np.ndarray) -> np.ndarray:
    """`(N, 3)` camera-frame points (m) -> `(N, 2)` full-image pixels; points at or behind the camera -> NaN.

    Pinhole with square pixels (one ``focal_length``), the model's convention (``dpmesh_core.geometry``).
    """
    z = points[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = points[:, :2] / z * focal + np.asarray(principal, np.float64)[None]
    uv[(z[:, 0] <= 1e-6) | ~np.isfinite(uv).all(axis=1)] = np.nan
    return uv

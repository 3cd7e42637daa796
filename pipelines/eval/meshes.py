"""SMPL meshes for the evaluation: vertices and SMPL-24 joints from parameters, a batch at a time (torch, imported
on first use, so the job imports no torch unless a body model is given)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from pipelines.config import ConfigError
from pipelines.storage import Storage


@dataclass(frozen=True)
class BodyModelFiles:
    """The SMPL files of an evaluation (``body_model``, ``body_model_male``, ``body_model_female``): URIs."""

    neutral: str
    male: str | None = None
    female: str | None = None


class MeshBuilder:
    """SMPL vertices and joints from parameters, with one body model per gender.

    Args:
        models: ``{"neutral": arrays, "male": arrays, "female": arrays}``: smplx-style arrays (an ``.npz`` from
            ``dpmesh-convert-smpl``); ``neutral`` is required and stands in for a missing gender.
    """

    def __init__(self, models: dict[str, dict[str, np.ndarray]]) -> None:
        from dpmesh_core.body_model import BodyModel, SMPLData

        self._models = {gender: BodyModel(SMPLData.from_arrays(arrays)) for gender, arrays in models.items()}
        self._regressors = {g: np.asarray(model.data.J_regressor, np.float64) for g, model in self._models.items()}
        self.num_vertices = next(iter(self._models.values())).data.num_vertices

    def meshes(self, pose72: np.ndarray, betas: np.ndarray, gender: str = "neutral") -> tuple[np.ndarray, np.ndarray]:
        """``(vertices (B, V, 3), smpl24 joints (B, 24, 3))`` float64, metres, in the pelvis-relative frame of the
        SMPL layer (no translation; every metric here is translation-free), from `(B, 72)` axis-angle poses (rad) and
        `(B, 10)` betas, all of one gender (an unknown gender uses the neutral model)."""
        import torch

        model_gender = gender if gender in self._models else "neutral"
        model = self._models[model_gender]
        pose = np.asarray(pose72, np.float32).reshape(-1, 72)
        with torch.inference_mode():
            vertices = (
                model(
                    torch.as_tensor(pose),
                    torch.as_tensor(np.asarray(betas, np.float32).reshape(-1, 10)),
                    torch.zeros(pose.shape[0], 3),
                )
                .double()
                .numpy()
            )
        joints: np.ndarray = self._regressors[model_gender] @ vertices
        return vertices, joints

    def mesh(self, pose72: np.ndarray, betas: np.ndarray, gender: str = "neutral") -> tuple[np.ndarray, np.ndarray]:
        """One person's ``(vertices (V, 3), smpl24 joints (24, 3))`` (see `meshes`)."""
        vertices, joints = self.meshes(np.asarray(pose72)[None], np.asarray(betas)[None], gender)
        return vertices[0], joints[0]


def _smpl_arrays(storage: Storage, uri: str, key: str) -> dict[str, np.ndarray]:
    from dpmesh_core.body_model import read_smpl_arrays  # here: dpmesh_core.body_model imports torch

    try:
        return read_smpl_arrays(storage.read_bytes(uri), uri)
    except FileNotFoundError as exc:
        raise ConfigError(f"{key}={uri!r}: file not found") from exc
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{key}={uri!r}: not a readable .npz ({exc})") from exc


def load_meshes(storage: Storage, files: BodyModelFiles | None) -> MeshBuilder | None:
    """The body models ``files`` name (None without them).

    Raises:
        ConfigError: a file that is missing or not an SMPL file, naming its key.
    """
    if files is None:
        return None
    models = {"neutral": _smpl_arrays(storage, files.neutral, "body_model")}
    for gender, uri in (("male", files.male), ("female", files.female)):
        if uri is not None:
            models[gender] = _smpl_arrays(storage, uri, f"body_model_{gender}")
    return MeshBuilder(models)


def load_h36m_regressor(storage: Storage, uri: str | None, num_vertices: int) -> np.ndarray | None:
    """The `(17, V)` H36M regressor at ``uri`` (None without one).

    Raises:
        ConfigError: missing, not a plain ``.npy`` array (a pickled object array is never loaded), or of another
            shape.
    """
    if uri is None:
        return None
    try:
        regressor = np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"h36m_regressor={uri!r}: file not found") from exc
    except (ValueError, OSError) as exc:  # not .npy, or a pickled object array (never loaded)
        raise ConfigError(f"h36m_regressor={uri!r}: not a readable .npy array ({exc})") from exc
    if not isinstance(regressor, np.ndarray) or regressor.shape != (17, num_vertices):
        raise ConfigError(
            f"h36m_regressor={uri!r}: expected a (17, {num_vertices}) array, got "
            f"{getattr(regressor, 'shape', type(regressor).__name__)}"
        )
    return np.asarray(regressor, dtype=np.float64)

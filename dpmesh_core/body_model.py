"""SMPL neutral body model through `smplx.SMPLLayer`, built from plain arrays (no pickle, no chumpy).

Sources of the arrays: the `human_model_layer.th_*` buffers of an official checkpoint (default), an `.npz`
written by `dpmesh_core.smpl_convert`, or a saved `DPMesh` folder. The 30-joint regressor of the official code
(SMPL J_regressor + nose/eyes/ears vertices + head top) is built here as well.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import smplx
import torch
from smplx.lbs import batch_rodrigues
from torch import nn

from dpmesh_core.joints import FACE_VERTEX_IDS, SMPL_PARENTS


# smplx selects extra joints from these vertex ids; we only use its LBS, so any in-range ids do.
_FACE_KEYS = ("nose", "reye", "leye", "rear", "lear")
# SMPL vertex used as head top when no J_regressor_extra is supplied (the official code uses row 3 of
# data/J_regressor_extra.npy, which is not part of the checkpoint).
DEFAULT_HEAD_TOP_VERTEX = 411


def read_smpl_arrays(data: bytes, name: str) -> dict[str, np.ndarray]:
    """The arrays of an SMPL file's bytes, never unpickling anything.

    Args:
        data: the file's bytes.
        name: its name or URI; `.safetensors` (the `smpl.safetensors` of a `dpmesh-convert` folder) is read as
            safetensors, anything else as an `.npz` (`dpmesh-convert-smpl`) with `allow_pickle=False`.

    Returns:
        smplx-style keys (`v_template, shapedirs, posedirs, J_regressor, weights, f`, ...) to arrays.

    Raises:
        ValueError: the bytes are not a readable file of that kind (`np.load` raises ValueError or OSError).
    """
    if name.endswith(".safetensors"):
        from safetensors.numpy import load

        try:
            return dict(load(data))
        except Exception as exc:  # safetensors raises its own error type: one kind of failure for callers
            raise ValueError(f"{name}: not a readable safetensors file ({exc})") from exc
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@dataclass(frozen=True)
class SMPLData:
    """SMPL model arrays (float32 unless stated).

    Attributes:
        v_template: `(N, 3)`; shapedirs `(N, 3, 10)`; posedirs `(N, 3, 207)`; J_regressor `(24, N)`;
        weights `(N, 24)`; faces `(F, 3)` int64; head_top_regressor `(N,)` or None.
    """

    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    faces: np.ndarray
    head_top_regressor: np.ndarray | None = None

    @classmethod
    def from_checkpoint_buffers(cls, buffers: Mapping[str, torch.Tensor]) -> SMPLData:
        """From the official `human_model_layer.th_*` tensors (prefix already removed: `th_v_template`, ...)."""

        def arr(name: str) -> np.ndarray:
            return buffers[name].detach().cpu().numpy()

        return cls(
            v_template=arr("th_v_template").reshape(-1, 3).astype(np.float32),
            shapedirs=arr("th_shapedirs").astype(np.float32),
            posedirs=arr("th_posedirs").astype(np.float32),
            J_regressor=arr("th_J_regressor").astype(np.float32),
            weights=arr("th_weights").astype(np.float32),
            faces=arr("th_faces").astype(np.int64),
        )

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> SMPLData:
        """From smplx-style keys (`v_template, shapedirs, posedirs, J_regressor, weights, f`), e.g. an `.npz`."""
        head_top = arrays.get("head_top_regressor")
        return cls(
            v_template=np.asarray(arrays["v_template"], dtype=np.float32),
            shapedirs=np.asarray(arrays["shapedirs"], dtype=np.float32)[:, :, :10],
            posedirs=np.asarray(arrays["posedirs"], dtype=np.float32),
            J_regressor=np.asarray(arrays["J_regressor"], dtype=np.float32),
            weights=np.asarray(arrays["weights"], dtype=np.float32),
            faces=np.asarray(arrays["f"], dtype=np.int64),
            head_top_regressor=None if head_top is None else np.asarray(head_top, dtype=np.float32),
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> SMPLData:
        """From an SMPL file on local disk (see `read_smpl_arrays`): the one way every tool reads a body model."""
        with open(path, "rb") as file:
            return cls.from_arrays(read_smpl_arrays(file.read(), os.fspath(path)))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Inverse of `from_arrays`."""
        out = {
            "v_template": self.v_template, "shapedirs": self.shapedirs, "posedirs": self.posedirs,
            "J_regressor": self.J_regressor, "weights": self.weights, "f": self.faces,
        }  # fmt: skip
        if self.head_top_regressor is not None:
            out["head_top_regressor"] = self.head_top_regressor
        return out

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])


def regressor30(data: SMPLData) -> np.ndarray:
    """The official 30-row joint regressor `(30, N)`: 24 SMPL rows, 5 face vertices, head top (smpl.py:21-35).

    Meshes smaller than SMPL's 6890 vertices (tests) use vertex ids modulo N.
    """
    n = data.num_vertices
    rows = [data.J_regressor.astype(np.float32)]
    for vid in FACE_VERTEX_IDS:
        rows.append(np.eye(n, dtype=np.float32)[vid % n][None])
    head_top = data.head_top_regressor
    if head_top is None:
        head_top = np.eye(n, dtype=np.float32)[DEFAULT_HEAD_TOP_VERTEX % n]
    rows.append(head_top.reshape(1, n).astype(np.float32))
    return np.concatenate(rows, axis=0)


class BodyModel(nn.Module):
    """SMPL forward (`smplx.SMPLLayer`) + the 30-joint regression on the posed vertices."""

    def __init__(self, data: SMPLData) -> None:
        super().__init__()
        kintree = np.stack([np.array(SMPL_PARENTS, dtype=np.int64), np.arange(24, dtype=np.int64)])
        struct = smplx.utils.Struct(
            v_template=data.v_template, shapedirs=data.shapedirs, posedirs=data.posedirs,
            J_regressor=data.J_regressor, weights=data.weights, kintree_table=kintree, f=data.faces,
        )  # fmt: skip
        n = data.num_vertices
        vertex_ids = {k: FACE_VERTEX_IDS[i] % n for i, k in enumerate(_FACE_KEYS)}
        # smplx prints a warning for 10-beta models; keep library chatter out of our logs.
        with contextlib.redirect_stdout(io.StringIO()):
            self.layer = smplx.SMPLLayer(
                model_path="", data_struct=struct, num_betas=10, vertex_ids=vertex_ids,
                use_hands=False, use_feet_keypoints=False,
            )  # fmt: skip
        self.data = data
        self.register_buffer("regressor30", torch.from_numpy(regressor30(data)), persistent=False)

    regressor30: torch.Tensor

    def forward(self, pose: torch.Tensor, betas: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """Posed vertices.

        Args:
            pose: `(B, 72)` axis-angle (root first).
            betas: `(B, 10)`.
            transl: `(B, 3)` m, added after LBS (as smplpytorch's `trans`).

        Returns:
            `(B, N, 3)` vertices (m).
        """
        batch = pose.shape[0]
        rotmats = batch_rodrigues(pose.reshape(-1, 3)).reshape(batch, 24, 3, 3)
        out = self.layer(
            betas=betas, global_orient=rotmats[:, :1], body_pose=rotmats[:, 1:], transl=transl, pose2rot=False
        )
        vertices: torch.Tensor = out.vertices
        return vertices

    def joints30(self, vertices: torch.Tensor) -> torch.Tensor:
        """`(B, N, 3)` → `(B, 30, 3)` regressed joints (official `joint_cam` before root-centering)."""
        return torch.einsum("jn,bnc->bjc", self.regressor30.to(vertices.dtype), vertices)

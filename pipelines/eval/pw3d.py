"""3DPW sequence files (``sequenceFiles/<split>/<sequence>.pkl``) as ground truth, read without executing code.

The files are Python-2 pickles (read with ``encoding="latin1"``) of one dict per sequence. Keys used here (one
list entry per actor; ``N`` image frames):

* ``sequence``: the sequence name (str); images are ``imageFiles/<sequence>/image_%05d.jpg``, one per frame.
* ``poses``: per actor `(N, 72)` SMPL axis-angles, world frame; ``betas``: per actor `(10,)` (or more; the first
  10 are used); ``trans``: per actor `(N, 3)` (not needed: every metric is pelvis- or Procrustes-aligned).
* ``cam_poses``: `(N, 4, 4)` world-to-camera extrinsics per frame; ``campose_valid``: per actor `(N,)`, 1 where
  the camera pose is aligned to the image (only those frames are ground truth, as every 3DPW evaluation does).
* ``genders`` (``gender`` in some releases): per actor ``'m'`` / ``'f'``.
* Also present, not used: ``cam_intrinsics``, ``poses2d``, ``img_frame_ids``, ``jointPositions``, ``poses_60Hz``,
  ``trans_60Hz``, ``betas_clothed``, ``v_template_clothed``, ``texture_maps``.

Each actor in each valid frame becomes a `GroundTruthPerson` with ``image_path = <sequence>/image_%05d.jpg``
(matched to a label's ``source_uri`` suffix) and ``person_idx`` = the actor index, so the shard's person
annotations must list the actors in the pickle's order. The global orientation is rotated into the camera frame
(``R_cam @ R(global_orient)``); body pose and betas are frame-free.

Safety: `RestrictedUnpickler` resolves only numpy's array and scalar reconstruction globals (the allow-list of
`dpmesh_core.smpl_convert`, the project's other restricted unpickler); anything else, such as ``os.system``
smuggled in through ``__reduce__``, raises `RefusedGlobalError` (a `pickle.UnpicklingError`) before it can run.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np

from dpmesh_core.smpl_convert import _NUMPY_GLOBALS
from pipelines.eval.ground_truth import GENDERS, GroundTruthPerson, GroundTruthRowError, check_finite


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list: it was stopped before that global could be called."""


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves numpy array / dtype / scalar reconstruction only; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise RefusedGlobalError(f"refused to load global {module}.{name}: not numpy array data")


def load_sequence(data: bytes) -> dict[str, Any]:
    """The dict of one 3DPW sequence file.

    Raises:
        RefusedGlobalError: the pickle names a global outside the numpy allow-list (a `pickle.UnpicklingError`).
        pickle.UnpicklingError: a damaged pickle.
        ValueError: it is not a dict with the keys above.
    """
    obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"3DPW sequence file: expected a dict, got {type(obj).__name__}")
    missing = [k for k in ("sequence", "poses", "betas", "cam_poses", "campose_valid") if k not in obj]
    if missing:
        raise ValueError(f"3DPW sequence file: missing keys {missing}")
    return obj


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: `(3,)` axis-angle, rad → `(3, 3)` rotation."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = float(np.linalg.norm(aa))
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = aa / angle
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    rot: np.ndarray = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    return rot


def matrix_to_axis_angle(rot: np.ndarray) -> np.ndarray:
    """`(3, 3)` rotation → `(3,)` axis-angle, rad, angle in [0, pi] (through the quaternion: stable near pi)."""
    m = np.asarray(rot, dtype=np.float64)
    trace = np.trace(m)
    candidates = [trace, m[0, 0], m[1, 1], m[2, 2]]
    i = int(np.argmax(candidates))
    if i == 0:
        w = np.sqrt(1.0 + trace) / 2
        q = np.array([w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)])
    else:
        a = i - 1
        b, c = (a + 1) % 3, (a + 2) % 3
        s = np.sqrt(1.0 + m[a, a] - m[b, b] - m[c, c]) * 2
        q = np.empty(4)
        q[0] = (m[c, b] - m[b, c]) / s
        q[1 + a] = s / 4
        q[1 + b] = (m[a, b] + m[b, a]) / s
        q[1 + c] = (m[a, c] + m[c, a]) / s
    if q[0] < 0:
        q = -q
    vec_norm = float(np.linalg.norm(q[1:]))
    if vec_norm < 1e-12:
        return np.zeros(3)
    angle = 2 * np.arctan2(vec_norm, q[0])
    out: np.ndarray = q[1:] / vec_norm * angle
    return out


def sequence_persons(seq: dict[str, Any], source: str = "") -> Iterator[GroundTruthPerson]:
    """Every actor in every frame whose camera pose is valid, in (frame, actor) order (module docstring).

    ``source`` (the file) prefixes each person's ``origin``, which messages about it quote.
    """
    name = str(seq["sequence"])
    cam_poses = np.asarray(seq["cam_poses"], dtype=np.float64)
    genders = seq.get("genders", seq.get("gender")) or []
    n_actors = len(seq["poses"])
    poses = [np.asarray(p, dtype=np.float64).reshape(-1, 72) for p in seq["poses"]]
    valid = [np.asarray(v).reshape(-1).astype(bool) for v in seq["campose_valid"]]
    for frame in range(cam_poses.shape[0]):
        rot_cam = cam_poses[frame, :3, :3]
        for actor in range(n_actors):
            if frame >= poses[actor].shape[0] or frame >= valid[actor].shape[0] or not valid[actor][frame]:
                continue
            pose = poses[actor][frame]
            global_orient = matrix_to_axis_angle(rot_cam @ axis_angle_to_matrix(pose[:3]))
            gender = GENDERS.get(str(genders[actor]).lower(), "neutral") if actor < len(genders) else "neutral"
            yield GroundTruthPerson(
                sample_id=None,
                image_key=None,
                image_path=f"{name}/image_{frame:05d}.jpg",
                person_idx=actor,
                joints_3d=None,
                global_orient=global_orient,
                body_pose=pose[3:72].copy(),
                betas=np.asarray(seq["betas"][actor], dtype=np.float64).reshape(-1)[:10],
                gender=gender,
                origin=f"{source} frame {frame} actor {actor}".strip(),
            )


def sequence_file_persons(uri: str, data: bytes) -> list[GroundTruthPerson | GroundTruthRowError]:
    """The persons of one 3DPW file (its bytes ``data``), each checked for NaN/inf: a person, or the problem that
    leaves it out.

    Raises:
        ValueError: one line naming the file: refused by the restricted unpickler (nothing ran), or not a sequence.
    """
    try:
        sequence = load_sequence(data)
    except RefusedGlobalError as exc:
        raise ValueError(f"{uri}: refused, nothing in it was run: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        # a damaged or truncated pickle, or one that is not a sequence dict
        raise ValueError(f"{uri}: not a readable 3DPW sequence file: {type(exc).__name__}: {exc}") from exc
    out: list[GroundTruthPerson | GroundTruthRowError] = []
    try:
        for person in sequence_persons(sequence, uri):
            try:
                out.append(check_finite(person))
            except GroundTruthRowError as exc:
                out.append(GroundTruthRowError(exc.reason, f"{person.origin}: {exc}"))
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # arrays of the wrong shape or type
        raise ValueError(f"{uri}: not a 3DPW sequence file: {type(exc).__name__}: {exc}") from exc
    return out

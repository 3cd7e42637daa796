"""Ground-truth persons for ``dpmesh-eval``: the Parquet layout, its reader, and the join to label rows.

Ground-truth Parquet layout (one row per person; a file, a folder of ``*.parquet`` or a glob, local or object
storage). Identify the person by one of, in this order of precedence:

====================  =============  ==========================================================================
column                type           meaning
====================  =============  ==========================================================================
``sample_id``         string         the label's ``sample_id`` (``<image_key>_p<person_idx>``)
``image_key``         string         with ``person_idx``: the label's image key (the shard sample key)
``image_path``        string         with ``person_idx``: a path suffix of the label's ``source_uri``, matched at a
                                     ``/`` boundary (e.g. ``courtyard_basketball_00/image_00000.jpg``)
``person_idx``        int            0-based person index in the image (the input annotation order)
====================  =============  ==========================================================================

and give the body by at least one of:

====================  =============  ==========================================================================
``joints_3d``         24x3 or 72     SMPL-24 joints, metres, in the labels' camera frame (OpenCV axes)
                      float
``global_orient``     3 float        SMPL axis-angle, rad, camera frame; with ``body_pose`` (69) and ``betas``
``body_pose``         69 float       (10 or more; the first 10 are used): the mesh is built with the body model
``betas``             10+ float      (``body_model=``), which gives joints, vertices, PVE and LSP-14
``gender``            string         optional: ``neutral`` (default), ``male``/``m`` or ``female``/``f``; uses
                                     ``body_model_male`` / ``body_model_female`` when given, else the neutral model
====================  =============  ==========================================================================

Translation is not needed: every metric is pelvis-aligned or Procrustes-aligned. Rotation is: MPJPE and PVE
compare orientations, so the ground truth must be in the camera frame of the labels (3DPW world poses are rotated
by the camera extrinsics in `pipelines.eval.pw3d`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.storage import Storage


GENDERS = {"neutral": "neutral", "n": "neutral", "male": "male", "m": "male", "female": "female", "f": "female"}


@dataclass(frozen=True)
class GroundTruthPerson:
    """One ground-truth person (module docstring).

    Attributes:
        sample_id, image_key, image_path, person_idx: join keys (None where absent).
        joints_3d: `(24, 3)` metres, camera frame, or None.
        global_orient: `(3,)`; body_pose: `(69,)`; betas: `(10,)`; each None when the row has no SMPL parameters.
        gender: ``neutral``, ``male`` or ``female``.
    """

    sample_id: str | None
    image_key: str | None
    image_path: str | None
    person_idx: int | None
    joints_3d: np.ndarray | None
    global_orient: np.ndarray | None
    body_pose: np.ndarray | None
    betas: np.ndarray | None
    gender: str = "neutral"

    @property
    def has_smpl(self) -> bool:
        return self.global_orient is not None and self.body_pose is not None and self.betas is not None


def _array(value: Any, size: int, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size < size:
        raise ValueError(f"ground truth {name}: expected {size} values, got {arr.size}")
    arr = arr[:size]
    return arr.reshape(shape) if shape else arr


def person_from_row(row: dict[str, Any]) -> GroundTruthPerson:
    """A `GroundTruthPerson` from one row of the documented layout.

    Raises:
        ValueError: no identifying column, no body (neither joints nor SMPL), a wrong length or gender.
    """
    gender = GENDERS.get(str(row.get("gender") or "neutral").lower())
    if gender is None:
        raise ValueError(f"ground truth gender={row.get('gender')!r}: expected neutral, male or female")
    person = GroundTruthPerson(
        sample_id=row.get("sample_id"),
        image_key=row.get("image_key"),
        image_path=row.get("image_path"),
        person_idx=None if row.get("person_idx") is None else int(row["person_idx"]),
        joints_3d=_array(row.get("joints_3d"), 72, "joints_3d", (24, 3)),
        global_orient=_array(row.get("global_orient"), 3, "global_orient"),
        body_pose=_array(row.get("body_pose"), 69, "body_pose"),
        betas=_array(row.get("betas"), 10, "betas"),
        gender=gender,
    )
    if person.sample_id is None and person.person_idx is None:
        raise ValueError("ground truth row: needs sample_id, or person_idx with image_key or image_path")
    if person.sample_id is None and person.image_key is None and person.image_path is None:
        raise ValueError("ground truth row: needs sample_id, image_key or image_path")
    if person.joints_3d is None and not person.has_smpl:
        raise ValueError("ground truth row: needs joints_3d or global_orient + body_pose + betas")
    return person


def ground_truth_uris(storage: Storage, uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """The files a ground-truth URI names: itself, the files with one of ``suffixes`` below a folder, or a glob."""
    if any(ch in uri for ch in "*?["):
        return sorted(info.uri for info in storage.glob(uri) if info.uri.endswith(suffixes))
    if uri.endswith(suffixes) and storage.exists(uri):
        return [uri]
    return sorted(info.uri for info in storage.list(uri) if info.uri.endswith(suffixes))


def read_parquet_ground_truth(storage: Storage, uris: Iterable[str]) -> Iterator[GroundTruthPerson]:
    """Every person of the ground-truth Parquet files ``uris``."""
    for uri in uris:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        for row in table.to_pylist():
            try:
                yield person_from_row(row)
            except ValueError as exc:
                raise ValueError(f"{uri}: {exc}") from exc


def _path_suffixes(source_uri: str) -> Iterator[str]:
    parts = source_uri.replace("\\", "/").split("/")
    for i in range(len(parts)):
        yield "/".join(parts[i:])


class GroundTruthIndex:
    """Looks up the ground truth of a label row by sample_id, image key + person, or image path suffix + person."""

    def __init__(self, persons: Iterable[GroundTruthPerson]) -> None:
        self._by_sample: dict[str, GroundTruthPerson] = {}
        self._by_key: dict[tuple[str, int], GroundTruthPerson] = {}
        self._by_path: dict[tuple[str, int], GroundTruthPerson] = {}
        self.persons: list[GroundTruthPerson] = []
        for p in persons:
            self.persons.append(p)
            if p.sample_id is not None:
                self._by_sample[p.sample_id] = p
            elif p.image_key is not None and p.person_idx is not None:
                self._by_key[(p.image_key, p.person_idx)] = p
            elif p.image_path is not None and p.person_idx is not None:
                self._by_path[(p.image_path.strip("/"), p.person_idx)] = p

    def __len__(self) -> int:
        return len(self.persons)

    def match(self, row: dict[str, Any]) -> GroundTruthPerson | None:
        """The ground truth of a label row (``sample_id``, ``image_key``, ``person_idx``, ``source_uri``)."""
        found = self._by_sample.get(row.get("sample_id") or "")
        if found is None and row.get("person_idx") is not None:
            idx = int(row["person_idx"])
            found = self._by_key.get((row.get("image_key") or "", idx))
            if found is None and self._by_path and row.get("source_uri"):
                for suffix in _path_suffixes(str(row["source_uri"])):
                    found = self._by_path.get((suffix, idx))
                    if found is not None:
                        break
        return found

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

Every row is checked before it is used: an identifying column of the right type (strings; ``person_idx`` an
integer >= 0), exactly 72 joint values, 3 orientation and 69 pose values, at least 10 betas, all finite, a known
gender. A row that fails is never cut or coerced to fit: it is left out and counted by reason (`PROBLEM_REASONS`;
``ground_truth_problems`` in ``eval.json``). Two rows with the same join key are refused (`DuplicateGroundTruthError`):
which one is the answer cannot be decided.

Translation is not needed: every metric is pelvis-aligned or Procrustes-aligned. Rotation is: MPJPE and PVE
compare orientations, so the ground truth must be in the camera frame of the labels (3DPW world poses are rotated
by the camera extrinsics in `pipelines.eval.pw3d`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.storage import Storage


GENDERS = {"neutral": "neutral", "n": "neutral", "male": "male", "m": "male", "female": "female", "f": "female"}
# Join kinds, in the order of precedence a label row is matched (`JoinKeys`), and their names in messages.
SAMPLE_ID, IMAGE_KEY, IMAGE_PATH = 0, 1, 2
KIND_NAMES = ("sample_id", "image_key + person_idx", "image_path + person_idx")
# Why a ground-truth person is left out (the keys of ``ground_truth_problems`` in ``eval.json``).
PROBLEM_REASONS = ("missing_id", "invalid_id", "missing_body", "wrong_length", "not_numeric", "non_finite",
                   "invalid_gender")  # fmt: skip


class GroundTruthRowError(ValueError):
    """One ground-truth person that cannot be used: counted under ``reason`` (`PROBLEM_REASONS`) and left out."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DuplicateGroundTruthError(ValueError):
    """Two ground-truth persons with the same join key: which one is the answer cannot be decided."""


@dataclass(frozen=True)
class GroundTruthPerson:
    """One ground-truth person (module docstring).

    Attributes:
        sample_id, image_key, image_path, person_idx: join keys (None where absent).
        joints_3d: `(24, 3)` metres, camera frame, or None.
        global_orient: `(3,)`; body_pose: `(69,)`; betas: `(10,)`; each None when the row has no SMPL parameters.
        gender: ``neutral``, ``male`` or ``female``.
        origin: where it was read (file and row, or sequence frame and actor), for messages.
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
    origin: str = field(default="", compare=False)

    @property
    def has_smpl(self) -> bool:
        return self.global_orient is not None and self.body_pose is not None and self.betas is not None

    def join_key(self) -> tuple[str, Any]:
        """``(kind, key)``: the one key the index files it under (sample_id, else image key or path with index)."""
        if self.sample_id is not None:
            return "sample_id", self.sample_id
        if self.image_key is not None:
            return "image_key + person_idx", (self.image_key, self.person_idx)
        return "image_path + person_idx", ((self.image_path or "").strip("/"), self.person_idx)


def _array(value: Any, size: int, name: str, shape: tuple[int, ...] | None = None, at_least: bool = False) -> Any:
    """``value`` as float64 with exactly ``size`` values (``at_least``: ``size`` or more, the first ``size`` kept,
    as documented for betas), all finite; None stays None.

    Raises:
        GroundTruthRowError: not numbers, another number of values, or a NaN/inf among them.
    """
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:  # strings, ragged lists, objects
        raise GroundTruthRowError("not_numeric", f"ground truth {name}: not a list of numbers ({exc})") from exc
    if arr.size != size and not (at_least and arr.size > size):
        expected = f"{size} or more" if at_least else str(size)
        raise GroundTruthRowError("wrong_length", f"ground truth {name}: expected {expected} values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise GroundTruthRowError("non_finite", f"ground truth {name}: holds NaN or inf")
    arr = arr[:size]
    return arr.reshape(shape) if shape else arr


def _text(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise GroundTruthRowError("invalid_id", f"ground truth {name}={value!r}: expected a non-empty string")
    return value


def _person_idx(value: Any) -> int | None:
    """A person index: a non-negative integer (an integral float, as pandas writes a column with gaps, is one)."""
    if value is None:
        return None
    integral = isinstance(value, int | np.integer) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or value < 0:
        raise GroundTruthRowError("invalid_id", f"ground truth person_idx={value!r}: expected an integer >= 0")
    return int(value)


def person_from_row(row: dict[str, Any], origin: str = "") -> GroundTruthPerson:
    """A `GroundTruthPerson` from one row of the documented layout.

    Raises:
        GroundTruthRowError: no identifying column, no body (neither joints nor SMPL), a value that is not a number,
            another number of values than documented (never cut to fit), a NaN/inf, an unknown gender.
    """
    gender = GENDERS.get(str(row.get("gender") or "neutral").lower())
    if gender is None:
        raise GroundTruthRowError(
            "invalid_gender", f"ground truth gender={row.get('gender')!r}: expected neutral, male or female"
        )
    person = GroundTruthPerson(
        sample_id=_text(row, "sample_id"),
        image_key=_text(row, "image_key"),
        image_path=_text(row, "image_path"),
        person_idx=_person_idx(row.get("person_idx")),
        joints_3d=_array(row.get("joints_3d"), 72, "joints_3d", (24, 3)),
        global_orient=_array(row.get("global_orient"), 3, "global_orient"),
        body_pose=_array(row.get("body_pose"), 69, "body_pose"),
        betas=_array(row.get("betas"), 10, "betas", at_least=True),
        gender=gender,
        origin=origin,
    )
    if person.sample_id is None and person.person_idx is None:
        raise GroundTruthRowError(
            "missing_id", "ground truth row: needs sample_id, or person_idx with image_key or image_path"
        )
    if person.sample_id is None and person.image_key is None and person.image_path is None:
        raise GroundTruthRowError("missing_id", "ground truth row: needs sample_id, image_key or image_path")
    if person.joints_3d is None and not person.has_smpl:
        raise GroundTruthRowError(
            "missing_body", "ground truth row: needs joints_3d or global_orient + body_pose + betas"
        )
    return person


def check_finite(person: GroundTruthPerson) -> GroundTruthPerson:
    """``person`` if every array it holds is finite (for persons not built by `person_from_row`, e.g. 3DPW's).

    Raises:
        GroundTruthRowError: ``non_finite``.
    """
    for name in ("joints_3d", "global_orient", "body_pose", "betas"):
        value = getattr(person, name)
        if value is not None and not np.isfinite(value).all():
            raise GroundTruthRowError("non_finite", f"ground truth {name}: holds NaN or inf")
    return person


def ground_truth_uris(storage: Storage, uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """The files a ground-truth URI names: itself, the files with one of ``suffixes`` below a folder, or a glob."""
    if any(ch in uri for ch in "*?["):
        return sorted(info.uri for info in storage.glob(uri) if info.uri.endswith(suffixes))
    if uri.endswith(suffixes) and storage.exists(uri):
        return [uri]
    return sorted(info.uri for info in storage.list(uri) if info.uri.endswith(suffixes))


def read_parquet_ground_truth(
    storage: Storage, uris: Iterable[str]
) -> Iterator[GroundTruthPerson | GroundTruthRowError]:
    """Every row of the ground-truth Parquet files ``uris``: a person, or the problem that leaves it out (its
    message names the file and row)."""
    for uri in uris:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        for i, row in enumerate(table.to_pylist()):
            where = f"{uri} row {i}"
            try:
                yield person_from_row(row, where)
            except GroundTruthRowError as exc:
                yield GroundTruthRowError(exc.reason, f"{where}: {exc}")


def path_suffixes(source_uri: str) -> Iterator[str]:
    """Every suffix of a path or URI at a ``/`` boundary, longest first (what an ``image_path`` may name)."""
    parts = source_uri.replace("\\", "/").split("/")
    for i in range(len(parts)):
        yield "/".join(parts[i:])


def duplicate_error(kind: int, key: str, person_idx: int, first: str, second: str) -> DuplicateGroundTruthError:
    """The refusal of two ground-truth persons with one join key; ``first`` and ``second`` name where each was read."""
    shown = key if kind == SAMPLE_ID else f"{key!r} person {person_idx}"
    return DuplicateGroundTruthError(
        f"ground-truth {KIND_NAMES[kind]} {shown!r} is given twice ({first or '?'} and {second or '?'}): "
        "keep one row per person"
    )


class JoinKeys:
    """Finds the ground truth of a label row: by ``sample_id``, else ``image_key`` + ``person_idx``, else a path
    suffix of ``source_uri`` (at a ``/`` boundary, longest first) + ``person_idx``.

    Args:
        keys: ``(kind, key, person_idx)`` of each ground-truth person, in order (position = index).
        origin: names where the person at a position was read (for the duplicate refusal).

    Raises:
        DuplicateGroundTruthError: two persons with the same key: the last one must not silently win.
    """

    def __init__(self, keys: Iterable[tuple[int, str, int]], origin: Callable[[int], str] = lambda i: "") -> None:
        self._by_kind: tuple[dict[Any, int], ...] = ({}, {}, {})
        for position, (kind, key, idx) in enumerate(keys):
            found = self._by_kind[kind].setdefault(key if kind == SAMPLE_ID else (key, idx), position)
            if found != position:
                raise duplicate_error(kind, key, idx, origin(found), origin(position))

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_kind)

    def find(self, sample_id: Any, image_key: Any, person_idx: Any, source_uri: Any) -> int | None:
        """The position of the label row's ground truth, or None (arguments: the label row's values, any type)."""
        by_sample, by_key, by_path = self._by_kind
        found = by_sample.get(sample_id) if isinstance(sample_id, str) else None
        if found is None and isinstance(person_idx, int) and not isinstance(person_idx, bool):
            found = by_key.get((image_key, person_idx)) if isinstance(image_key, str) else None
            if found is None and by_path and isinstance(source_uri, str):
                for suffix in path_suffixes(source_uri):
                    found = by_path.get((suffix, person_idx))
                    if found is not None:
                        break
        return found


class GroundTruthIndex:
    """Ground-truth persons in hand, with the `JoinKeys` that match label rows to them (small sets, tests).

    Args:
        persons: the usable ground-truth persons.
        problems: persons left out, by reason (`PROBLEM_REASONS`); ``examples``: a few of their messages.

    Raises:
        DuplicateGroundTruthError: two persons with the same join key (`GroundTruthPerson.join_key`).
    """

    def __init__(
        self,
        persons: Iterable[GroundTruthPerson],
        problems: dict[str, int] | None = None,
        examples: Iterable[str] = (),
    ) -> None:
        self.persons: list[GroundTruthPerson] = list(persons)
        self.problems = dict(problems or {})
        self.examples = list(examples)
        self.keys = JoinKeys(_kind_keys(self.persons), lambda i: self.persons[i].origin)

    def __len__(self) -> int:
        return len(self.persons)

    @property
    def n_invalid(self) -> int:
        """Ground-truth persons left out for a problem."""
        return sum(self.problems.values())

    def match(self, row: dict[str, Any]) -> GroundTruthPerson | None:
        """The ground truth of a label row (``sample_id``, ``image_key``, ``person_idx``, ``source_uri``)."""
        position = self.keys.find(row.get("sample_id"), row.get("image_key"), row.get("person_idx"),
                                  row.get("source_uri"))  # fmt: skip
        return None if position is None else self.persons[position]


def _kind_keys(persons: Iterable[GroundTruthPerson]) -> Iterator[tuple[int, str, int]]:
    for p in persons:
        kind, key = p.join_key()
        if isinstance(key, str):
            yield KIND_NAMES.index(kind), key, -1
        else:
            yield KIND_NAMES.index(kind), key[0], key[1]

"""Ground-truth persons as columns (`GroundTruthTable`), read from the documented Parquet layout without a Python
object per row, and written back in that layout (the partitions ``dpmesh-eval`` joins per bucket).

`read_table` applies exactly the checks of `pipelines.eval.ground_truth.person_from_row` (the reference): a row
whose types are the common ones (string ids, integer or integral-float ``person_idx``, numeric lists, string
``gender``) and whose values pass is taken as columns; every other row goes through ``person_from_row`` itself,
which either accepts it or names its problem. So a clean million-row file is read as arrays, and a row that is
wrong is refused with the same reason and message as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.eval.ground_truth import (
    GENDERS,
    IMAGE_KEY,
    IMAGE_PATH,
    KIND_NAMES,
    SAMPLE_ID,
    GroundTruthPerson,
    GroundTruthRowError,
    person_from_row,
)
from schemas import fixed_list_to_numpy


GENDER_CODES = ("neutral", "male", "female")
SMPL_SIZE = 82  # global_orient 3 + body_pose 69 + betas 10
_ARRAYS = (("joints_3d", 72, False), ("global_orient", 3, False), ("body_pose", 69, False), ("betas", 10, True))


@dataclass(frozen=True)
class GroundTruthTable:
    """``N`` usable ground-truth persons as columns.

    Attributes:
        kind: `(N,)` int8 join kind (`SAMPLE_ID`, `IMAGE_KEY`, `IMAGE_PATH`).
        key: ``N`` join key texts: the sample id, the image key, or the image path without leading/trailing ``/``.
        person_idx: `(N,)` int64 person index (-1 for ``sample_id`` persons, whose key does not use it).
        joints: `(N, 72)` float64 SMPL-24 joints, metres, camera frame; NaN where ``has_joints`` is False.
        has_joints: `(N,)` bool.
        smpl: `(N, 82)` float64 global_orient (3), body_pose (69), betas (10); NaN where ``has_smpl`` is False;
            `(N, 0)` when no person has them (ground truth given as joints holds no 82 NaN per person).
        has_smpl: `(N,)` bool.
        gender: `(N,)` int8 index into `GENDER_CODES`.
        row: `(N,)` int64 where each person was read: its row in its file (its index for a 3DPW file), for
            messages.
    """

    kind: np.ndarray
    key: list[str]
    person_idx: np.ndarray
    joints: np.ndarray
    has_joints: np.ndarray
    smpl: np.ndarray
    has_smpl: np.ndarray
    gender: np.ndarray
    row: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @classmethod
    def empty(cls) -> GroundTruthTable:
        return cls.from_persons([])

    @classmethod
    def from_persons(cls, persons: Sequence[GroundTruthPerson]) -> GroundTruthTable:
        """The table of ``persons`` (checked `GroundTruthPerson` objects), in their order."""
        n = len(persons)
        joints = np.full((n, 72), np.nan)
        smpl = np.full((n, SMPL_SIZE if any(p.has_smpl for p in persons) else 0), np.nan)
        kind, keys, idx = np.zeros(n, np.int8), [], np.full(n, -1, np.int64)
        for i, p in enumerate(persons):
            k, key = p.join_key()
            kind[i] = KIND_NAMES.index(k)
            keys.append(key if isinstance(key, str) else key[0])
            if not isinstance(key, str):
                idx[i] = key[1]
            if p.joints_3d is not None:
                joints[i] = np.asarray(p.joints_3d, np.float64).reshape(-1)
            if p.has_smpl:
                smpl[i] = np.concatenate([np.asarray(p.global_orient), np.asarray(p.body_pose), np.asarray(p.betas)])
        return cls(
            kind=kind,
            key=keys,
            person_idx=idx,
            joints=joints,
            has_joints=np.array([p.joints_3d is not None for p in persons], dtype=bool),
            smpl=smpl,
            has_smpl=np.array([p.has_smpl for p in persons], dtype=bool),
            gender=np.array([GENDER_CODES.index(p.gender) for p in persons], dtype=np.int8),
            row=np.arange(n, dtype=np.int64),
        )

    def take(self, rows: np.ndarray) -> GroundTruthTable:
        """The persons at ``rows`` (indices or a boolean mask), in that order."""
        picked = np.arange(len(self))[rows]
        return GroundTruthTable(
            kind=self.kind[picked],
            key=[self.key[i] for i in picked],
            person_idx=self.person_idx[picked],
            joints=self.joints[picked],
            has_joints=self.has_joints[picked],
            smpl=self.smpl[picked],
            has_smpl=self.has_smpl[picked],
            gender=self.gender[picked],
            row=self.row[picked],
        )

    @staticmethod
    def concat(tables: Sequence[GroundTruthTable]) -> GroundTruthTable:
        if not tables:
            return GroundTruthTable.empty()
        return GroundTruthTable(
            kind=np.concatenate([t.kind for t in tables]),
            key=[k for t in tables for k in t.key],
            person_idx=np.concatenate([t.person_idx for t in tables]),
            joints=np.concatenate([t.joints for t in tables]),
            has_joints=np.concatenate([t.has_joints for t in tables]),
            smpl=np.concatenate([_full_smpl(t) for t in tables])
            if any(t.smpl.shape[1] for t in tables)
            else (np.empty((sum(len(t) for t in tables), 0))),
            has_smpl=np.concatenate([t.has_smpl for t in tables]),
            gender=np.concatenate([t.gender for t in tables]),
            row=np.concatenate([t.row for t in tables]),
        )

    def join_keys(self) -> Iterator[tuple[int, str, int]]:
        """``(kind, key, person_idx)`` per person: what the duplicate check and the join compare."""
        return zip(self.kind.tolist(), self.key, self.person_idx.tolist(), strict=True)

    def to_arrow(self) -> pa.Table:
        """The persons in the documented ground-truth layout (`pipelines.eval.ground_truth`): `read_table` of it
        gives this table back."""
        kinds = self.kind.tolist()

        def text(of_kind: int) -> pa.Array:
            return pa.array(
                [key if k == of_kind else None for k, key in zip(kinds, self.key, strict=True)], pa.string()
            )

        smpl = _full_smpl(self)

        def values(array: np.ndarray, present: np.ndarray, size: int) -> pa.Array:
            # Variable-size lists: Parquet does not read back null entries of fixed-size lists (pyarrow 25).
            flat = pa.array(np.ascontiguousarray(array, dtype=np.float64).reshape(-1), pa.float64())
            offsets = pa.array(np.arange(len(present) + 1, dtype=np.int32) * size)
            return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~present))

        return pa.table(
            {
                "sample_id": text(SAMPLE_ID),
                "image_key": text(IMAGE_KEY),
                "image_path": text(IMAGE_PATH),
                "person_idx": pa.array(
                    [None if k == SAMPLE_ID else i for k, i in zip(kinds, self.person_idx.tolist(), strict=True)],
                    pa.int64(),
                ),
                "joints_3d": values(self.joints, self.has_joints, 72),
                "global_orient": values(smpl[:, :3], self.has_smpl, 3),
                "body_pose": values(smpl[:, 3:72], self.has_smpl, 69),
                "betas": values(smpl[:, 72:], self.has_smpl, 10),
                "gender": pa.array([GENDER_CODES[g] for g in self.gender.tolist()], pa.string()),
            }
        )


def _full_smpl(table: GroundTruthTable) -> np.ndarray:
    """``table.smpl`` as `(N, 82)` (NaN where absent), for concatenating with tables that have parameters."""
    return table.smpl if table.smpl.shape[1] else np.full((len(table), SMPL_SIZE), np.nan)


def _numeric_lists(column: pa.ChunkedArray | None, n: int, size: int, at_least: bool) -> tuple[np.ndarray, ...]:
    """A list column as ``(values (n, size) float64, present (n,), fast_ok (n,))``: ``fast_ok`` where the row is
    null or holds ``size`` (``at_least``: that many or more, the first kept) finite numbers; other rows are left to
    ``person_from_row``."""
    if column is None:  # no values at all: nothing is allocated
        return np.empty((n, 0)), np.zeros(n, bool), np.ones(n, bool)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    present = array.is_valid().to_numpy(zero_copy_only=False)
    kind = array.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    leaf = kind.value_type if is_list else None
    if pa.types.is_fixed_size_list(kind) and array.null_count == 0:  # the common layout: read without copies
        try:
            fixed = fixed_list_to_numpy(array)
        except ValueError:  # a null inside, or nested lists of another kind
            fixed = None
        if fixed is not None and fixed.dtype.kind in "fiu":
            flat = fixed.reshape(n, -1)
            if flat.shape[1] == size or (at_least and flat.shape[1] > size):
                values = flat[:, :size].astype(np.float64)
                return values, present, np.isfinite(values).all(axis=1)
    values = np.full((n, size), np.nan)
    if leaf is None or not (pa.types.is_floating(leaf) or pa.types.is_integer(leaf)):
        return values, present, ~present  # another type: person_from_row names the problem of each filled row
    if pa.types.is_fixed_size_list(kind):  # a null fixed-size list still holds slots: as a list it holds none
        array = array.cast(pa.list_(leaf))
    lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(array)
    leaf_values = flat.to_numpy(zero_copy_only=False).astype(np.float64)  # a null element becomes NaN: refused
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    fits = present & ((lengths == size) | (at_least & (lengths > size)))
    rows = np.flatnonzero(fits)
    if rows.size:
        values[rows] = leaf_values[starts[rows, None] + np.arange(size)]
    finite = np.isfinite(values).all(axis=1)
    return values, present, ~present | (fits & finite)


def _texts(column: pa.ChunkedArray | None, n: int) -> tuple[list[str | None], np.ndarray]:
    """A string column as Python values and ``fast_ok`` (null, or a non-empty string)."""
    if column is None:
        return [None] * n, np.ones(n, bool)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        present = column.is_valid().to_numpy(zero_copy_only=False)
        return [None] * n, ~present
    texts = column.to_pylist()
    return texts, np.array([t != "" for t in texts], dtype=bool)


def _indices(column: pa.ChunkedArray | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``person_idx`` as ``(values int64, present, fast_ok)``: integers >= 0, or integral floats >= 0."""
    if column is None:
        return np.full(n, -1, np.int64), np.zeros(n, bool), np.ones(n, bool)
    present = column.is_valid().to_numpy(zero_copy_only=False)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return np.full(n, -1, np.int64), present, ~present
    raw = column.to_numpy().astype(np.float64) if column.null_count == 0 else (
        pc.fill_null(column, -1).to_numpy(zero_copy_only=False).astype(np.float64)
    )  # fmt: skip
    ok = ~present | ((raw >= 0) & np.isfinite(raw) & (np.floor(raw) == raw))
    return np.where(present & ok, raw, -1).astype(np.int64), present, ok


def _genders(column: pa.ChunkedArray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if column is None:
        return np.zeros(n, np.int8), np.ones(n, bool)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return np.zeros(n, np.int8), ~column.is_valid().to_numpy(zero_copy_only=False)
    codes, ok = np.zeros(n, np.int8), np.ones(n, bool)
    for i, value in enumerate(column.to_pylist()):
        gender = GENDERS.get((value or "neutral").lower())
        if gender is None:
            ok[i] = False
        else:
            codes[i] = GENDER_CODES.index(gender)
    return codes, ok


def read_table(table: pa.Table, where: str, first_row: int = 0) -> tuple[GroundTruthTable, list[GroundTruthRowError]]:
    """The usable persons of a table in the documented layout, and the problem of every other row.

    Args:
        table: ground-truth rows (one record batch or file of the layout).
        where: how messages name the rows: ``f"{where} row {first_row + i}"`` (the file URI; ``first_row``: the
            row of the file that is ``table``'s first, for a batch of a larger file).

    Returns:
        ``(persons in row order, problems in row order)``; each problem is a `GroundTruthRowError` naming the row.
    """
    n = table.num_rows
    col = {name: table[name] if name in table.column_names else None for name in (
        "sample_id", "image_key", "image_path", "person_idx", "gender", *(a[0] for a in _ARRAYS))}  # fmt: skip
    sample_id, ok_sid = _texts(col["sample_id"], n)
    image_key, ok_key = _texts(col["image_key"], n)
    image_path, ok_path = _texts(col["image_path"], n)
    idx, has_idx, ok_idx = _indices(col["person_idx"], n)
    gender, ok_gender = _genders(col["gender"], n)
    arrays = {name: _numeric_lists(col[name], n, size, most) for name, size, most in _ARRAYS}
    has_smpl = arrays["global_orient"][1] & arrays["body_pose"][1] & arrays["betas"][1]
    has_joints = arrays["joints_3d"][1]
    has_sid = np.array([s is not None for s in sample_id], bool)
    has_id = has_sid | np.array([k is not None or p is not None for k, p in zip(image_key, image_path, strict=True)])
    fast = ok_sid & ok_key & ok_path & ok_idx & ok_gender & (has_sid | has_idx) & has_id & (has_joints | has_smpl)
    for _, _, ok in arrays.values():
        fast &= ok
    kind = np.where(has_sid, SAMPLE_ID, np.where([k is not None for k in image_key], IMAGE_KEY, IMAGE_PATH))
    keys = [  # rows without their key are refused below (person_from_row names why)
        (s or "") if k == SAMPLE_ID else ((key or "") if k == IMAGE_KEY else (path or "").strip("/"))
        for s, key, path, k in zip(sample_id, image_key, image_path, kind.tolist(), strict=True)
    ]
    joints = arrays["joints_3d"][0] if has_joints.all() else np.full((n, 72), np.nan)
    if has_joints.any() and not has_joints.all():
        joints[has_joints] = arrays["joints_3d"][0][has_joints]
    smpl = np.empty((n, 0))  # no SMPL parameters in this batch (GroundTruthTable.smpl)
    if has_smpl.any():
        parts = [arrays[name][0] for name in ("global_orient", "body_pose", "betas")]
        smpl = np.where(has_smpl[:, None], np.concatenate(parts, axis=1), np.nan)
    whole = GroundTruthTable(
        kind=kind.astype(np.int8),
        key=keys,
        person_idx=np.where(has_sid, -1, idx),
        joints=joints,
        has_joints=has_joints,
        smpl=smpl,
        has_smpl=has_smpl,
        gender=gender,
        row=first_row + np.arange(n, dtype=np.int64),
    )
    slow = np.flatnonzero(~fast)
    if slow.size == 0:
        return whole, []
    # The rows the columns could not vouch for: the reference check decides, row by row (rare in practice).
    accepted: list[tuple[int, GroundTruthPerson]] = []
    problems: list[GroundTruthRowError] = []
    for i in slow.tolist():
        origin = f"{where} row {first_row + i}"
        try:
            accepted.append((i, person_from_row(table.slice(i, 1).to_pylist()[0], origin)))
        except GroundTruthRowError as exc:
            problems.append(GroundTruthRowError(exc.reason, f"{origin}: {exc}"))
    fast_rows = np.flatnonzero(fast)
    slow_table = GroundTruthTable.from_persons([p for _, p in accepted])
    slow_table.row[:] = first_row + np.array([i for i, _ in accepted], dtype=np.int64)
    merged = GroundTruthTable.concat([whole.take(fast_rows), slow_table])
    return merged.take(np.argsort(merged.row, kind="stable")), problems

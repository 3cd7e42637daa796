"""Statistics of a label set made where its rows are: per shard, when the shard is committed, mergeable over shards.

``dpmesh-label`` and ``dpmesh-refilter`` put a shard's statistics in its ``_done/`` marker (field ``stats``), and
the marker index carries them, so ``dpmesh-report`` reads one object for the whole output (plus the few rows its
gallery shows) instead of every row. Outputs labeled before statistics existed get them computed shard by shard in
a Beam step (`pipelines.report.backfill`), from the same function as here.

The format (``version`` :data:`STATS_VERSION`), a JSON object::

    {"version": 2,
     "rows": {tier: n},                                 # accepted + rejected rows by quality tier
     "reasons": {reason: n},                            # a row counts once for each of its reasons
     "errors": {"<stage>/<reason>": n},                 # error rows (image and person) by stage and reason
     "hist": {column: {tier: [[bin, n], ...]}},         # fixed bins (:data:`HISTOGRAMS`), non-empty bins only;
                                                        # bin -1 is below the first edge, `count` above the last;
                                                        # betas and joint angles under tier "all" (:data:`POOLED`)
     "nulls": {column: {tier: n}},                      # null or NaN values of a histogram column
     "levels": {column: {tier: {value: n}}},            # discrete columns (:data:`LEVEL_COLUMNS`) counted by value
     "gallery_left_out": {problem: n},                  # rows whose sample id or tier cannot name a file
     "pool": {tier: [[priority, folder, row, sample_id], ...]},  # the gallery's sample, see below
     "strata": {stratum: n},                            # rows by review stratum (:func:`review_stratum`)
     "review_pool": {stratum: [[priority, folder, row, sample_id], ...]}}  # the review page's sample, likewise

Histograms have fixed edges, so merging is adding counts and a bin's count is exact; quantiles read from them
(the report's box plots) are within one bin width of the exact ones (:meth:`Bins.width`). The gallery's sample is
a bottom-k sample: each row's priority is a hash of its ``sample_id`` and a shard keeps its :data:`GALLERY_POOL`
lowest per tier, so the lowest :data:`GALLERY_POOL` over all shards are a uniform sample of the tier (whatever
the shard sizes), found by merging shard by shard. ``row`` is the row's position in its ``folder``'s Parquet file.

The review page (``dpmesh-report review=<n>``) draws persons stratified by confidence band and occlusion level: a
row's stratum is ``"<band>|<level>"`` (:func:`review_stratum`: :data:`CONFIDENCE_BANDS` x the occlusion levels, a
bounded set of :data:`REVIEW_STRATA`), ``strata`` counts every row by stratum and ``review_pool`` keeps, per stratum,
the :data:`REVIEW_POOL` rows of lowest priority, a uniform sample of the stratum as the gallery's is of a tier.

Version 2 added ``strata`` and ``review_pool``; statistics of version 1 are computed again from the rows by readers
(`pipelines.report.steps`), as any other version is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpmesh_core.joints import SMPL24_JOINTS
from pipelines.common.label_set import ROW_FOLDERS
from pipelines.common.safe_paths import UnsafeName, check_segment, validate_sample_id
from schemas import fixed_list_to_numpy
from schemas.occlusion import OCCLUSION_LEVELS, OcclusionLevel


STATS_VERSION = 2
GALLERY_POOL = 32
"""Rows per tier a shard keeps for the gallery, and the most a report may show per tier."""
REVIEW_POOL = 32
"""Rows per review stratum a shard keeps (and the merge): the most a review page draws from one stratum."""

CONFIDENCE_BANDS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Edges of the review strata's confidence bands (``confidence`` 0-1; the last band includes 1). Fixed, not the
filter's tier cut-offs, so a stratum means the same under every filter."""
UNSCORED = "unscored"
"""The band of a null or NaN confidence."""
UNRECORDED = "unrecorded"
"""The level of a null ``occlusion_level`` (rows written before schema 1.1.0)."""
OTHER_LEVEL = "other"
"""The level of an ``occlusion_level`` that is not a known level (a Parquet made or edited elsewhere)."""
_BAND_NAMES = tuple(f"{lo:.2f}-{hi:.2f}" for lo, hi in itertools.pairwise(CONFIDENCE_BANDS))
_LEVEL_NAMES = (*(level.value for level in OcclusionLevel), UNRECORDED, OTHER_LEVEL)
REVIEW_STRATA: tuple[str, ...] = tuple(f"{b}|{lv}" for b in (*_BAND_NAMES, UNSCORED) for lv in _LEVEL_NAMES)
"""Every review stratum, in display order (bands low to high, then levels none, partial, heavy)."""


@dataclasses.dataclass(frozen=True)
class Bins:
    """Fixed histogram edges: ``count`` bins from ``low`` to ``high``, equal in value (``log=False``) or in
    log10 (``log=True``, for values spanning decades: reprojection errors, box sizes)."""

    low: float
    high: float
    count: int
    log: bool = False

    def edges(self) -> np.ndarray:
        """`(count + 1,)` bin edges, increasing."""
        if self.log:
            return np.geomspace(self.low, self.high, self.count + 1)
        return np.linspace(self.low, self.high, self.count + 1)

    def width(self) -> float:
        """The widest bin: the bound on a quantile read from the histogram (in log10 units when ``log``)."""
        if self.log:
            return float(np.log10(self.high / self.low) / self.count)
        return (self.high - self.low) / self.count

    def index(self, values: np.ndarray) -> np.ndarray:
        """The bin of each finite value: -1 below ``low``, ``count`` at or above ``high``."""
        edges = self.edges()
        bins = np.searchsorted(edges, values, side="right") - 1
        return np.where(values >= edges[-1], self.count, bins)


_ANGLE = Bins(0.0, 180.0, 180)  # a joint's rotation angle, degrees (1 degree bins)
_BETA = Bins(-5.0, 5.0, 100)  # SMPL shape coefficients (0.1 bins; the prior's unit variance)
_FRACTION = Bins(0.0, 1.0, 20)
HISTOGRAMS: dict[str, Bins] = {
    "confidence": _FRACTION,
    "reproj_err_norm": Bins(1e-4, 1e2, 60, log=True),
    "box_size_px": Bins(1.0, 1e5, 50, log=True),
    "truncation": _FRACTION,
    "crowding_iou": _FRACTION,
    "joints_in_image_frac": Bins(0.0, 1.0, 24),
    "crowd_index": Bins(0.0, 5.0, 50),
    **{f"betas/{i}": _BETA for i in range(10)},
    **{f"pose_angle/{joint}": _ANGLE for joint in SMPL24_JOINTS},
}
"""Every histogram column and its bins. ``betas/<i>``: the i-th shape coefficient; ``pose_angle/<joint>``: the
magnitude of the joint's axis-angle rotation relative to its parent in degrees (pelvis: the global orientation)."""
ALL_TIERS = "all"
POOLED = ("betas/", "pose_angle/")
"""Histogram columns (by name prefix) kept over every tier at once, under the tier key :data:`ALL_TIERS`: the body's
shape and pose are drawn for the whole output, and 34 columns per tier would multiply a marker's size."""
LEVEL_COLUMNS = ("occlusion_level", "keypoint_source", "n_kp_valid", "n_kp_visible", "n_kp_occluded", "n_kp_missing")
"""Columns counted by value (labels, or small integer counts: one bar per value)."""


# Why a row cannot be a gallery tile (its file would be named after the value); keys of `gallery_problem`.
INVALID_SAMPLE_ID = "sample_id is not <key>_p<person index>"
INVALID_TIER = "quality_tier cannot name a folder"


def gallery_problem(row: Mapping[str, Any]) -> str | None:
    """Why ``row`` (``sample_id``, ``quality_tier``) cannot be a gallery tile, or None when it can.

    A tile is written as ``assets/gallery/<tier>/<sample_id>.png``: a sample id outside the one grammar, or a tier
    that is not one plain path segment, is left out of the gallery's sample (and counted), never used as a path.
    """
    try:
        # Both checks: the grammar, and one segment (the grammar's ``$`` also admits a trailing newline).
        check_segment(validate_sample_id(row.get("sample_id", "")), "sample_id")
    except UnsafeName:
        return INVALID_SAMPLE_ID
    try:
        check_segment(row.get("quality_tier", ""), "quality_tier")
    except UnsafeName:
        return INVALID_TIER
    return None


def confidence_band(confidence: float | None) -> str:
    """The review band of a confidence (0-1): ``"0.75-1.00"`` ...; values outside 0-1 go to the nearest band, a
    null or NaN to :data:`UNSCORED`."""
    if confidence is None or not np.isfinite(confidence):
        return UNSCORED
    index = int(np.searchsorted(CONFIDENCE_BANDS, confidence, side="right")) - 1
    return _BAND_NAMES[min(max(index, 0), len(_BAND_NAMES) - 1)]


def review_stratum(confidence: float | None, occlusion_level: object) -> str:
    """``"<confidence band>|<occlusion level>"``: one of :data:`REVIEW_STRATA`, whatever the values (a level from
    data is kept only when it is a known level)."""
    if occlusion_level is None:
        level = UNRECORDED
    else:
        level = occlusion_level if occlusion_level in OCCLUSION_LEVELS else OTHER_LEVEL
    return f"{confidence_band(confidence)}|{level}"


def row_priority(sample_id: str) -> int:
    """The row's place in the gallery's bottom-k sample: the first 8 bytes of its id's BLAKE2b (uniform, and the
    same wherever the row is)."""
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "big")


def _float_column(table: pa.Table, name: str) -> np.ndarray | None:
    """`(N,)` or `(N, K)` float64 of a numeric or fixed-size-list column (nulls as NaN); None when absent."""
    if name not in table.column_names:
        return None
    column = table.column(name)
    if pa.types.is_fixed_size_list(column.type):
        if column.null_count:
            column = pc.fill_null(column, pa.scalar([float("nan")] * column.type.list_size, column.type))
        return np.asarray(fixed_list_to_numpy(column), dtype=np.float64)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    """Every histogram column of ``table`` as `(N,)` float64 (NaN where null)."""
    columns: dict[str, np.ndarray] = {}
    for name in HISTOGRAMS:
        if "/" not in name and (values := _float_column(table, name)) is not None:
            columns[name] = values
    betas = _float_column(table, "betas")
    if betas is not None:
        columns.update({f"betas/{i}": betas[:, i] for i in range(betas.shape[1])})
    orient, pose = _float_column(table, "global_orient"), _float_column(table, "body_pose")
    if orient is not None and pose is not None:
        rotations = np.concatenate([orient, pose], axis=1).reshape(table.num_rows, -1, 3)
        angles = np.degrees(np.linalg.norm(rotations, axis=2))
        columns.update({f"pose_angle/{joint}": angles[:, j] for j, joint in enumerate(SMPL24_JOINTS)})
    return columns


def _sparse(bins: np.ndarray, size: int) -> list[list[int]]:
    counts = np.bincount(bins + 1, minlength=size + 2)
    return [[int(i) - 1, int(n)] for i, n in enumerate(counts) if n]


def shard_stats(tables: Mapping[str, pa.Table], errors: pa.Table | None) -> dict[str, Any]:
    """The statistics of one shard from its rows as written (``tables``: :data:`ROW_FOLDERS` -> the table in file
    order, so a row's position is its place in the file) and its error rows (``stage``, ``reason``)."""
    rows: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    hist: dict[str, dict[str, list[list[int]]]] = {}
    nulls: dict[str, dict[str, int]] = {}
    levels: dict[str, dict[str, dict[str, int]]] = {}
    left_out: Counter[str] = Counter()
    candidates: dict[str, list[tuple[int, str, int, str]]] = {}
    strata: Counter[str] = Counter()
    review_candidates: dict[str, list[tuple[int, str, int, str]]] = {}
    for folder in ROW_FOLDERS:
        table = tables.get(folder)
        if table is None or not table.num_rows:
            continue
        tiers = np.asarray(table.column("quality_tier").to_pylist(), dtype=object).astype(str)
        ids = table.column("sample_id").to_pylist()
        rows.update(tiers.tolist())
        if "reasons" in table.column_names:
            reasons.update(str(r) for r in pc.list_flatten(table.column("reasons")).to_pylist())
        confidence = _float_column(table, "confidence")
        occlusion = table.column("occlusion_level").to_pylist() if "occlusion_level" in table.column_names else None
        for position, (sample_id, tier) in enumerate(zip(ids, table.column("quality_tier").to_pylist(), strict=True)):
            stratum = review_stratum(
                None if confidence is None else float(confidence[position]),
                None if occlusion is None else occlusion[position],
            )
            strata[stratum] += 1
            problem = gallery_problem({"sample_id": sample_id, "quality_tier": tier})
            if problem is not None:
                left_out[problem] += 1
                continue
            entry = (row_priority(sample_id), folder, position, sample_id)
            candidates.setdefault(tier, []).append(entry)
            review_candidates.setdefault(stratum, []).append(entry)
        columns = _columns(table)
        groups = [(str(t), tiers == t) for t in np.unique(tiers)] + [(ALL_TIERS, np.ones(len(tiers), bool))]
        for tier, in_tier in groups:
            for name, values in columns.items():
                if (tier == ALL_TIERS) != name.startswith(POOLED):
                    continue
                v = values[in_tier]
                finite = np.isfinite(v)
                if (~finite).any():
                    nulls.setdefault(name, {})[tier] = nulls.get(name, {}).get(tier, 0) + int((~finite).sum())
                if finite.any():
                    spec = HISTOGRAMS[name]
                    merged = dense_counts(hist.get(name, {}).get(tier, []), spec.count)
                    merged += np.bincount(spec.index(v[finite]) + 1, minlength=spec.count + 2)
                    hist.setdefault(name, {})[tier] = [[i - 1, int(n)] for i, n in enumerate(merged) if n]
            if tier == ALL_TIERS:
                continue
            for name in LEVEL_COLUMNS:
                if name in table.column_names:
                    values = [str(x) for x in np.asarray(table.column(name).to_pylist(), dtype=object)[in_tier]]
                    counted = levels.setdefault(name, {}).setdefault(str(tier), {})
                    for value, n in Counter(values).items():
                        counted[value] = counted.get(value, 0) + n
    error_counts: Counter[str] = Counter()
    if errors is not None and errors.num_rows:
        stages, error_reasons = errors.column("stage").to_pylist(), errors.column("reason").to_pylist()
        error_counts.update(f"{s}/{r}" for s, r in zip(stages, error_reasons, strict=True))
    pool = {tier: [list(c) for c in sorted(found)[:GALLERY_POOL]] for tier, found in sorted(candidates.items())}
    review_pool = {s: [list(c) for c in sorted(found)[:REVIEW_POOL]] for s, found in sorted(review_candidates.items())}
    return {
        "version": STATS_VERSION,
        "rows": dict(sorted(rows.items())),
        "reasons": dict(sorted(reasons.items())),
        "errors": dict(sorted(error_counts.items())),
        "hist": hist,
        "nulls": nulls,
        "levels": levels,
        "gallery_left_out": dict(sorted(left_out.items())),
        "pool": pool,
        "strata": dict(sorted(strata.items())),
        "review_pool": review_pool,
    }


def dense_counts(sparse: Iterable[Iterable[int]], count: int) -> np.ndarray:
    """`(count + 2,)` int64 counts from ``[[bin, n], ...]`` (slot 0 below the first edge, the last above)."""
    dense = np.zeros(count + 2, np.int64)
    for b, n in sparse:
        dense[int(b) + 1] += int(n)
    return dense


class StatsError(ValueError):
    """Statistics in a version or shape this code does not read."""

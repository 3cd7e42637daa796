"""Synthetic label outputs and their ground truth, written fast, for dpmesh-eval's tests and its scale benchmark.

A label output here holds ``annotations/`` and ``rejected/`` Parquet per shard with the columns the evaluation reads,
typed as ``dpmesh-label`` writes them (fixed-size float32 lists, the signal columns); the ground truth is each
person's joints moved by a known amount, in the documented ground-truth layout (``sample_id`` + ``joints_3d``).
Per-person errors are then known in closed form (`known_mpjpe_mm`), and confidence follows the error with noise, so
Spearman and AUSE are neither trivial nor degenerate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.annotations import ANNOTATION_SCHEMA


SIGNAL_COLUMNS = (
    "reproj_err_px", "reproj_err_norm", "n_kp_valid", "kp_conf_mean", "vposer_z_norm", "betas_absmax",
    "joint_consistency_mm", "truncation", "box_size_px", "crowding_iou", "flip_pa_mpjpe_mm", "det_score",
)  # fmt: skip
TIERS = ("gold", "silver", "bronze", "reject")
OCCLUSION = ("none", "partial", "heavy")


def _fixed(values: np.ndarray, *shape: int) -> pa.Array:
    """`(N, *shape)` float32 as nested fixed-size lists (the annotation schema's array type)."""
    array: pa.Array = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    for size in reversed(shape):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def known_mpjpe_mm(shard: int, n: int) -> np.ndarray:
    """The MPJPE (mm) of the persons of ``shard``: joint 5 of person ``i`` is moved by ``24 * e`` mm, so MPJPE =
    ``e``, with ``e`` a fixed function of (shard, i) spread over 5-200 mm."""
    i = np.arange(n)
    return 5.0 + (np.sin(shard * 7.1 + i * 1.37) + 1.0) * 97.5


def shard_rows(shard: int, n: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """``(label table, ground-truth table)`` of ``n`` persons in shard ``shard`` (one person per image)."""
    rng = np.random.default_rng([seed, shard])
    keys = [f"img{shard:06d}-{i:06d}" for i in range(n)]
    joints = rng.normal(size=(n, 24, 3)) * 0.3 + np.array([0.0, 0.0, 5.0])
    joints = joints.astype(np.float32).astype(np.float64)  # what the labels store
    error = known_mpjpe_mm(shard, n)
    gt = joints.copy()
    gt[:, 5, 0] += 0.024 * error
    confidence = np.clip(1.0 - error / 220.0 + rng.normal(0.0, 0.1, n), 0.0, 1.0).astype(np.float32)
    tiers = np.array(TIERS)[np.minimum((1.0 - confidence) * 4, 3).astype(int)]
    signals = {name: pa.array(rng.uniform(0.0, 1.0, n).astype(np.float32)) for name in SIGNAL_COLUMNS}
    signals["n_kp_valid"] = pa.array(np.full(n, 17, np.int32))
    signals["flip_pa_mpjpe_mm"] = pa.nulls(n, pa.float32())
    signals["det_score"] = pa.nulls(n, pa.float32())
    signals["reproj_err_norm"] = pa.array((error / 1000.0 + rng.uniform(0, 0.05, n)).astype(np.float32))
    labels = pa.table(
        {
            "sample_id": [f"{k}_p0" for k in keys],
            "image_key": keys,
            "person_idx": pa.array(np.zeros(n, np.int32)),
            "source_uri": [f"/corpus/{k}.jpg" for k in keys],
            "joints_3d": _fixed(joints, 24, 3),
            "global_orient": _fixed(np.zeros((n, 3)), 3),
            "body_pose": _fixed(np.zeros((n, 69)), 69),
            "betas": _fixed(np.zeros((n, 10)), 10),
            "confidence": pa.array(confidence),
            "quality_tier": pa.array(tiers.tolist(), pa.string()),
            "occlusion_level": pa.array(np.array(OCCLUSION)[np.arange(n) % 3].tolist(), pa.string()),
            **signals,
        }
    )
    schema = pa.schema([ANNOTATION_SCHEMA.field(name) for name in labels.column_names])
    ground_truth = pa.table(
        {
            "sample_id": [f"{k}_p0" for k in keys],
            "joints_3d": pa.FixedSizeListArray.from_arrays(pa.array(gt.reshape(-1)), 72),
        }
    )
    return labels.cast(schema), ground_truth


def write_label_output(root: Path, shards: int, persons: int, seed: int = 0) -> tuple[Path, Path]:
    """``(labels folder, ground-truth folder)`` of ``shards`` shards of ``persons`` persons each; rejected-tier
    persons go to ``rejected/``, as dpmesh-label splits them. Ground truth: one Parquet file per 100 shards."""
    labels, gt_folder = root / "labels", root / "ground_truth"
    for folder in (labels / "annotations", labels / "rejected", gt_folder):
        folder.mkdir(parents=True, exist_ok=True)
    pending: list[pa.Table] = []
    for shard in range(shards):
        table, gt = shard_rows(shard, persons, seed)
        rejected = pa.compute.equal(table["quality_tier"], "reject")
        name = f"shard-{shard:06d}.parquet"
        pq.write_table(table.filter(pa.compute.invert(rejected)), labels / "annotations" / name)
        pq.write_table(table.filter(rejected), labels / "rejected" / name)
        pending.append(gt)
        if len(pending) == 100 or shard == shards - 1:
            pq.write_table(pa.concat_tables(pending), gt_folder / f"gt-{shard // 100:05d}.parquet",
                           row_group_size=50_000)  # fmt: skip
            pending = []
    return labels, gt_folder

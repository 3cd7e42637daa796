"""Per-person errors of a ``dpmesh-eval`` run (``<output>/persons/part-NNNNN.parquet``, one file per bucket of the
join): every label row matched to a ground-truth person, with each metric's error.

A metric that does not apply to the person (e.g. ``pve_mm`` without a body model) or whose label values are
non-finite is null; a person with any null among the metrics that apply is not in the figures of ``eval.json``
(counted there as ``non_finite`` or ``no_metric``). The same records, for small runs, are ``eval_persons.json``.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.metadata import make_field, make_schema


EVAL_PERSONS_SCHEMA_NAME = "eval_persons"
EVAL_METRIC_NAMES = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "lsp14_mpjpe_mm", "lsp14_pa_mpjpe_mm")
_METRIC_TEXT = {
    "mpjpe_mm": "MPJPE on the 24 SMPL joints, each side aligned at its pelvis.",
    "pa_mpjpe_mm": "PA-MPJPE on the 24 SMPL joints (similarity Procrustes alignment).",
    "pve_mm": "Per-vertex error, each mesh aligned at its SMPL pelvis (needs a body model).",
    "lsp14_mpjpe_mm": "MPJPE on the 14 LSP joints regressed with the H36M regressor, aligned at the H36M pelvis.",
    "lsp14_pa_mpjpe_mm": "PA-MPJPE on the 14 LSP joints regressed with the H36M regressor.",
}

EVAL_PERSONS_SCHEMA = make_schema(
    EVAL_PERSONS_SCHEMA_NAME,
    [
        make_field("sample_id", pa.string(), "The label's sample_id (text of the value as read)."),
        make_field("shard", pa.string(), "The label file the row was read from (its name without .parquet)."),
        make_field("label_set", pa.string(), "annotations (accepted) or rejected: the folder of that file."),
        make_field("quality_tier", pa.string(), "The label's quality_tier (text of the value as read)."),
        make_field("confidence", pa.float64(), "The label's confidence; null where not a number.", nullable=True),
        make_field(
            "occlusion_level", pa.string(), "The label's occlusion_level; null when its file has none.", nullable=True
        ),
        *(make_field(name, pa.float64(), text, unit="mm", nullable=True) for name, text in _METRIC_TEXT.items()),
    ],
)

"""Evaluate label rows against ground truth: per-person errors, breakdowns by tier and occlusion level, and the
confidence's quality. The public API other tools (the HTML report) call:

* `evaluate_labels` (label output URI + ground-truth URI → `EvaluationResult`), or `evaluate_rows` on rows in hand;
* `EvaluationResult.to_dict` (JSON-ready; the document ``dpmesh-eval`` writes as ``eval.json``; per-person errors
  go to ``eval_persons.json``) and `read_evaluation` (that document back from storage);
* `format_markdown` (the table ``dpmesh-eval`` prints and writes as ``eval.md``), from a result or its dict.

Label rows are read from ``<labels>/annotations/*.parquet`` and, unless excluded, ``<labels>/rejected/*.parquet``
(rejected persons are where a confidence must be low, so they belong in its evaluation). A label's SMPL-24 joints
are its stored ``joints_3d``; vertices (PVE, LSP-14) come from its SMPL parameters through the body model.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from dpmesh_core.confidence import ConfidenceSignals
from pipelines.eval import metrics as m
from pipelines.eval.ground_truth import (
    GroundTruthIndex,
    GroundTruthPerson,
    ground_truth_uris,
    read_parquet_ground_truth,
)
from pipelines.eval.pw3d import load_sequence, sequence_persons
from pipelines.eval.quality import ConfidenceQuality, confidence_quality
from pipelines.storage import Storage, join
from schemas.annotations import QualityTier


EVAL_FORMAT = "dpmesh-eval"
EVAL_VERSION = 1
# Metric names, in report order; "lsp14_*" need an H36M regressor, "pve_mm" and "lsp14_*" a body model.
METRICS: tuple[str, ...] = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "lsp14_mpjpe_mm", "lsp14_pa_mpjpe_mm")
_SIGNALS = tuple(f.name for f in fields(ConfidenceSignals))
_LABEL_COLUMNS = (
    "sample_id", "image_key", "person_idx", "source_uri", "joints_3d", "global_orient", "body_pose", "betas",
    "confidence", "quality_tier", "reasons", "keypoints_2d", *_SIGNALS,
)  # fmt: skip


class MeshBuilder:
    """SMPL vertices and joints from parameters, with one body model per gender (torch, imported on first use).

    Args:
        models: ``{"neutral": arrays, "male": arrays, "female": arrays}``: smplx-style arrays (an ``.npz`` from
            ``dpmesh-convert-smpl``); ``neutral`` is required and stands in for a missing gender.
    """

    def __init__(self, models: dict[str, dict[str, np.ndarray]]) -> None:
        from dpmesh_core.body_model import BodyModel, SMPLData

        self._models = {gender: BodyModel(SMPLData.from_arrays(arrays)) for gender, arrays in models.items()}
        self._regressors = {g: np.asarray(model.data.J_regressor, np.float64) for g, model in self._models.items()}
        self.num_vertices = next(iter(self._models.values())).data.num_vertices

    def mesh(self, pose72: np.ndarray, betas: np.ndarray, gender: str = "neutral") -> tuple[np.ndarray, np.ndarray]:
        """``(vertices (V, 3), smpl24 joints (24, 3))``, metres, pelvis-relative frame of the SMPL layer (no
        translation; every metric here is translation-free)."""
        import torch

        model_gender = gender if gender in self._models else "neutral"
        model = self._models[model_gender]
        with torch.inference_mode():
            vertices = (
                model(
                    torch.as_tensor(np.asarray(pose72, np.float32).reshape(1, 72)),
                    torch.as_tensor(np.asarray(betas, np.float32).reshape(1, 10)),
                    torch.zeros(1, 3),
                )[0]
                .double()
                .numpy()
            )
        return vertices, self._regressors[model_gender] @ vertices


@dataclass(frozen=True)
class GroupMetrics:
    """Errors of a group of persons: how many, and the mean and median of each metric over the finite values."""

    n: int
    mean: dict[str, float]
    median: dict[str, float]


@dataclass(frozen=True)
class PersonError:
    """One matched person: identity, verdict, occlusion level (None if the labels lack the column) and errors (mm;
    NaN where not computable). ``signals`` (not in the JSON) feeds the calibration fit."""

    sample_id: str
    quality_tier: str
    confidence: float
    occlusion_level: str | None
    errors: dict[str, float]
    signals: ConfidenceSignals | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id, "quality_tier": self.quality_tier, "confidence": self.confidence,
            "occlusion_level": self.occlusion_level, **{k: _finite_or_none(v) for k, v in self.errors.items()},
        }  # fmt: skip


@dataclass(frozen=True)
class EvaluationResult:
    """The evaluation of one label set (module docstring); `to_dict` is the ``eval.json`` document.

    Attributes:
        counts: ``label_rows``, ``ground_truth_persons``, ``matched``, ``unmatched_labels``,
            ``unmatched_ground_truth``, ``non_finite`` (matched persons whose labels hold NaN joints).
        metrics: the metric names computed (a subset of `METRICS`).
        error_metric: the metric the confidence quality headline and the calibration use.
        overall / by_tier / by_occlusion_level: `GroupMetrics`; ``by_occlusion_level`` is None when the labels
            have no ``occlusion_level`` column (rows without a value count as ``unknown``).
        confidence_quality: per metric, `ConfidenceQuality` (None when nothing is finite).
        persons: every matched person.
    """

    labels: str
    ground_truth: str
    counts: dict[str, int]
    metrics: tuple[str, ...]
    error_metric: str
    overall: GroupMetrics
    by_tier: dict[str, GroupMetrics]
    by_occlusion_level: dict[str, GroupMetrics] | None
    confidence_quality: dict[str, ConfidenceQuality | None]
    persons: tuple[PersonError, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_persons: bool = False) -> dict[str, Any]:
        """JSON-ready (NaN as null): format, version, sources, counts, metrics, breakdowns, confidence quality;
        with ``include_persons`` also ``persons`` (one entry per matched person: id, tier, confidence, errors)."""
        doc: dict[str, Any] = {
            "format": EVAL_FORMAT,
            "version": EVAL_VERSION,
            "labels": self.labels,
            "ground_truth": self.ground_truth,
            "counts": dict(self.counts),
            "metrics": list(self.metrics),
            "error_metric": self.error_metric,
            "overall": _group_dict(self.overall),
            "by_tier": {k: _group_dict(v) for k, v in self.by_tier.items()},
            "by_occlusion_level": None
            if self.by_occlusion_level is None
            else {k: _group_dict(v) for k, v in self.by_occlusion_level.items()},
            "confidence_quality": {
                k: None if v is None else _clean(v.to_dict()) for k, v in self.confidence_quality.items()
            },
            **self.extra,
        }
        if include_persons:
            doc["persons"] = [p.to_dict() for p in self.persons]
        cleaned: dict[str, Any] = _clean(doc)
        return cleaned


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _group_dict(g: GroupMetrics) -> dict[str, Any]:
    """Flat, so a group table is one row per group: ``n``, each metric's mean, then ``median_<metric>``."""
    out: dict[str, Any] = {"n": g.n, **g.mean, **{f"median_{k}": v for k, v in g.median.items()}}
    cleaned: dict[str, Any] = _clean(out)
    return cleaned


def group_metrics(persons: Sequence[PersonError], metric_names: Sequence[str]) -> GroupMetrics:
    """Mean and median of each metric over the persons' finite values."""
    mean, median = {}, {}
    for name in metric_names:
        values = np.array([p.errors.get(name, math.nan) for p in persons], dtype=np.float64)
        values = values[np.isfinite(values)]
        mean[name] = float(values.mean()) if values.size else math.nan
        median[name] = float(np.median(values)) if values.size else math.nan
    return GroupMetrics(n=len(persons), mean=mean, median=median)


def _signals(row: dict[str, Any]) -> ConfidenceSignals | None:
    try:
        return ConfidenceSignals(**{name: row[name] for name in _SIGNALS})
    except KeyError:
        return None


def person_errors(
    row: dict[str, Any],
    gt: GroundTruthPerson,
    meshes: MeshBuilder | None,
    h36m_regressor: np.ndarray | None,
) -> dict[str, float]:
    """Every computable metric of one label row against its ground truth (mm; NaN where inputs are non-finite)."""
    errors: dict[str, float] = {}
    pred_joints = np.asarray(row["joints_3d"], dtype=np.float64).reshape(24, 3)
    gt_joints = gt.joints_3d
    gt_vertices = pred_vertices = None
    if meshes is not None and gt.has_smpl:
        pose = np.concatenate([np.asarray(gt.global_orient), np.asarray(gt.body_pose)])
        gt_vertices, gt_smpl_joints = meshes.mesh(pose, np.asarray(gt.betas), gt.gender)
        if gt_joints is None:
            gt_joints = gt_smpl_joints
        gt_pelvis = gt_smpl_joints[0]
    if meshes is not None and gt_vertices is not None:
        pose = np.concatenate([np.asarray(row["global_orient"]), np.asarray(row["body_pose"])]).astype(np.float64)
        if np.isfinite(pose).all() and np.isfinite(np.asarray(row["betas"], np.float64)).all():
            pred_vertices, pred_smpl_joints = meshes.mesh(pose, np.asarray(row["betas"], np.float64))
            errors["pve_mm"] = m.pve_mm(pred_vertices, gt_vertices, pred_smpl_joints[0], gt_pelvis)
        else:
            errors["pve_mm"] = math.nan
    if gt_joints is not None:
        errors["mpjpe_mm"] = m.mpjpe_mm(pred_joints, gt_joints)
        errors["pa_mpjpe_mm"] = m.pa_mpjpe(pred_joints, gt_joints)
    if h36m_regressor is not None and gt_vertices is not None:
        if pred_vertices is None:
            errors["lsp14_mpjpe_mm"] = errors["lsp14_pa_mpjpe_mm"] = math.nan
        else:
            errors["lsp14_mpjpe_mm"] = m.lsp14_mpjpe_mm(pred_vertices, gt_vertices, h36m_regressor)
            errors["lsp14_pa_mpjpe_mm"] = m.lsp14_pa_mpjpe_mm(pred_vertices, gt_vertices, h36m_regressor)
    return errors


def evaluate_rows(
    rows: Iterable[dict[str, Any]],
    ground_truth: GroundTruthIndex,
    *,
    meshes: MeshBuilder | None = None,
    h36m_regressor: np.ndarray | None = None,
    error_metric: str = "pa_mpjpe_mm",
    sparsification_steps: int = 20,
    labels: str = "",
    ground_truth_uri: str = "",
) -> EvaluationResult:
    """Join label rows to ground truth and compute every metric and breakdown (module docstring).

    Args:
        rows: label rows (annotation schema columns; ``occlusion_level`` optional).
        ground_truth: the ground-truth persons, indexed.
        meshes: body models for vertices (PVE, LSP-14, ground truth given as SMPL parameters).
        h36m_regressor: `(17, V)` for the LSP-14 metrics.
        error_metric: the headline metric of the confidence quality (falls back to ``mpjpe_mm`` / the first
            computed metric when it cannot be computed).
    """
    rows = list(rows)
    has_occlusion = any("occlusion_level" in r for r in rows)
    persons: list[PersonError] = []
    matched_gt: set[int] = set()
    non_finite = 0
    for row in rows:
        gt = ground_truth.match(row)
        if gt is None:
            continue
        matched_gt.add(id(gt))
        errors = person_errors(row, gt, meshes, h36m_regressor)
        if errors and not any(math.isfinite(v) for v in errors.values()):
            non_finite += 1
        occlusion = (row.get("occlusion_level") or "unknown") if has_occlusion else None
        persons.append(
            PersonError(
                sample_id=str(row.get("sample_id")),
                quality_tier=str(row.get("quality_tier")),
                confidence=float(row["confidence"]) if row.get("confidence") is not None else math.nan,
                occlusion_level=occlusion,
                errors=errors,
                signals=_signals(row),
            )
        )
    names = tuple(n for n in METRICS if any(n in p.errors for p in persons))
    if error_metric not in names:
        error_metric = "mpjpe_mm" if "mpjpe_mm" in names else (names[0] if names else error_metric)
    tiers = [t.value for t in QualityTier if any(p.quality_tier == t.value for p in persons)]  # best first
    tiers += sorted({p.quality_tier for p in persons} - set(tiers))
    by_occlusion = None
    if has_occlusion:
        levels = sorted({str(p.occlusion_level) for p in persons})
        by_occlusion = {lv: group_metrics([p for p in persons if p.occlusion_level == lv], names) for lv in levels}
    quality = {
        name: confidence_quality(
            np.array([p.confidence for p in persons]),
            np.array([p.errors.get(name, math.nan) for p in persons]),
            name,
            sparsification_steps,
        )
        for name in names
    }
    counts = {
        "label_rows": len(rows),
        "ground_truth_persons": len(ground_truth),
        "matched": len(persons),
        "unmatched_labels": len(rows) - len(persons),
        "unmatched_ground_truth": len(ground_truth) - len(matched_gt),
        "non_finite": non_finite,
    }
    return EvaluationResult(
        labels=labels,
        ground_truth=ground_truth_uri,
        counts=counts,
        metrics=names,
        error_metric=error_metric,
        overall=group_metrics(persons, names),
        by_tier={t: group_metrics([p for p in persons if p.quality_tier == t], names) for t in tiers},
        by_occlusion_level=by_occlusion,
        confidence_quality=quality,
        persons=tuple(persons),
    )


def read_label_rows(storage: Storage, labels: str, include_rejected: bool = True) -> list[dict[str, Any]]:
    """The label rows of a ``dpmesh-label`` / ``dpmesh-refilter`` output, in file then row order (the columns the
    evaluation reads, ``occlusion_level`` when present)."""
    rows: list[dict[str, Any]] = []
    for folder in ("annotations", "rejected") if include_rejected else ("annotations",):
        for info in storage.list_top(join(labels, folder)):
            if not info.uri.endswith(".parquet"):
                continue
            table = pq.read_table(io.BytesIO(storage.read_bytes(info.uri)))
            wanted = [c for c in (*_LABEL_COLUMNS, "occlusion_level") if c in table.column_names]
            rows.extend(table.select(wanted).to_pylist())
    return rows


def read_ground_truth(storage: Storage, uri: str) -> GroundTruthIndex:
    """Ground truth from Parquet (the documented layout) and/or 3DPW sequence ``.pkl`` files under ``uri``.

    Raises:
        ValueError: no ground-truth file found, or a file that does not follow its layout.
    """
    uris = ground_truth_uris(storage, uri, (".parquet", ".pkl"))
    if not uris:
        raise ValueError(f"no ground truth (*.parquet or 3DPW *.pkl) at {uri!r}")
    parquet = [u for u in uris if u.endswith(".parquet")]
    persons: list[GroundTruthPerson] = list(read_parquet_ground_truth(storage, parquet))
    for pkl in (u for u in uris if u.endswith(".pkl")):
        persons.extend(sequence_persons(load_sequence(storage.read_bytes(pkl))))
    return GroundTruthIndex(persons)


def evaluate_labels(
    labels: str,
    ground_truth: str,
    *,
    storage: Storage | None = None,
    meshes: MeshBuilder | None = None,
    h36m_regressor: np.ndarray | None = None,
    include_rejected: bool = True,
    error_metric: str = "pa_mpjpe_mm",
    sparsification_steps: int = 20,
) -> EvaluationResult:
    """Read a label output and its ground truth (local paths by default) and evaluate (see `evaluate_rows`)."""
    storage = storage or Storage()
    return evaluate_rows(
        read_label_rows(storage, labels, include_rejected),
        read_ground_truth(storage, ground_truth),
        meshes=meshes,
        h36m_regressor=h36m_regressor,
        error_metric=error_metric,
        sparsification_steps=sparsification_steps,
        labels=labels,
        ground_truth_uri=ground_truth,
    )


def read_evaluation(storage: Storage, uri: str) -> dict[str, Any]:
    """An ``eval.json`` written by ``dpmesh-eval`` (the `EvaluationResult.to_dict` document).

    Raises:
        ValueError: not an evaluation document of a supported version.
    """
    doc = json.loads(storage.read_bytes(uri))
    if not isinstance(doc, dict) or doc.get("format") != EVAL_FORMAT or doc.get("version") != EVAL_VERSION:
        raise ValueError(f"{uri}: not a {EVAL_FORMAT} document of version {EVAL_VERSION}")
    return doc


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.1f}"


def format_markdown(result: EvaluationResult | dict[str, Any]) -> str:
    """Markdown tables: errors overall / by tier / by occlusion level (mean, mm), then the confidence quality."""
    # Works on the `EvaluationResult.to_dict` document, so a stored eval.json renders the same way.
    doc = result.to_dict() if isinstance(result, EvaluationResult) else result
    names = list(doc["metrics"])
    c = doc["counts"]
    lines = [
        f"Matched {c['matched']} of {c['label_rows']} label rows to {c['ground_truth_persons']} ground-truth persons "
        f"({c['unmatched_ground_truth']} ground-truth persons unmatched, {c['non_finite']} non-finite labels).",
        "",
        "| group | n | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    groups = [("all", doc["overall"])] + [(f"tier {k}", v) for k, v in doc["by_tier"].items()]
    groups += [(f"occlusion {k}", v) for k, v in (doc["by_occlusion_level"] or {}).items()]
    for label, g in groups:
        lines.append(f"| {label} | {g['n']} | " + " | ".join(_fmt(g.get(n)) for n in names) + " |")
    lines += ["", "| confidence vs | n | Spearman(conf, -error) | AUSE mm | AUSE / mean error |"]
    lines += ["|---|---:|---:|---:|---:|"]
    for name, q in doc["confidence_quality"].items():
        if q is not None:
            rho = "-" if q["spearman"] is None else f"{q['spearman']:.3f}"
            rel = "-" if q["ause_relative"] is None else f"{q['ause_relative']:.3f}"
            lines.append(f"| {name} | {q['n']} | {rho} | {_fmt(q['ause_mm'])} | {rel} |")
    return "\n".join(lines)

"""Evaluate label rows against ground truth: per-person errors, breakdowns by tier and occlusion level, and the
confidence's quality. The public API other tools (the HTML report) call:

* `evaluate_labels` (label output URI + ground-truth URI → `EvaluationResult`), or `evaluate_rows` on rows in hand;
* `EvaluationResult.to_dict` (JSON-ready; the document ``dpmesh-eval`` writes as ``eval.json``; per-person errors
  go to ``eval_persons.json``) and `read_evaluation` (that document back from storage, checked against its schema
  in `pipelines.eval.document`);
* `format_markdown` (the table ``dpmesh-eval`` prints and writes as ``eval.md``), from a result or its dict.

Label rows are read from ``<labels>/annotations/*.parquet`` and, unless excluded, ``<labels>/rejected/*.parquet``
(rejected persons are where a confidence must be low, so they belong in its evaluation). A label's SMPL-24 joints
are its stored ``joints_3d``; vertices (PVE, LSP-14) come from its SMPL parameters through the body model.
"""

from __future__ import annotations

import io
import math
import pickle
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from dpmesh_core.confidence import ConfidenceSignals
from pipelines.eval import metrics as m
from pipelines.eval.document import EVAL_FORMAT, EVAL_VERSION, parse_document
from pipelines.eval.ground_truth import (
    GroundTruthIndex,
    GroundTruthPerson,
    GroundTruthRowError,
    check_finite,
    ground_truth_uris,
    read_parquet_ground_truth,
)
from pipelines.eval.pw3d import RefusedGlobalError, load_sequence, sequence_persons
from pipelines.eval.quality import ConfidenceQuality, confidence_quality
from pipelines.storage import Storage, join
from schemas.annotations import QualityTier


# Metric names, in report order; "lsp14_*" need an H36M regressor, "pve_mm" and "lsp14_*" a body model.
METRICS: tuple[str, ...] = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "lsp14_mpjpe_mm", "lsp14_pa_mpjpe_mm")
# Messages of left-out ground-truth rows kept for eval.json (the counts cover every row).
_PROBLEM_EXAMPLES = 5
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
    """Errors of a group of evaluated persons: how many (``n``), and per metric how many it covers (``count``: fewer
    than ``n`` only when the ground truth gives that metric for some persons only), its mean and its median."""

    n: int
    mean: dict[str, float]
    median: dict[str, float]
    count: dict[str, int] = field(default_factory=dict)


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
        counts: ``label_rows``; ``ground_truth_persons`` (usable) and ``ground_truth_invalid`` (left out, see
            ``ground_truth_problems``); ``matched``, ``unmatched_labels``, ``unmatched_ground_truth``; of the
            matched, ``non_finite`` (the label gives a NaN/inf error: malformed or non-finite values), ``no_metric``
            (nothing computable, e.g. SMPL ground truth without a body model) and ``evaluated`` (the rest: the
            persons every figure covers, ``overall.n``).
        metrics: the metric names computed (a subset of `METRICS`).
        error_metric: the metric the confidence quality headline and the calibration use.
        overall / by_tier / by_occlusion_level: `GroupMetrics`; ``by_occlusion_level`` is None when the labels
            have no ``occlusion_level`` column (rows without a value count as ``unknown``).
        confidence_quality: per metric, `ConfidenceQuality` over the evaluated persons with a finite confidence
            (None when there is none).
        persons: every matched person (evaluated or not).
        ground_truth_problems: ``{"counts": {reason: n}, "examples": [message, ...]}`` for the ground-truth rows
            left out (`pipelines.eval.ground_truth.PROBLEM_REASONS`).
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
    ground_truth_problems: dict[str, Any] = field(default_factory=lambda: {"counts": {}, "examples": []})

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
            "ground_truth_problems": self.ground_truth_problems,
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
    """Flat, so a group table is one row per group: ``n``, each metric's mean, ``median_<metric>`` and
    ``n_<metric>`` (the persons that metric's figures cover)."""
    out: dict[str, Any] = {
        "n": g.n, **g.mean, **{f"median_{k}": v for k, v in g.median.items()},
        **{f"n_{k}": v for k, v in g.count.items()},
    }  # fmt: skip
    cleaned: dict[str, Any] = _clean(out)
    return cleaned


def group_metrics(persons: Sequence[PersonError], metric_names: Sequence[str]) -> GroupMetrics:
    """Mean and median of each metric over the persons that have it (evaluated persons' errors are finite)."""
    mean, median, count = {}, {}, {}
    for name in metric_names:
        values = np.array([p.errors[name] for p in persons if name in p.errors], dtype=np.float64)
        values = values[np.isfinite(values)]
        mean[name] = float(values.mean()) if values.size else math.nan
        median[name] = float(np.median(values)) if values.size else math.nan
        count[name] = int(values.size)
    return GroupMetrics(n=len(persons), mean=mean, median=median, count=count)


def _label_values(row: dict[str, Any], name: str, size: int) -> np.ndarray:
    """A label row's ``name`` as ``size`` float64 values; all NaN when absent or malformed (a hand-edited Parquet),
    so the person is counted as non-finite instead of failing the run."""
    try:
        values = np.asarray(row.get(name), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.empty(0)
    return values if values.size == size else np.full(size, math.nan)


def _finite_number(value: Any) -> float:
    """A real number as float; NaN for anything else (None, text, a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


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
    pred_joints = _label_values(row, "joints_3d", 72).reshape(24, 3)
    gt_joints = gt.joints_3d
    gt_vertices = pred_vertices = None
    if meshes is not None and gt.has_smpl:
        pose = np.concatenate([np.asarray(gt.global_orient), np.asarray(gt.body_pose)])
        gt_vertices, gt_smpl_joints = meshes.mesh(pose, np.asarray(gt.betas), gt.gender)
        if gt_joints is None:
            gt_joints = gt_smpl_joints
        gt_pelvis = gt_smpl_joints[0]
    if meshes is not None and gt_vertices is not None:
        pose = np.concatenate([_label_values(row, "global_orient", 3), _label_values(row, "body_pose", 69)])
        betas = _label_values(row, "betas", 10)
        if np.isfinite(pose).all() and np.isfinite(betas).all():
            pred_vertices, pred_smpl_joints = meshes.mesh(pose, betas)
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
    for row in rows:
        gt = ground_truth.match(row)
        if gt is None:
            continue
        matched_gt.add(id(gt))
        occlusion = str(row.get("occlusion_level") or "unknown") if has_occlusion else None
        persons.append(
            PersonError(
                sample_id=str(row.get("sample_id")),
                quality_tier=str(row.get("quality_tier")),
                confidence=_finite_number(row.get("confidence")),
                occlusion_level=occlusion,
                errors=person_errors(row, gt, meshes, h36m_regressor),
                signals=_signals(row),
            )
        )
    # Every figure covers evaluated persons only, and says how many: a person whose label gives a NaN/inf error
    # (ground truth with NaN/inf never gets here) or for whom no metric could be computed is counted and left out.
    non_finite = [p for p in persons if not all(math.isfinite(v) for v in p.errors.values())]
    no_metric = [p for p in persons if not p.errors]
    evaluated = [p for p in persons if p.errors and all(math.isfinite(v) for v in p.errors.values())]
    names = tuple(n for n in METRICS if any(n in p.errors for p in persons))
    if error_metric not in names:
        error_metric = "mpjpe_mm" if "mpjpe_mm" in names else (names[0] if names else error_metric)
    tiers = [t.value for t in QualityTier if any(p.quality_tier == t.value for p in evaluated)]  # best first
    tiers += sorted({p.quality_tier for p in evaluated} - set(tiers))
    by_occlusion = None
    if has_occlusion:
        levels = sorted({str(p.occlusion_level) for p in evaluated})
        by_occlusion = {lv: group_metrics([p for p in evaluated if p.occlusion_level == lv], names) for lv in levels}
    quality = {
        name: confidence_quality(
            np.array([p.confidence for p in evaluated if name in p.errors]),
            np.array([p.errors[name] for p in evaluated if name in p.errors]),
            name,
            sparsification_steps,
        )
        for name in names
    }
    counts = {
        "label_rows": len(rows),
        "ground_truth_persons": len(ground_truth),
        "ground_truth_invalid": ground_truth.n_invalid,
        "matched": len(persons),
        "unmatched_labels": len(rows) - len(persons),
        "unmatched_ground_truth": len(ground_truth) - len(matched_gt),
        "non_finite": len(non_finite),
        "no_metric": len(no_metric),
        "evaluated": len(evaluated),
    }
    return EvaluationResult(
        labels=labels,
        ground_truth=ground_truth_uri,
        counts=counts,
        metrics=names,
        error_metric=error_metric,
        overall=group_metrics(evaluated, names),
        by_tier={t: group_metrics([p for p in evaluated if p.quality_tier == t], names) for t in tiers},
        by_occlusion_level=by_occlusion,
        confidence_quality=quality,
        persons=tuple(persons),
        ground_truth_problems={"counts": dict(ground_truth.problems), "examples": list(ground_truth.examples)},
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

    Rows that cannot be used are counted by reason in the index's ``problems`` (never cut to fit).

    Raises:
        ValueError: no ground-truth file found, a file that cannot be read as its format (a pickle that would run
            code is one), or two persons with the same join key (`DuplicateGroundTruthError`); the message names
            the file.
    """
    uris = ground_truth_uris(storage, uri, (".parquet", ".pkl"))
    if not uris:
        raise ValueError(f"no ground truth (*.parquet or 3DPW *.pkl) at {uri!r}")
    parquet = [u for u in uris if u.endswith(".parquet")]
    read: list[GroundTruthPerson | GroundTruthRowError] = list(read_parquet_ground_truth(storage, parquet))
    for pkl in (u for u in uris if u.endswith(".pkl")):
        read.extend(_sequence_file_persons(pkl, storage.read_bytes(pkl)))
    persons = [p for p in read if isinstance(p, GroundTruthPerson)]
    problems = [p for p in read if isinstance(p, GroundTruthRowError)]
    return GroundTruthIndex(
        persons, dict(Counter(p.reason for p in problems)), [str(p) for p in problems[:_PROBLEM_EXAMPLES]]
    )


def _sequence_file_persons(uri: str, data: bytes) -> list[GroundTruthPerson | GroundTruthRowError]:
    """The persons of one 3DPW file, each checked for NaN/inf.

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
    """An ``eval.json`` written by ``dpmesh-eval`` (the `EvaluationResult.to_dict` document), checked against its
    schema (`pipelines.eval.document`).

    Raises:
        ValueError: not an evaluation document of a supported version, or one that breaks the schema (one line
            naming the field).
    """
    return parse_document(storage.read_bytes(uri))


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.1f}"


def _cell(group: dict[str, Any], metric: str) -> str:
    """A metric's mean, with the persons it covers when that is not the group's ``n``."""
    covered = group.get(f"n_{metric}")
    return _fmt(group.get(metric)) + ("" if covered is None or covered == group["n"] else f" (n={covered})")


def format_markdown(result: EvaluationResult | dict[str, Any]) -> str:
    """Markdown tables: errors overall / by tier / by occlusion level (mean, mm), then the confidence quality."""
    # Works on the `EvaluationResult.to_dict` document, so a stored eval.json renders the same way.
    doc = result.to_dict() if isinstance(result, EvaluationResult) else result
    names = list(doc["metrics"])
    c = doc["counts"]
    left_out = f"{c.get('non_finite', 0)} with non-finite or malformed label values"
    if c.get("no_metric"):
        left_out += f", {c['no_metric']} without a computable metric"
    lines = [
        f"Matched {c['matched']} of {c['label_rows']} label rows to {c['ground_truth_persons']} ground-truth persons "
        f"({c['unmatched_ground_truth']} ground-truth persons unmatched); evaluated {c.get('evaluated', '?')} "
        f"(left out: {left_out}).",
    ]
    problems = (doc.get("ground_truth_problems") or {}).get("counts") or {}
    if problems:
        listed = ", ".join(f"{reason} {n}" for reason, n in sorted(problems.items()))
        lines.append(f"Ground-truth rows left out: {sum(problems.values())} ({listed}).")
    lines += [
        "",
        "| group | n | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    groups = [("all", doc["overall"])] + [(f"tier {k}", v) for k, v in doc["by_tier"].items()]
    groups += [(f"occlusion {k}", v) for k, v in (doc["by_occlusion_level"] or {}).items()]
    for label, g in groups:
        lines.append(f"| {label} | {g['n']} | " + " | ".join(_cell(g, n) for n in names) + " |")
    lines += ["", "| confidence vs | n | Spearman(conf, -error) | AUSE mm | AUSE / mean error |"]
    lines += ["|---|---:|---:|---:|---:|"]
    for name, q in doc["confidence_quality"].items():
        if q is not None:
            rho = "-" if q["spearman"] is None else f"{q['spearman']:.3f}"
            rel = "-" if q["ause_relative"] is None else f"{q['ause_relative']:.3f}"
            lines.append(f"| {name} | {q['n']} | {rho} | {_fmt(q['ause_mm'])} | {rel} |")
    return "\n".join(lines)

"""The evaluation's result: typed records (`EvaluationResult`, its groups and persons), the ``eval.json`` document
they make (`EvaluationResult.to_dict`, checked on reading by `pipelines.eval.document`) and its Markdown table
(`format_markdown`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.eval.document import EVAL_FORMAT, EVAL_VERSION, parse_document
from pipelines.eval.quality import ConfidenceQuality
from pipelines.storage import Storage


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
    NaN where not computable; only the metrics that apply to the person)."""

    sample_id: str
    quality_tier: str
    confidence: float
    occlusion_level: str | None
    errors: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id, "quality_tier": self.quality_tier, "confidence": self.confidence,
            "occlusion_level": self.occlusion_level, **{k: _finite_or_none(v) for k, v in self.errors.items()},
        }  # fmt: skip


@dataclass(frozen=True)
class EvaluationResult:
    """The evaluation of one label set; `to_dict` is the ``eval.json`` document.

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
        persons: every matched person (evaluated or not), in label order; empty when there are more than the
            job writes to ``eval_persons.json`` (each person's errors are in ``persons/*.parquet`` then).
        estimates: how figures were computed when not exactly (``eval.json`` field ``estimates``; see
            `pipelines.eval.summary`); None for an exact result.
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
    estimates: dict[str, Any] | None = None

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
        if self.estimates is not None:
            doc["estimates"] = self.estimates
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

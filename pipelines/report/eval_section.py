"""The report's evaluation section: a ``dpmesh-eval`` result (``eval.json``) drawn as tables and plots.

The document is `pipelines.eval.evaluate.EvaluationResult.to_dict` (read back, and checked against its schema, with
`pipelines.eval.evaluate.read_evaluation`; its metric names name plot files, so the schema admits plain path
segments only): counts of the join, errors in mm (mean, and ``median_<metric>``)
overall / ``by_tier`` / ``by_occlusion_level``, and per metric the confidence quality (Spearman, the
sparsification curve against its oracle, AUSE); optionally ``persons`` (one entry per matched person), which feeds
a confidence-versus-error scatter.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.report import html, plots


def render_eval(doc: dict[str, Any], add_asset: Callable[[str, bytes], str]) -> str:
    """HTML for the evaluation ``doc``; plots go through ``add_asset(name, png) -> src``."""
    metrics = list(doc.get("metrics") or [])
    counts = doc.get("counts") or {}
    parts = [
        html.table(
            ["", ""],
            [
                ("labels", doc.get("labels")),
                ("ground truth", doc.get("ground_truth")),
                *counts.items(),
                ("headline metric", doc.get("error_metric")),
            ],
        )
    ]
    groups: list[tuple[str, dict[str, Any]]] = [("all", doc.get("overall") or {})]
    groups += [(f"tier {t}", g) for t, g in (doc.get("by_tier") or {}).items()]
    occlusion = doc.get("by_occlusion_level")
    groups += [(f"occlusion {level}", g) for level, g in (occlusion or {}).items()]
    problems = (doc.get("ground_truth_problems") or {}).get("counts") or {}
    if problems:
        listed = ", ".join(f"{reason} {n}" for reason, n in sorted(problems.items()))
        parts.append(html.note(f"Ground-truth rows left out (never cut or coerced to fit): {listed}."))
    parts.append("<h3>Errors (mm; mean, median in brackets; n: the persons each figure covers)</h3>")
    rows = [[name, g.get("n"), *(_mean_median(g, m) for m in metrics)] for name, g in groups]
    parts.append(html.table(["group", "n", *metrics], rows))
    if occlusion is None:
        parts.append(html.note("The labels have no occlusion_level column: no breakdown by occlusion level."))
    quality = {m: q for m, q in (doc.get("confidence_quality") or {}).items() if q}
    if quality:
        parts.append("<h3>Does the confidence rank the error?</h3>")
        rows = [[m, q.get("spearman"), q.get("ause_mm"), q.get("ause_relative")] for m, q in quality.items()]
        parts.append(html.table(["metric", "Spearman (1 = best)", "AUSE (mm)", "AUSE / mean error"], rows))
        figures = []
        for metric, q in quality.items():
            curve = q.get("sparsification") or {}
            if not curve.get("fraction_removed"):
                continue
            series = {
                "by confidence": (curve["fraction_removed"], curve["mean_error_mm"]),
                "oracle (by true error)": (curve["fraction_removed"], curve["oracle_mean_error_mm"]),
            }
            xlabel, ylabel = "fraction removed (least confident first)", "mean error of the rest (mm)"
            png = plots.curves(series, f"Sparsification: {metric}", xlabel, ylabel)
            caption = "the closer to the oracle, the better the confidence ranks the error; AUSE is the area between"
            figures.append(html.figure(add_asset(f"eval_sparsification_{metric}.png", png), metric, caption))
        parts.append(html.grid(figures))
    else:
        parts.append(html.note("No confidence quality: no person has both a finite confidence and a finite error."))
    persons = doc.get("persons") or []
    metric = doc.get("error_metric")
    if persons and metric:
        by_tier: dict[str, tuple[list[float], list[float]]] = {}
        for p in persons:
            if p.get(metric) is not None and p.get("confidence") is not None:
                xs, ys = by_tier.setdefault(str(p.get("quality_tier")), ([], []))
                xs.append(float(p["confidence"]))
                ys.append(float(p[metric]))
        if by_tier:
            points = {t: (np.asarray(x), np.asarray(y)) for t, (x, y) in by_tier.items()}
            png = plots.scatter_by_tier(points, f"Confidence against {metric}", "confidence", f"{metric}")
            parts.append(html.figure(add_asset("eval_confidence_vs_error.png", png), f"Confidence against {metric}"))
    return "".join(parts)


def _mean_median(group: dict[str, Any], metric: str) -> str:
    """``mean (median)``, and the persons it covers when that is not the group's ``n``."""
    mean, median, covered = group.get(metric), group.get(f"median_{metric}"), group.get(f"n_{metric}")
    if mean is None:
        return "–"
    text = f"{mean:.1f}" + (f" ({median:.1f})" if median is not None else "")
    return text + ("" if covered is None or covered == group.get("n") else f" n={covered}")

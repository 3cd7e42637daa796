"""The report's sections drawn from a label output's merged statistics (`pipelines.common.label_stats`) and markers.

Each renderer takes what the plan read and returns its HTML, adding its plots to ``assets``. Counts are over every
row; histograms use the statistics' fixed bins; box plots read quantiles off those bins (within one bin of the exact
quantile, said in the caption). Nothing here reads a row: the cost of a section does not grow with the rows, and over
shards it is one number per shard, drawn as a distribution, never as one bar per shard.
"""

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from dpmesh_core.joints import SMPL24_JOINTS
from pipelines.common.label_stats import HISTOGRAMS, LEVEL_COLUMNS
from pipelines.common.merged_stats import MergedStats
from pipelines.common.safe_paths import UnsafeName, check_segment
from pipelines.report import html, plots
from pipelines.report.assets import Assets
from pipelines.report.data import ordered_tiers
from pipelines.report.plan import ReportPlan
from schemas.occlusion import OcclusionLevel


OCCLUSION_COLUMNS = ("occlusion_level", "n_kp_visible", "n_kp_occluded", "n_kp_missing", "joints_in_image_frac",
                     "crowd_index")  # fmt: skip
"""The occlusion columns (schema 1.1) the report plots, in schema order."""
BOX_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
WORST_SHARDS = 10
"""Shards named in each "worst" table (highest error rate, lowest throughput)."""


def _counts_of(markers: dict[str, dict[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for marker in markers.values():
        total.update(marker.get("counts") or {})
    return dict(total)


def _model_line(summary: dict[str, Any]) -> str:
    model = (summary.get("config") or {}).get("model") or {}
    if not model:
        return "?"
    source = model.get("pretrained") or model.get("checkpoint") or f"seed {model.get('seed')}"
    return f"{model.get('name')} ({source}) on {model.get('device')}, {model.get('dtype')}"


def overview(plan: ReportPlan, stats: MergedStats, source_note: str) -> str:
    summary = plan.summary or {}
    counts = summary.get("counts") or _counts_of(plan.markers)
    marker_rows = counts.get("persons_accepted", 0) + counts.get("persons_rejected", 0)
    throughput = summary.get("throughput") or {}
    reconciled = summary.get("reconciled", all(m.get("reconciled") for m in plan.markers.values()))

    def slashed(*names: str) -> str:
        return " / ".join(str(counts.get(n)) for n in names)

    facts: list[tuple[str, Any]] = [
        ("labels", plan.uri),
        ("written by", f"{summary.get('created_by', '?')} {summary.get('pipeline_version', '')}".strip()),
        ("config hash", summary.get("config_hash")),
        ("model", _model_line(summary)),
        ("shards done / total", f"{len(plan.markers)} / {(summary.get('shards') or {}).get('total', '?')}"),
        ("images in / ok / errored", slashed("images_in", "images_ok", "images_errored")),
        ("persons in", counts.get("persons_in")),
        ("accepted / rejected / errored", slashed("persons_accepted", "persons_rejected", "persons_errored")),
        ("counts reconcile (markers)", "yes" if reconciled else "NO"),
        ("rows in the Parquet (accepted + rejected)", stats.n_rows),
        ("persons/s (last run)", throughput.get("persons_per_s")),
        ("elapsed s (last run)", throughput.get("elapsed_s")),
    ]
    body = html.table(["", ""], facts)
    thresholds = summary.get("thresholds")
    if thresholds:
        body = html.grid(
            [
                f"<div>{body}</div>",
                "<div>" + html.table(["filter threshold", ""], sorted(thresholds.items())) + "</div>",
            ]
        )
    if marker_rows != stats.n_rows:
        body += html.note(
            f"The markers count {marker_rows} accepted + rejected persons but the statistics hold {stats.n_rows} "
            "rows: the output was changed after labeling, or a shard is being rewritten."
        )
    if plan.summary is None:
        body += html.note("No _summary.json (the run did not finish its last step): counts are from the markers.")
    if plan.pending:
        body += html.note(
            f"{len(plan.pending)} shards were labeled before markers carried statistics: the report computed theirs "
            "from their rows (a Beam step, once per report)."
        )
    return body + (html.note(source_note) if source_note else "")


def counts(stats: MergedStats, shard_errors: pa.Table | None, assets: Assets) -> str:
    figures = []
    tiers = {t: stats.rows[t] for t in ordered_tiers(stats.rows)}
    if tiers:
        src = assets.add("tiers.png", plots.bar_counts(tiers, "Persons by quality tier", "persons", plots.TIER_COLORS))
        figures.append(html.figure(src, "Persons by quality tier", "accepted tiers and reject, from every row"))
    reasons = dict(sorted(stats.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    if reasons:
        src = assets.add("reasons.png", plots.bar_counts(reasons, "Rejection reasons", "persons"))
        figures.append(html.figure(src, "Rejection reasons", "a person counts once for each of its reasons"))
    pairs: Counter[tuple[str, str]] = Counter()
    for stage_reason, n in stats.errors.items():
        stage, _, reason = stage_reason.partition("/")
        pairs[(stage, reason)] += n
    if shard_errors is not None and shard_errors.num_rows:
        for row in shard_errors.select(["stage", "reason"]).to_pylist():
            pairs[(row["stage"], row["reason"])] += 1
    stages: Counter[str] = Counter()
    for (stage, _), n in pairs.items():
        stages[stage] += n
    if stages:
        src = assets.add("stages.png", plots.bar_counts(dict(sorted(stages.items())), "Errors by stage", "rows"))
        figures.append(html.figure(src, "Errors by stage", "label errors/ and the shard set's _errors.parquet"))
    body = html.grid(figures)
    if pairs:
        body += "<h3>Errors by stage and reason</h3>"
        body += html.table(["stage", "reason", "rows"], [(s, r, n) for (s, r), n in sorted(pairs.items())])
    else:
        body += html.note("No error rows: every image decoded and every person reached the model.")
    if shard_errors is None:
        body += html.note("The shard set's _errors.parquet could not be read (shard set moved or not reachable).")
    return body


def _histogram(stats: MergedStats, column: str, title: str, xlabel: str, assets: Assets, name: str) -> str | None:
    by_tier = stats.hist.get(column)
    if not by_tier:
        return None
    spec = HISTOGRAMS[column]
    ordered = {t: by_tier[t] for t in ordered_tiers(by_tier)}
    png = plots.binned_by_tier(ordered, spec.edges(), title, xlabel, log_x=spec.log)
    return html.figure(assets.add(name, png), title, f"{spec.count} fixed bins, {spec.low:g} to {spec.high:g}")


def confidence(stats: MergedStats, assets: Assets) -> str:
    if not stats.n_rows:
        return html.note("No rows.")
    figures = [
        _histogram(stats, "confidence", "Confidence per tier", "confidence", assets, "confidence.png"),
        _histogram(
            stats, "reproj_err_norm", "Reprojection error per tier", "reproj_err_norm (box-normalised)", assets,
            "reprojection.png",
        ),
    ]  # fmt: skip
    return html.grid([f for f in figures if f])


def occlusion(stats: MergedStats, assets: Assets) -> str:
    present = [c for c in OCCLUSION_COLUMNS if c in stats.levels or c in stats.hist]
    if not present:
        return html.note(
            "This output has no occlusion columns (occlusion_level none / partial / heavy, visible / occluded / "
            "missing keypoint counts, crowd index): it was labeled with a schema before them. Relabel to see them."
        )
    figures, unnamed = [], []
    for name in present:
        plot_name = f"occlusion_{name}.png"
        try:
            check_segment(plot_name, "column name")  # the plot file is named after the column
        except UnsafeName:
            unnamed.append(name)
            continue
        if name in stats.hist:
            figure = _histogram(stats, name, name, name, assets, plot_name)
            if figure:
                figures.append(figure)
            continue
        by_tier = {t: stats.levels[name][t] for t in ordered_tiers(stats.levels[name])}
        if name in LEVEL_COLUMNS and name != "occlusion_level":  # counts: one bar per value, in value order
            values = sorted({v for c in by_tier.values() for v in c}, key=_number_or_text)
        else:
            values = [lv.value for lv in OcclusionLevel if any(c[lv.value] for c in by_tier.values())]
            values += sorted({v for c in by_tier.values() for v in c} - set(values))
        png = plots.stacked_levels({t: dict(c) for t, c in by_tier.items()}, values, f"{name} by tier")
        figures.append(html.figure(assets.add(plot_name, png), name))
    body = html.grid(figures)
    if unnamed:
        body += html.note(f"Not plotted: columns whose names cannot name a file: {', '.join(map(repr, unnamed))}.")
    return body


def _number_or_text(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def boxes(stats: MergedStats, assets: Assets) -> str:
    figure = _histogram(
        stats, "box_size_px", "Person box size per tier", "box size (px, longer side)", assets, "box_sizes.png"
    )
    return figure or html.note("No box_size_px column.")


def body(stats: MergedStats, assets: Assets) -> str:
    if not stats.n_rows or "betas/0" not in stats.hist:
        return html.note("No rows.")
    betas = {f"β{i}": stats.quantiles(f"betas/{i}", BOX_QUANTILES) for i in range(10) if f"betas/{i}" in stats.hist}
    width = HISTOGRAMS["betas/0"].width()
    caption = f"boxes 25-75 %, whiskers 5-95 %, within {width:g} of the exact quantiles (the statistics' bins)"
    figures = [html.figure(assets.add("betas.png", plots.boxes(betas, "Shape (betas)", "value", width=6)),
                           "Shape coefficients", caption)]  # fmt: skip
    angles = {j: stats.quantiles(f"pose_angle/{j}", BOX_QUANTILES) for j in SMPL24_JOINTS}
    png = plots.boxes(angles, "Joint rotation angles", "degrees", width=9)
    caption = (
        "magnitude of each joint's axis-angle rotation relative to its parent (pelvis: global orientation), "
        f"within {HISTOGRAMS[f'pose_angle/{SMPL24_JOINTS[0]}'].width():g} degrees of the exact quantiles"
    )
    figures.append(html.figure(assets.add("pose_angles.png", png), "Pose: rotation angle per joint", caption))
    return html.grid(figures)


def shards(plan: ReportPlan, assets: Assets) -> str:
    """How shards spread (error rate, throughput) and the worst ones by name: one number per shard, drawn as a
    distribution whatever the number of shards."""
    names = sorted(plan.markers)
    per_shard = [plan.markers[s].get("counts") or {} for s in names]
    rates = np.array([c.get("persons_errored", 0) / max(c.get("persons_in", 0), 1) for c in per_shard])
    png = plots.distribution(100 * rates, "Error rate per shard", "errored / persons in (%)")
    body = html.grid([html.figure(assets.add("shard_error_rates.png", png), "Error rate per shard", "_done/ markers")])
    timed = {s: m for s, m in plan.markers.items() if m.get("elapsed_s")}
    throughput = {s: (m.get("counts") or {}).get("persons_in", 0) / float(m["elapsed_s"]) for s, m in timed.items()}
    if throughput:
        png = plots.distribution(np.array(list(throughput.values())), "Throughput per shard", "persons/s")
        body += html.figure(assets.add("shard_throughput.png", png), "Throughput per shard")
    else:
        run_rate = ((plan.summary or {}).get("throughput") or {}).get("persons_per_s")
        body += html.note(
            f"The markers carry no timing, so throughput is shown for the run only: {run_rate} persons/s "
            "(_summary.json, the last run)."
        )
    worst = sorted(zip(names, per_shard, rates, strict=True), key=lambda t: (-t[2], t[0]))[:WORST_SHARDS]
    body += "<h3>Shards with the highest error rate</h3>"
    rows = [
        (s, c.get("images_in"), c.get("persons_in"), c.get("persons_errored"), f"{100 * r:.1f} %") for s, c, r in worst
    ]
    body += html.table(["shard", "images in", "persons in", "persons errored", "error rate"], rows)
    if throughput:
        slowest = sorted(throughput.items(), key=lambda kv: (kv[1], kv[0]))[:WORST_SHARDS]
        body += "<h3>Slowest shards</h3>"
        body += html.table(
            ["shard", "persons in", "elapsed s", "persons/s"],
            [
                (s, (timed[s].get("counts") or {}).get("persons_in"), timed[s]["elapsed_s"], f"{r:.2f}")
                for s, r in slowest
            ],
        )
    return body


def review_link(page: str, review: dict[str, Any]) -> str:
    """The index's pointer to the review page (``review``: what `pipelines.report.review_section` drew)."""
    strata = ", ".join(f"{stratum.replace('|', ' · ')} {n}" for stratum, n in review["strata"].items()) or "none"
    return (
        f'<p><a href="{html.text(page)}">Open the review page</a>: {review["persons"]} persons to accept or reject '
        "with the keyboard, drawn stratified by confidence band and occlusion level. Decisions stay in the browser; "
        "its download, review.json, is what <code>dpmesh-refilter review=</code> applies.</p>"
        + html.table(["persons drawn by stratum (confidence band · occlusion level)", ""], [("", strata)])
    )

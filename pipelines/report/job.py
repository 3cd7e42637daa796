"""``dpmesh-report``: a static HTML report over a ``dpmesh-label`` output.

    dpmesh-report input.labels=<label output> output=<report folder> [report.per_tier=N report.seed=S]
                  [report.eval=<dpmesh-eval JSON>] [report.smpl_model=<npz>] [storage=...]

writes ``<output>/index.html`` and ``<output>/assets/`` (plots, gallery tiles): one folder that opens from disk, with
no server and no network. Runs on the launching machine (no Beam): it reads the run's summary and markers, the
plotted columns of every row, and for the gallery the few rows, shard images and meshes it shows.

Hostile input: the launch refuses a negative ``report.seed`` and an ``output`` that is a file or overlaps an input
(`check_launch`), and an evaluation document that breaks its schema (`pipelines.eval.document`); rows whose
``sample_id`` or tier cannot name a file are left out of the gallery and counted (`pipelines.report.assets`).
"""

import logging
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

import pipelines
from dpmesh_core.joints import SMPL24_JOINTS
from pipelines.cli import hydra_app
from pipelines.common.label_set import read_summary
from pipelines.common.safe_paths import UnsafeName, check_output_location, check_segment, safe_join
from pipelines.config import ConfigError, ReportJobConfig
from pipelines.config.shard import DEFAULT_MAX_IMAGE_PIXELS
from pipelines.report import gallery, html, plots
from pipelines.report.assets import Assets
from pipelines.report.data import (
    LabelOutput,
    load_label_output,
    ordered_tiers,
    read_images,
    read_rows,
    shard_tar_uri,
)
from pipelines.report.eval_section import render_eval
from pipelines.report.mesh import Body, resolve_body
from pipelines.report.render import MeshRenderer, RendererUnavailableError
from pipelines.storage import ObjectNotFoundError, Storage, join
from schemas import fixed_list_to_numpy
from schemas.occlusion import OcclusionLevel


logger = logging.getLogger(__name__)

INDEX_NAME = "index.html"


def _column(rows: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 (`(N,)`, or `(N, K)` for fixed-size lists); nulls become NaN."""
    column = rows.column(name)
    if pa.types.is_fixed_size_list(column.type):
        return np.asarray(fixed_list_to_numpy(column), dtype=np.float64)  # Arrow's buffers, no Python floats
    if pa.types.is_list(column.type):
        return np.asarray(column.to_pylist(), dtype=np.float64)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _by_tier(rows: pa.Table, values: np.ndarray) -> dict[str, np.ndarray]:
    tiers = np.asarray(rows.column("quality_tier").to_pylist(), dtype=object)
    return {t: values[tiers == t] for t in ordered_tiers(set(tiers.tolist()))}


def _overview(out: LabelOutput, source_note: str) -> str:
    summary = out.summary or {}
    counts = summary.get("counts") or _sum_marker_counts(out.markers)
    marker_rows = counts.get("persons_accepted", 0) + counts.get("persons_rejected", 0)
    throughput = summary.get("throughput") or {}
    reconciled = summary.get("reconciled", all(m.get("reconciled") for m in out.markers.values()))

    def slashed(*names: str) -> str:
        return " / ".join(str(counts.get(n)) for n in names)

    facts: list[tuple[str, Any]] = [
        ("labels", out.uri),
        ("written by", f"{summary.get('created_by', '?')} {summary.get('pipeline_version', '')}".strip()),
        ("config hash", summary.get("config_hash")),
        ("model", _model_line(summary)),
        ("shards done / total", f"{len(out.markers)} / {(summary.get('shards') or {}).get('total', '?')}"),
        ("images in / ok / errored", slashed("images_in", "images_ok", "images_errored")),
        ("persons in", counts.get("persons_in")),
        ("accepted / rejected / errored", slashed("persons_accepted", "persons_rejected", "persons_errored")),
        ("counts reconcile (markers)", "yes" if reconciled else "NO"),
        ("rows in the Parquet (accepted + rejected)", out.n_rows),
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
    if marker_rows != out.n_rows:
        body += html.note(
            f"The markers count {marker_rows} accepted + rejected persons but the Parquet holds {out.n_rows} rows: "
            "the output was changed after labeling, or a shard is being rewritten."
        )
    if out.summary is None:
        body += html.note("No _summary.json (the run did not finish its last step): counts are from the markers.")
    return body + (html.note(source_note) if source_note else "")


def _model_line(summary: dict[str, Any]) -> str:
    model = (summary.get("config") or {}).get("model") or {}
    if not model:
        return "?"
    source = model.get("pretrained") or model.get("checkpoint") or f"seed {model.get('seed')}"
    return f"{model.get('name')} ({source}) on {model.get('device')}, {model.get('dtype')}"


def _sum_marker_counts(markers: dict[str, dict[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for marker in markers.values():
        total.update(marker.get("counts") or {})
    return dict(total)


def _counts_section(out: LabelOutput, assets: Assets) -> str:
    figures = []
    tiers = {t: out.tier_counts[t] for t in ordered_tiers(out.tier_counts)}
    if tiers:
        src = assets.add("tiers.png", plots.bar_counts(tiers, "Persons by quality tier", "persons", plots.TIER_COLORS))
        figures.append(html.figure(src, "Persons by quality tier", "accepted tiers and reject, from every row"))
    if out.reason_counts:
        src = assets.add("reasons.png", plots.bar_counts(out.reason_counts, "Rejection reasons", "persons"))
        figures.append(html.figure(src, "Rejection reasons", "a person counts once for each of its reasons"))
    stages: Counter[str] = Counter()
    reasons: Counter[tuple[str, str]] = Counter()
    for table in (out.errors, out.shard_errors):
        if table is not None and table.num_rows:
            for row in table.select(["stage", "reason"]).to_pylist():
                stages[row["stage"]] += 1
                reasons[(row["stage"], row["reason"])] += 1
    body = ""
    if stages:
        src = assets.add("stages.png", plots.bar_counts(dict(sorted(stages.items())), "Errors by stage", "rows"))
        figures.append(html.figure(src, "Errors by stage", "label errors/ and the shard set's _errors.parquet"))
    body += html.grid(figures)
    if reasons:
        body += "<h3>Errors by stage and reason</h3>"
        body += html.table(["stage", "reason", "rows"], [(s, r, n) for (s, r), n in sorted(reasons.items())])
    else:
        body += html.note("No error rows: every image decoded and every person reached the model.")
    if out.shard_errors is None:
        body += html.note("The shard set's _errors.parquet could not be read (shard set moved or not reachable).")
    return body


def _confidence_section(out: LabelOutput, assets: Assets) -> str:
    if not out.rows.num_rows:
        return html.note("No rows.")
    values = _by_tier(out.rows, _column(out.rows, "confidence"))
    png = plots.histograms_by_tier(values, "Confidence per tier", "confidence", bins=20, value_range=(0.0, 1.0))
    figures = [html.figure(assets.add("confidence.png", png), "Confidence per tier", "combined confidence, 0..1")]
    if "reproj_err_norm" in out.rows.column_names:
        values = _by_tier(out.rows, _column(out.rows, "reproj_err_norm"))
        png = plots.histograms_by_tier(
            values, "Reprojection error per tier", "reproj_err_norm (box-normalised)", log_x=True
        )
        figures.append(html.figure(assets.add("reprojection.png", png), "Reprojection error per tier"))
    return html.grid(figures)


def _occlusion_section(out: LabelOutput, assets: Assets) -> str:
    columns = [c for c in out.occlusion_columns if c in out.rows.column_names]
    if not columns:
        return html.note(
            "This output has no occlusion columns (occlusion_level none / partial / heavy, visible / occluded / "
            "missing keypoint counts, crowd index): it was labeled with a schema before them. Relabel to see them."
        )
    figures, unnamed = [], []
    for name in columns:
        plot_name = f"occlusion_{name}.png"
        try:
            check_segment(plot_name, "column name")  # before plotting: the plot file is named after the column
        except UnsafeName:
            unnamed.append(name)
            continue
        column = out.rows.column(name)
        if pa.types.is_string(column.type) or pa.types.is_dictionary(column.type):
            tiers = out.rows.column("quality_tier").to_pylist()
            counts: dict[str, Counter[str]] = defaultdict(Counter)
            for tier, level in zip(tiers, column.to_pylist(), strict=True):
                counts[tier][str(level)] += 1
            levels = [lv.value for lv in OcclusionLevel if any(c[lv.value] for c in counts.values())]
            levels += sorted({lv for c in counts.values() for lv in c} - set(levels))
            ordered = {t: dict(counts[t]) for t in ordered_tiers(counts)}
            png = plots.stacked_levels(ordered, levels, f"{name} by tier")
        elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            values = _column(out.rows, name)
            finite = values[np.isfinite(values)]
            bins: int | np.ndarray = 20
            if pa.types.is_integer(column.type) and len(finite):  # counts: one bin per value
                bins = np.arange(finite.min() - 0.5, finite.max() + 1.5)
            png = plots.histograms_by_tier(_by_tier(out.rows, values), name, name, bins=bins)
        else:
            continue
        figures.append(html.figure(assets.add(plot_name, png), name))
    body = html.grid(figures)
    if unnamed:
        body += html.note(f"Not plotted: columns whose names cannot name a file: {', '.join(map(repr, unnamed))}.")
    return body


def _box_section(out: LabelOutput, assets: Assets) -> str:
    if "box_size_px" not in out.rows.column_names or not out.rows.num_rows:
        return html.note("No box_size_px column.")
    values = _by_tier(out.rows, _column(out.rows, "box_size_px"))
    png = plots.histograms_by_tier(values, "Person box size per tier", "box size (px, longer side)", log_x=True)
    return html.figure(assets.add("box_sizes.png", png), "Person box sizes", "log scale")


def _body_section(out: LabelOutput, assets: Assets) -> str:
    if not out.rows.num_rows:
        return html.note("No rows.")
    betas = _column(out.rows, "betas")
    png = plots.boxplots({f"β{i}": betas[:, i] for i in range(betas.shape[1])}, "Shape (betas)", "value", width=6)
    figures = [html.figure(assets.add("betas.png", png), "Shape coefficients", "boxes 25-75 %, whiskers 5-95 %")]
    pose = np.concatenate([_column(out.rows, "global_orient"), _column(out.rows, "body_pose")], axis=1)
    angles = np.degrees(np.linalg.norm(pose.reshape(len(pose), -1, 3), axis=2))
    png = plots.boxplots(
        {name: angles[:, j] for j, name in enumerate(SMPL24_JOINTS)}, "Joint rotation angles", "degrees", width=9
    )
    caption = "magnitude of each joint's axis-angle rotation relative to its parent (pelvis: global orientation)"
    figures.append(html.figure(assets.add("pose_angles.png", png), "Pose: rotation angle per joint", caption))
    return html.grid(figures)


def _shards_section(out: LabelOutput, assets: Assets) -> str:
    shards = sorted(out.markers)
    counts = [out.markers[s].get("counts") or {} for s in shards]
    outcomes = {k: [c.get(f"persons_{k}", 0) for c in counts] for k in ("accepted", "rejected", "errored")}
    rates = [c.get("persons_errored", 0) / max(c.get("persons_in", 0), 1) for c in counts]
    png = plots.per_shard(shards, outcomes, rates)
    body = html.figure(assets.add("shards.png", png), "Persons per shard and error rate", "from the _done/ markers")
    timed = [(s, m) for s, m in zip(shards, (out.markers[s] for s in shards), strict=True) if m.get("elapsed_s")]
    if timed:  # markers that carry timing (newer label runs) give a per-shard rate
        rate = {s: (m.get("counts") or {}).get("persons_in", 0) / float(m["elapsed_s"]) for s, m in timed}
        png = plots.bar_counts({s: round(r, 2) for s, r in rate.items()}, "Throughput per shard", "persons/s")
        body += html.figure(assets.add("shard_throughput.png", png), "Throughput per shard")
    else:
        run_rate = ((out.summary or {}).get("throughput") or {}).get("persons_per_s")
        body += html.note(
            f"The markers carry no timing, so throughput is shown for the run only: {run_rate} persons/s "
            "(_summary.json, the last run)."
        )
    worst = sorted(zip(shards, counts, rates, strict=True), key=lambda t: (-t[2], t[0]))[:10]
    body += "<h3>Shards with the highest error rate</h3>"
    rows = [
        (s, c.get("images_in"), c.get("persons_in"), c.get("persons_errored"), f"{100 * r:.1f} %") for s, c, r in worst
    ]
    return body + html.table(["shard", "images in", "persons in", "persons errored", "error rate"], rows)


def _gallery_section(
    cfg: ReportJobConfig,
    storage: Storage,
    out: LabelOutput,
    body_model: Body | None,
    renderer: MeshRenderer | None,
    assets: Assets,
) -> tuple[str, dict[str, int]]:
    """The gallery's HTML (tiles written to ``assets``) and the persons shown per tier."""
    if not out.rows.num_rows or cfg.report.per_tier == 0:
        return html.note("No persons to show."), {}
    picks = gallery.draw_picks(
        out.rows.select(["quality_tier", "sample_id", "shard", "folder"]).to_pylist(),
        cfg.report.per_tier,
        cfg.report.seed,
    )
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for tier_picks in picks.values():
        for p in tier_picks:
            wanted[(p.folder, p.shard)].add(p.sample_id)
    rows = read_rows(storage, out.uri, wanted)
    keys_by_shard: dict[str, set[str]] = defaultdict(set)
    for row in rows.values():
        keys_by_shard[row["shard"]].add(row["image_key"])
    images: dict[str, np.ndarray] = {}
    label_input = ((out.summary or {}).get("config") or {}).get("input") or {}
    max_pixels = int(label_input.get("max_image_pixels") or DEFAULT_MAX_IMAGE_PIXELS)
    missing_shards = []
    for shard, keys in sorted(keys_by_shard.items()):
        try:
            tar = shard_tar_uri(storage, out.uri, cfg.input.shards, shard)
            images.update(read_images(storage, tar, keys, max_image_pixels=max_pixels))
        except (ObjectNotFoundError, FileNotFoundError) as exc:
            logger.warning("crops of %s unavailable: %s", shard, exc)
            missing_shards.append(shard)
    extra = [c for c in out.occlusion_columns if c in next(iter(rows.values()), {})]
    body = gallery.legend_html()
    if out.gallery_left_out:
        problems = "; ".join(f"{why}: {n}" for why, n in sorted(out.gallery_left_out.items()))
        body += html.note(
            f"{sum(out.gallery_left_out.values())} rows are left out of the gallery, never used as file names "
            f"({problems}). dpmesh-label writes no such rows: the Parquet was made or edited elsewhere."
        )
    if missing_shards:
        body += html.note(f"Crops unavailable for {', '.join(missing_shards)} (shard tar not found): grey tiles.")
    if out.sampled:
        body += html.note(f"Drawn from a seeded sample of {out.rows.num_rows} of {out.n_rows} rows (report.max_rows).")
    shown: dict[str, int] = {}
    for tier in ordered_tiers(picks):
        tier_rows = [rows[p.sample_id] for p in picks[tier] if p.sample_id in rows]
        tiles = gallery.make_tiles(tier_rows, images, body_model, renderer, cfg.report.crop_px)
        entries = []
        for t in tiles:
            src = assets.add(f"{t.row['sample_id']}.png", gallery.png_bytes(t.image), folder=("gallery", tier))
            headline = f"{tier} · confidence {_confidence_text(t.row.get('confidence'))}"
            if t.mesh_in_crop is not None:
                headline += f" · mesh in crop {100 * t.mesh_in_crop:.0f} %"
            entries.append(
                html.tile(
                    src, t.row["sample_id"], headline, t.row.get("reasons") or [], gallery.signals_of(t.row, extra)
                )
            )
        shown[tier] = len(entries)
        total = out.tier_counts.get(tier, 0)
        body += f"<h3>{html.text(tier)}: {len(entries)} of {total}</h3><div class='tiles'>{''.join(entries)}</div>"
    return body, shown


def _confidence_text(value: Any) -> str:
    """A row's confidence for a tile's headline (a null or non-numeric value from an edited Parquet shows as –)."""
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def _source_summary(storage: Storage, summary: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """For a ``dpmesh-refilter`` output, the summary of the labels it re-split (which holds the model config)."""
    source = (summary or {}).get("source")
    if not source or not isinstance(source, str):
        return None, ""
    try:
        source_summary = read_summary(storage, source)
    except (ObjectNotFoundError, ValueError):  # a location that is no storage URI
        source_summary = None
    if source_summary is None:
        return None, f"Re-split by dpmesh-refilter from {source} (its summary is not reachable)."
    return source_summary, f"Re-split by dpmesh-refilter from {source}."


def _load_eval(storage: Storage, uri: str) -> dict[str, Any]:
    """The ``dpmesh-eval`` document at ``uri``, checked against its schema (`pipelines.eval.document`), with
    ``persons`` from the ``eval_persons.json`` beside it (checked too) when the document does not hold them and
    that file exists.

    Raises:
        ConfigError: one line naming the file and the field that breaks the schema.
    """
    # Imported here: the eval package is needed only with report.eval.
    from pipelines.eval.document import parse_persons
    from pipelines.eval.evaluate import read_evaluation
    from pipelines.eval.job import EVAL_PERSONS

    try:
        doc = read_evaluation(storage, uri)
    except (ObjectNotFoundError, FileNotFoundError) as exc:
        raise ConfigError(f"report.eval={uri!r}: no such file (the eval.json of a dpmesh-eval run)") from exc
    except ValueError as exc:  # not JSON, or a field that breaks the schema
        raise ConfigError(f"report.eval={uri!r}: {exc}") from exc
    persons_uri = join(uri.rstrip("/").rsplit("/", 1)[0], EVAL_PERSONS)
    if "persons" not in doc and storage.exists(persons_uri):
        try:
            doc["persons"] = parse_persons(storage.read_bytes(persons_uri), doc["metrics"])
        except ValueError as exc:
            raise ConfigError(f"report.eval={uri!r}: its {persons_uri}: {exc}") from exc
    return doc


def check_launch(cfg: ReportJobConfig, storage: Storage) -> None:
    """What can be refused before anything is read or written: the draw's seed, and an output that is a file or
    overlaps an input (the report replaces files in its folder).

    Raises:
        ConfigError: one line naming the key.
    """
    if cfg.report.seed < 0:  # numpy's generators take seeds >= 0 only
        raise ConfigError(f"report.seed={cfg.report.seed} must be >= 0")
    inputs = {
        "input.labels": cfg.input.labels,
        "input.shards": cfg.input.shards,
        "report.eval": cfg.report.eval,
        "report.smpl_model": cfg.report.smpl_model,
    }
    check_output_location(storage, cfg.output, inputs)


def run(cfg: ReportJobConfig) -> dict[str, Any]:
    """Writes the report of ``cfg.input.labels`` into ``cfg.output`` and returns what it holds."""
    started = time.monotonic()
    storage = Storage(cfg.storage)
    check_launch(cfg, storage)
    evaluation = _load_eval(storage, cfg.report.eval) if cfg.report.eval else None  # fail before the slow part
    out = load_label_output(storage, cfg.input.labels, max_rows=cfg.report.max_rows, seed=cfg.report.seed)
    source_summary, source_note = _source_summary(storage, out.summary)
    assets = Assets()
    body_model: Body | None = None
    renderer: MeshRenderer | None = None
    render_line = "off (report.render_mesh=false): keypoints only"
    if cfg.report.render_mesh:
        body_model = resolve_body(out.summary, cfg.report.smpl_model, cfg.storage, source_summary=source_summary)
        try:
            renderer = MeshRenderer()
        except RendererUnavailableError as exc:  # a machine problem with a known fix: reported like a config error
            raise ConfigError(str(exc)) from exc
        render_line = renderer.description
    try:
        gallery_html, shown = _gallery_section(cfg, storage, out, body_model, renderer, assets)
    finally:
        if renderer is not None:
            renderer.release()
    sections = [
        ("overview", "Overview", _overview(out, source_note)),
        ("counts", "Counts", _counts_section(out, assets)),
        ("confidence", "Confidence", _confidence_section(out, assets)),
        ("occlusion", "Occlusion", _occlusion_section(out, assets)),
        ("boxes", "Box sizes", _box_section(out, assets)),
        ("body", "Shape and pose", _body_section(out, assets)),
        ("shards", "Shards", _shards_section(out, assets)),
        ("gallery", "Gallery", gallery_html),
    ]
    if evaluation is not None:
        sections.append(("evaluation", "Evaluation against ground truth", render_eval(evaluation, assets.add)))
    about = [
        ("report of", cfg.input.labels),
        ("gallery draw", f"{cfg.report.per_tier} per tier, seed {cfg.report.seed}"),
        ("body model", body_model.source if body_model else "–"),
        ("mesh renderer", render_line),
        ("distribution plots from", f"{out.rows.num_rows} of {out.n_rows} rows"),
        ("made by", f"dpmesh-report {pipelines.__version__}"),
    ]
    sections.append(("about", "About this report", html.table(["", ""], about)))
    page = html.page("dpmesh label report", cfg.input.labels, sections)
    assets.write(storage, cfg.output)
    index = safe_join(cfg.output, INDEX_NAME)
    storage.write_bytes(index, page.encode("utf-8"))  # last: a report with an index is complete
    return {
        "index": index,
        "assets": sorted(assets.files),
        "rows": out.n_rows,
        "tiers": dict(out.tier_counts),
        "gallery": shown,
        "gallery_left_out": dict(out.gallery_left_out),
        "body_model": body_model.source if body_model else None,
        "renderer": render_line,
        "evaluation": evaluation is not None,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def report(result: dict[str, Any], cfg: ReportJobConfig) -> str:
    """The closing lines: where the report is."""
    shown = ", ".join(f"{t} {n}" for t, n in result["gallery"].items()) or "none"
    return (
        "dpmesh-report\n"
        f"  rows                  {result['rows']}\n"
        f"  gallery per tier      {shown}\n"
        f"  files                 {len(result['assets']) + 1} in {result['elapsed_s']} s\n"
        f"  report                {result['index']}"
    )


main = hydra_app("dpmesh-report", "dpmesh_report", ReportJobConfig, run, report)


if __name__ == "__main__":
    main()

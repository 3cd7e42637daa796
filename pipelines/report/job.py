"""``dpmesh-report``: a static HTML report over a ``dpmesh-label`` output.

    dpmesh-report input.labels=<label output> output=<report folder> [report.per_tier=N report.seed=S]
                  [report.eval=<dpmesh-eval JSON>] [report.smpl_model=<npz>] [review=<n>] [storage=...] [runner=...]

writes ``<output>/index.html``, ``<output>/assets/`` (plots, gallery tiles) and ``<output>/label_stats.json`` (the
statistics the plots show): one folder that opens from disk, with no server and no network. ``review=<n>`` adds
``<output>/review.html``, a page to accept or reject ``n`` persons drawn stratified by confidence and occlusion
(`pipelines.report.review_section`), whose decisions ``dpmesh-refilter review=`` applies.

plan (summary, markers and the statistics they carry: one index object) -> the statistics of shards labeled before
markers carried them, computed shard by shard in a Beam step (`pipelines.report.steps`; none for outputs labeled
since) -> sections (from the merged statistics; the gallery reads only the rows and images it shows) -> finish.
The cost grows with the shards (one index entry each), not with the rows.

Hostile input: the launch refuses a negative ``report.seed`` and an ``output`` that is a file or overlaps an input
(`check_launch`), and an evaluation document that breaks its schema (`pipelines.eval.document`); rows whose
``sample_id`` or tier cannot name a file never enter the gallery's sample and are counted
(`pipelines.common.label_stats.gallery_problem`).
"""

import json
import logging
import time
from typing import Any

import pipelines
from pipelines.cli import hydra_app
from pipelines.common.label_set import read_summary
from pipelines.common.label_stats import StatsError
from pipelines.common.launch import resolve_launch
from pipelines.common.merged_stats import MergedStats
from pipelines.common.reviews import label_run_of
from pipelines.common.safe_paths import check_output_location
from pipelines.config import ConfigError, ReportJobConfig
from pipelines.report import html, sections
from pipelines.report.assets import Assets
from pipelines.report.data import read_shard_set_errors
from pipelines.report.eval_section import render_eval
from pipelines.report.finish import write_report
from pipelines.report.gallery_section import render_gallery
from pipelines.report.mesh import Body, resolve_body
from pipelines.report.plan import ReportPlan, plan_report
from pipelines.report.render import MeshRenderer, RendererUnavailableError
from pipelines.report.review_page import PAGE_NAME
from pipelines.report.review_section import render_review
from pipelines.report.steps import STATS_NAME, build_pipeline
from pipelines.storage import ObjectNotFoundError, Storage, join


logger = logging.getLogger(__name__)

APP = "dpmesh-report"


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


def check_launch_values(cfg: ReportJobConfig) -> None:
    """What the config alone can refuse (a dry run checks it too).

    Raises:
        ConfigError: one line naming the key.
    """
    if cfg.report.seed < 0:  # numpy's generators take seeds >= 0 only
        raise ConfigError(f"report.seed={cfg.report.seed} must be >= 0")


def check_launch(cfg: ReportJobConfig, storage: Storage) -> None:
    """What can be refused before anything is read or written: the draw's seed, and an output that is a file or
    overlaps an input (the report replaces files in its folder).

    Raises:
        ConfigError: one line naming the key.
    """
    check_launch_values(cfg)
    inputs = {
        "input.labels": cfg.input.labels,
        "input.shards": cfg.input.shards,
        "report.eval": cfg.report.eval,
        "report.smpl_model": cfg.report.smpl_model,
    }
    check_output_location(storage, cfg.output, inputs)


def _backfilled_stats(cfg: ReportJobConfig, storage: Storage, plan: ReportPlan) -> MergedStats:
    """The statistics of the shards whose markers carry none, computed by the Beam step and merged there."""
    launch = resolve_launch(APP, cfg.runner, units=len(plan.pending))
    with launch.pipeline() as p:
        build_pipeline(p, cfg.storage, plan.uri, plan.pending, cfg.output)
    try:
        return MergedStats.from_json(json.loads(storage.read_bytes(join(cfg.output, STATS_NAME))))
    except StatsError as exc:  # written by the step just now: a bug, not an input problem
        raise RuntimeError(f"the statistics step wrote unreadable statistics: {exc}") from exc


def run(cfg: ReportJobConfig) -> dict[str, Any]:
    """Writes the report of ``cfg.input.labels`` into ``cfg.output`` and returns what it holds (the launch plan of
    its Beam step on a dry run, which reads and writes nothing)."""
    if cfg.runner.dry_run:
        check_launch_values(cfg)
        launch = resolve_launch(APP, cfg.runner)
        return launch.plan(lambda p: build_pipeline(p, cfg.storage, cfg.input.labels, ["shard-000000"], cfg.output))
    started = time.monotonic()
    storage = Storage(cfg.storage)
    check_launch(cfg, storage)
    evaluation = _load_eval(storage, cfg.report.eval) if cfg.report.eval else None  # fail before the slow part
    plan = plan_report(storage, cfg.input.labels)
    stats = plan.stats
    if plan.pending:
        stats = stats.merge(_backfilled_stats(cfg, storage, plan))
    source_summary, source_note = _source_summary(storage, plan.summary)
    assets = Assets()
    body_model: Body | None = None
    renderer: MeshRenderer | None = None
    render_line = "off (report.render_mesh=false): keypoints only"
    if cfg.report.render_mesh:
        body_model = resolve_body(plan.summary, cfg.report.smpl_model, cfg.storage, source_summary=source_summary)
        try:
            renderer = MeshRenderer()
        except RendererUnavailableError as exc:  # a machine problem with a known fix: reported like a config error
            raise ConfigError(str(exc)) from exc
        render_line = renderer.description
    run = label_run_of(cfg.input.labels, plan.summary)
    pages: dict[str, str] = {}
    review: dict[str, Any] | None = None
    try:
        gallery_html, shown = render_gallery(cfg, storage, plan.summary, stats, body_model, renderer, assets)
        if cfg.review:
            pages[PAGE_NAME], review = render_review(
                cfg, storage, run, plan.summary, stats, body_model, renderer, assets
            )
            review["page"] = join(cfg.output, PAGE_NAME)
    finally:
        if renderer is not None:
            renderer.release()
    shard_errors = read_shard_set_errors(storage, plan.summary)
    page_sections = [
        ("overview", "Overview", sections.overview(plan, stats, source_note)),
        ("counts", "Counts", sections.counts(stats, shard_errors, assets)),
        ("confidence", "Confidence", sections.confidence(stats, assets)),
        ("occlusion", "Occlusion", sections.occlusion(stats, assets)),
        ("boxes", "Box sizes", sections.boxes(stats, assets)),
        ("body", "Shape and pose", sections.body(stats, assets)),
        ("shards", "Shards", sections.shards(plan, assets)),
        ("gallery", "Gallery", gallery_html),
    ]
    if evaluation is not None:
        page_sections.append(("evaluation", "Evaluation against ground truth", render_eval(evaluation, assets.add)))
    if review is not None:
        page_sections.append(("review", "Review", sections.review_link(PAGE_NAME, review)))
    about = [
        ("report of", cfg.input.labels),
        ("gallery draw", f"{cfg.report.per_tier} per tier, seed {cfg.report.seed}"),
        ("body model", body_model.source if body_model else "–"),
        ("mesh renderer", render_line),
        ("distribution plots from", f"the statistics of {stats.shards} shards ({stats.n_rows} rows)"),
        ("statistics computed by this report", f"{len(plan.pending)} shards"),
        ("made by", f"dpmesh-report {pipelines.__version__}"),
    ]
    page_sections.append(("about", "About this report", html.table(["", ""], about)))
    index = write_report(
        storage, cfg.output, "dpmesh label report", cfg.input.labels, page_sections, assets, stats, pages
    )
    return {
        "index": index,
        "assets": sorted(assets.files),
        "rows": stats.n_rows,
        "tiers": dict(stats.rows),
        "gallery": shown,
        "gallery_left_out": dict(stats.gallery_left_out),
        "statistics_computed": len(plan.pending),
        "body_model": body_model.source if body_model else None,
        "renderer": render_line,
        "evaluation": evaluation is not None,
        "review": review,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def report(result: dict[str, Any], cfg: ReportJobConfig) -> str:
    """The closing lines: where the report is."""
    shown = ", ".join(f"{t} {n}" for t, n in result["gallery"].items()) or "none"
    review = result.get("review")
    review_line = f"  review page           {review['page']} ({review['persons']} persons)\n" if review else ""
    return (
        "dpmesh-report\n"
        f"  rows                  {result['rows']}\n"
        f"  gallery per tier      {shown}\n"
        f"  files                 {len(result['assets']) + 1} in {result['elapsed_s']} s\n"
        + review_line
        + f"  report                {result['index']}"
    )


main = hydra_app("dpmesh-report", "dpmesh_report", ReportJobConfig, run, report)


if __name__ == "__main__":
    main()

"""``dpmesh-eval``: labels against ground-truth SMPL and/or people's reviews, and optionally a confidence calibration
fitted on them.

A Beam pipeline on the same runners as labeling (``runner=direct`` by default; ``dask``, ``dataflow``, ...), a
partitioned hash join with mergeable summaries, so memory stays bounded whatever the number of persons::

    driver: check ground truth (pass 1) -> list label files -> partition ground truth by key (pass 2, if > 1 bucket)
    Create(label groups) -> Reshuffle -> SplitByBucket (per group) -> GroupByBucket (file names only)
        -> JoinBuckets (per bucket: its ground truth + its label rows; errors vectorised; persons/part-*.parquet)
        -> MergeSummaries (sketches and bounded samples) -> WriteEvaluation (eval.json, eval.md, calibration)

With ``review=<file...>`` (`pipelines.eval.review_plan`: files read and checked on the driver, their label run
checked against the labels)::

    Create(one unit per shard a decision names) -> Reshuffle -> JoinReviewed (the shard's decided rows only)
        -> GatherReviewed -> WriteEvaluation's side input (eval_reviews.json); without ground truth, its main input

so without ground truth only the shards the reviews name are read (`pipelines.eval.review_join`).

See `pipelines.eval.plan` (the ground truth's partitions), `pipelines.eval.eval_shard` (the two per-unit steps),
`pipelines.eval.summary` (what is exact and what is estimated, with its bound) and `pipelines.eval.finish` (the
written files). ``runner.dry_run=true`` prints the launch plan and reads and writes nothing.

Hostile input: `check_outputs` refuses, at launch, an ``output`` that is a file or overlaps an input and a
``calibration.output`` inside an input or over a file that is not a calibration; ground-truth rows that cannot be used
are counted and left out (`pipelines.eval.ground_truth`), a repeated ground-truth id or a 3DPW pickle that would run
code is a one-line configuration error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dpmesh_core.calibration import CalibrationError, ConfidenceCalibration
from pipelines.cli import hydra_app
from pipelines.common.launch import resolve_launch
from pipelines.common.safe_paths import check_output_location
from pipelines.config import ConfigError, EvalJobConfig
from pipelines.eval.buckets import SAME_IMAGE
from pipelines.eval.eval_shard import PERSONS_FOLDER, EvalSettings, JoinBucketFn, SplitLabelsFn
from pipelines.eval.finish import (
    CALIBRATION_NAME,
    EVAL_JSON,
    EVAL_MD,
    EVAL_PERSONS,
    EVAL_REVIEWS,
    FinishSettings,
    MergeSummaries,
    WriteEvaluationFn,
    WriteReviewsFn,
    read_run_record,
)
from pipelines.eval.meshes import BodyModelFiles, load_h36m_regressor, load_meshes
from pipelines.eval.plan import (
    WORK_FOLDER,
    EvalPlan,
    GroundTruthPlan,
    LabelFile,
    LabelGroup,
    list_label_files,
    plan_evaluation,
)
from pipelines.eval.result import format_markdown
from pipelines.eval.review_join import GatherReviewed, JoinReviewedFn
from pipelines.eval.review_plan import ReviewPlan, plan_reviews
from pipelines.eval.review_rates import format_reviews_markdown
from pipelines.eval.summary import SummaryLimits
from pipelines.storage import Storage, join
from pipelines.storage.uri import parse_uri


__all__ = [
    "CALIBRATION_NAME",
    "EVAL_JSON",
    "EVAL_MD",
    "EVAL_PERSONS",
    "EVAL_REVIEWS",
    "build_pipeline",
    "main",
    "report",
    "run",
]

logger = logging.getLogger(__name__)

APP = "dpmesh-eval"


def body_model_files(cfg: EvalJobConfig) -> BodyModelFiles | None:
    """The SMPL files the config names (None without ``body_model``)."""
    if cfg.body_model is None:
        return None
    return BodyModelFiles(cfg.body_model, cfg.body_model_male, cfg.body_model_female)


def check_outputs(cfg: EvalJobConfig, storage: Storage) -> None:
    """At launch, before anything is read or written: ``output`` is a folder that overlaps no input, and
    ``calibration.output`` (a file) is new, outside every input, or an earlier calibration file.

    Raises:
        ConfigError: naming the key, the value and the input it overlaps.
    """
    inputs = {"input.labels": cfg.input.labels, "input.ground_truth": cfg.input.ground_truth}
    inputs |= {f"review[{i}]": uri for i, uri in enumerate(cfg.review)}
    check_output_location(storage, cfg.output, inputs)
    uri = cfg.calibration.output
    if not cfg.fit_confidence or not uri:
        return
    parsed = parse_uri(uri)
    if parsed.scheme == "file" and os.path.isdir(parsed.key):
        raise ConfigError(f"calibration.output={uri!r} is a folder: give the calibration file's path")
    try:
        existing = storage.read_bytes(uri)
    except FileNotFoundError:  # a new file: it must not land inside an input
        check_output_location(storage, uri, inputs, key="calibration.output")
        return
    # An existing file is replaced only when it is an earlier calibration: no input of this job is one (labels and
    # ground truth are Parquet or pickles), and nothing else is overwritten by mistake.
    try:
        ConfidenceCalibration.from_json_bytes(existing)
    except CalibrationError as exc:
        raise ConfigError(
            f"calibration.output={uri!r} is an existing file that is not a confidence calibration ({exc}); it is "
            "never overwritten: give a new path"
        ) from exc


def build_pipeline(
    p: beam.Pipeline, cfg: EvalJobConfig, plan: EvalPlan | None, run_id: str, reviews: ReviewPlan | None = None
) -> None:
    """Adds the evaluation of ``plan`` (None: no ground truth) and the measurement of ``reviews`` (None: no review)
    to ``p`` (module docstring)."""
    reviewed = None
    if reviews is not None:
        reviewed = (
            p
            | "ListReviewedShards" >> beam.Create(reviews.units)
            # Spreads the shards over workers (Create puts them in one bundle).
            | "SpreadReviewedShards" >> beam.Reshuffle()
            | "JoinReviewed" >> beam.ParDo(JoinReviewedFn(cfg.storage))
            | "GatherReviewed" >> beam.CombineGlobally(GatherReviewed())
        )
    # The finish step holds the plan's figures, not its units (the decisions, already joined on workers).
    finish_reviews = None if reviews is None else dataclasses.replace(reviews, units=())
    if plan is None:
        finish = _finish_settings(cfg, None, run_id, finish_reviews)
        _ = reviewed | "WriteEvaluation" >> beam.ParDo(WriteReviewsFn(finish))
        return
    gt = plan.ground_truth
    calibration_sample = cfg.calibration.max_persons if cfg.fit_confidence else 0
    limits = SummaryLimits(cfg.quality_sample, calibration_sample, cfg.persons_json_max)
    settings = EvalSettings(
        storage=cfg.storage,
        output=cfg.output,
        work=plan.work,
        buckets=gt.buckets,
        rule=gt.rule,
        ground_truth_parts=gt.parts,
        body_models=body_model_files(cfg),
        h36m_regressor=cfg.h36m_regressor,
        limits=limits,
    )
    finish = _finish_settings(cfg, plan, run_id, finish_reviews)
    merged = (
        p
        | "ListLabelGroups" >> beam.Create(plan.groups)
        # Spreads groups over workers (Create puts them in one bundle); a barrier before any work, not after.
        | "SpreadGroups" >> beam.Reshuffle()
        | "SplitByBucket" >> beam.ParDo(SplitLabelsFn(settings))
        # The join's one shuffle: (bucket, file names) records, never rows.
        | "GroupByBucket" >> beam.GroupByKey()
        | "JoinBuckets" >> beam.ParDo(JoinBucketFn(settings))
        | "MergeSummaries" >> beam.CombineGlobally(MergeSummaries(limits))
    )
    side = {} if reviewed is None else {"reviewed": beam.pvalue.AsSingleton(reviewed)}
    _ = merged | "WriteEvaluation" >> beam.ParDo(WriteEvaluationFn(finish), **side)


def _finish_settings(
    cfg: EvalJobConfig, plan: EvalPlan | None, run_id: str, reviews: ReviewPlan | None
) -> FinishSettings:
    """What the last step needs (``plan`` None: no ground truth; the work folder is then the reviews' own)."""
    return FinishSettings(
        storage=cfg.storage,
        output=cfg.output,
        work=plan.work if plan is not None else join(cfg.output, WORK_FOLDER, run_id),
        run_id=run_id,
        labels=cfg.input.labels,
        ground_truth=cfg.input.ground_truth,
        ground_truth_persons=0 if plan is None else plan.ground_truth.persons,
        ground_truth_problems={"counts": {}, "examples": []} if plan is None else plan.ground_truth.problems,
        error_metric=cfg.error_metric,
        sparsification_steps=cfg.sparsification_steps,
        fit_confidence=cfg.fit_confidence,
        good_error_mm=cfg.calibration.good_error_mm,
        calibration_output=cfg.calibration.output,
        calibration_max_persons=cfg.calibration.max_persons,
        reviews=reviews,
    )


def _stand_in_plans(cfg: EvalJobConfig) -> tuple[EvalPlan | None, ReviewPlan | None]:
    """What a dry run builds the pipeline from (it reads no storage): one label file, one bucket; no review unit."""
    label = LabelFile(join(cfg.input.labels, "annotations", "shard-000000.parquet"), "shard-000000", 0, 0)
    reviews = ReviewPlan((), {}, None, {}) if cfg.review else None
    if not cfg.input.ground_truth:
        return None, reviews
    gt = GroundTruthPlan(cfg.input.ground_truth, (cfg.input.ground_truth,), 0, {"counts": {}, "examples": []},
                         SAME_IMAGE, 1, {0: (cfg.input.ground_truth,)})  # fmt: skip
    return EvalPlan((LabelGroup(0, (label,)),), gt, join(cfg.output, WORK_FOLDER, "dry-run")), reviews


def _clear_persons(storage: Storage, output: str) -> None:
    """Removes an earlier run's ``persons/*.parquet`` (with another bucket count its files would not all be
    replaced)."""
    for info in list(storage.list(join(output, PERSONS_FOLDER) + "/")):
        if info.uri.endswith(".parquet"):
            storage.delete(info.uri)


def run(cfg: EvalJobConfig, *, options: PipelineOptions | None = None) -> dict[str, Any]:
    """Evaluates, writes ``eval.json`` / ``eval.md`` / ``persons/`` (with ground truth), ``eval_reviews.json`` (with
    ``review=``) and the calibration; returns the ``eval.json`` document, with the ``eval_reviews.json`` one under
    ``reviews`` when there are reviews (without ground truth, only ``{"reviews": ...}``); the launch plan on a dry run.

    plan (ground truth checked and partitioned, label files; review files checked against the labels) -> resolve the
    launch -> execute -> read the result.

    Raises:
        ConfigError: a refused input or output (module docstring), or no evaluation (no label rows, nothing matched,
            no computable metric, no reviewed person found, a calibration that cannot be fitted), with the reason.
    """
    run_id = uuid.uuid4().hex[:12]
    if cfg.runner.dry_run:  # build, print and return the launch plan; touch no storage, submit nothing
        launch = resolve_launch(APP, cfg.runner)
        stand_in, stand_in_reviews = _stand_in_plans(cfg)
        return launch.plan(lambda p: build_pipeline(p, cfg, stand_in, run_id, stand_in_reviews))
    storage = Storage(cfg.storage)
    check_outputs(cfg, storage)
    # The body models and regressor are read here too, so a missing or bad file fails at launch, not on a worker.
    meshes = load_meshes(storage, body_model_files(cfg))
    load_h36m_regressor(storage, cfg.h36m_regressor, meshes.num_vertices if meshes else 0)
    work = join(cfg.output, WORK_FOLDER, run_id)
    plan = None
    if cfg.input.ground_truth:
        plan = plan_evaluation(
            storage, cfg.input.labels, cfg.input.ground_truth, cfg.input.include_rejected, cfg.bucket_persons, work
        )
    reviews = None
    if cfg.review:
        # Both folders whatever input.include_rejected says: the review page drew from both.
        label_files = list_label_files(storage, cfg.input.labels, include_rejected=True)
        if not label_files:
            raise ConfigError(f"input.labels={cfg.input.labels!r} holds no label rows (annotations/, rejected/)")
        reviews = plan_reviews(storage, cfg.input.labels, cfg.review, label_files)
    _clear_persons(storage, cfg.output)
    units = (len(plan.groups) if plan else 0) + (len(reviews.units) if reviews else 0)
    launch = resolve_launch(APP, cfg.runner, units=units)
    with launch.pipeline(options) as p:
        build_pipeline(p, cfg, plan, run_id, reviews)
    record = read_run_record(storage, cfg.output, run_id)
    if record["outcome"] != "ok":
        raise ConfigError(record["message"])
    doc: dict[str, Any] = json.loads(storage.read_bytes(join(cfg.output, EVAL_JSON))) if plan else {}
    if reviews is not None:
        doc["reviews"] = json.loads(storage.read_bytes(join(cfg.output, EVAL_REVIEWS)))
    return doc


def _calibration_line(cal: dict[str, Any]) -> str:
    return (
        f"wrote the confidence calibration {cal['uri']} (sha256 {cal['sha256'][:12]}; {cal['target']}); use it with "
        f"dpmesh-refilter / dpmesh-label filter.calibration={cal['uri']}"
    )


def report(doc: dict[str, Any], cfg: EvalJobConfig) -> str:
    """The printed end-of-run tables and where the files are (``doc``: what `run` returns)."""
    lines = []
    if "format" in doc:  # the ground-truth evaluation
        lines += [
            format_markdown(doc),
            "",
            f"wrote {join(cfg.output, EVAL_JSON)}, {join(cfg.output, EVAL_MD)} and every matched person's errors in "
            f"{join(cfg.output, PERSONS_FOLDER)}/",
        ]
        if doc.get("calibration"):
            lines.append(_calibration_line(doc["calibration"]))
    reviews = doc.get("reviews")
    if reviews:
        lines += [
            *([""] if lines else []),
            format_reviews_markdown(reviews),
            "",
            f"wrote {join(cfg.output, EVAL_REVIEWS)} and {join(cfg.output, EVAL_MD)}",
        ]
        if reviews.get("calibration"):
            lines.append(_calibration_line(reviews["calibration"]))
    return "\n".join(lines)


main = hydra_app("dpmesh-eval", "dpmesh_eval", EvalJobConfig, run, report)


if __name__ == "__main__":
    main()

"""``dpmesh-eval``: labels against ground-truth SMPL, and optionally a confidence calibration fitted on them.

A Beam pipeline on the same runners as labeling (``runner=direct`` by default; ``dask``, ``dataflow``, ...), a
partitioned hash join with mergeable summaries, so memory stays bounded whatever the number of persons::

    driver: check ground truth (pass 1) -> list label files -> partition ground truth by key (pass 2, if > 1 bucket)
    Create(label groups) -> Reshuffle -> SplitByBucket (per group) -> GroupByBucket (file names only)
        -> JoinBuckets (per bucket: its ground truth + its label rows; errors vectorised; persons/part-*.parquet)
        -> MergeSummaries (sketches and bounded samples) -> WriteEvaluation (eval.json, eval.md, calibration)

See `pipelines.eval.plan` (the ground truth's partitions), `pipelines.eval.eval_shard` (the two per-unit steps),
`pipelines.eval.summary` (what is exact and what is estimated, with its bound) and `pipelines.eval.finish` (the
written files). ``runner.dry_run=true`` prints the launch plan and reads and writes nothing.

Hostile input: `check_outputs` refuses, at launch, an ``output`` that is a file or overlaps an input and a
``calibration.output`` inside an input or over a file that is not a calibration; ground-truth rows that cannot be used
are counted and left out (`pipelines.eval.ground_truth`), a repeated ground-truth id or a 3DPW pickle that would run
code is a one-line configuration error.
"""

from __future__ import annotations

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
    FinishSettings,
    MergeSummaries,
    WriteEvaluationFn,
    read_run_record,
)
from pipelines.eval.meshes import BodyModelFiles, load_h36m_regressor, load_meshes
from pipelines.eval.plan import WORK_FOLDER, EvalPlan, GroundTruthPlan, LabelFile, LabelGroup, plan_evaluation
from pipelines.eval.result import format_markdown
from pipelines.eval.summary import SummaryLimits
from pipelines.storage import Storage, join
from pipelines.storage.uri import parse_uri


__all__ = ["CALIBRATION_NAME", "EVAL_JSON", "EVAL_MD", "EVAL_PERSONS", "build_pipeline", "main", "report", "run"]

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


def build_pipeline(p: beam.Pipeline, cfg: EvalJobConfig, plan: EvalPlan, run_id: str) -> None:
    """Adds the evaluation of ``plan`` to ``p`` (module docstring)."""
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
    finish = FinishSettings(
        storage=cfg.storage,
        output=cfg.output,
        work=plan.work,
        run_id=run_id,
        labels=cfg.input.labels,
        ground_truth=cfg.input.ground_truth,
        ground_truth_persons=gt.persons,
        ground_truth_problems=gt.problems,
        error_metric=cfg.error_metric,
        sparsification_steps=cfg.sparsification_steps,
        fit_confidence=cfg.fit_confidence,
        good_error_mm=cfg.calibration.good_error_mm,
        calibration_output=cfg.calibration.output,
    )
    _ = (
        p
        | "ListLabelGroups" >> beam.Create(plan.groups)
        # Spreads groups over workers (Create puts them in one bundle); a barrier before any work, not after.
        | "SpreadGroups" >> beam.Reshuffle()
        | "SplitByBucket" >> beam.ParDo(SplitLabelsFn(settings))
        # The join's one shuffle: (bucket, file names) records, never rows.
        | "GroupByBucket" >> beam.GroupByKey()
        | "JoinBuckets" >> beam.ParDo(JoinBucketFn(settings))
        | "MergeSummaries" >> beam.CombineGlobally(MergeSummaries(limits))
        | "WriteEvaluation" >> beam.ParDo(WriteEvaluationFn(finish))
    )


def _stand_in_plan(cfg: EvalJobConfig) -> EvalPlan:
    """What a dry run builds the pipeline from (it reads no storage): one label file, one bucket."""
    label = LabelFile(join(cfg.input.labels, "annotations", "shard-000000.parquet"), "shard-000000", 0, 0)
    gt = GroundTruthPlan(cfg.input.ground_truth, (cfg.input.ground_truth,), 0, {"counts": {}, "examples": []},
                         SAME_IMAGE, 1, {0: (cfg.input.ground_truth,)})  # fmt: skip
    return EvalPlan((LabelGroup(0, (label,)),), gt, join(cfg.output, WORK_FOLDER, "dry-run"))


def _clear_persons(storage: Storage, output: str) -> None:
    """Removes an earlier run's ``persons/*.parquet`` (with another bucket count its files would not all be
    replaced)."""
    for info in list(storage.list(join(output, PERSONS_FOLDER) + "/")):
        if info.uri.endswith(".parquet"):
            storage.delete(info.uri)


def run(cfg: EvalJobConfig, *, options: PipelineOptions | None = None) -> dict[str, Any]:
    """Evaluates, writes ``eval.json`` / ``eval.md`` / ``persons/`` (and the calibration); returns the ``eval.json``
    document (the launch plan on a dry run).

    plan (ground truth checked and partitioned, label files) -> resolve the launch -> execute -> read the result.

    Raises:
        ConfigError: a refused input or output (module docstring), or no evaluation (no label rows, nothing matched,
            no computable metric, a calibration that cannot be fitted), with the reason.
    """
    run_id = uuid.uuid4().hex[:12]
    if cfg.runner.dry_run:  # build, print and return the launch plan; touch no storage, submit nothing
        launch = resolve_launch(APP, cfg.runner)
        return launch.plan(lambda p: build_pipeline(p, cfg, _stand_in_plan(cfg), run_id))
    storage = Storage(cfg.storage)
    check_outputs(cfg, storage)
    # The body models and regressor are read here too, so a missing or bad file fails at launch, not on a worker.
    meshes = load_meshes(storage, body_model_files(cfg))
    load_h36m_regressor(storage, cfg.h36m_regressor, meshes.num_vertices if meshes else 0)
    work = join(cfg.output, WORK_FOLDER, run_id)
    plan = plan_evaluation(
        storage, cfg.input.labels, cfg.input.ground_truth, cfg.input.include_rejected, cfg.bucket_persons, work
    )
    _clear_persons(storage, cfg.output)
    launch = resolve_launch(APP, cfg.runner, units=len(plan.groups))
    with launch.pipeline(options) as p:
        build_pipeline(p, cfg, plan, run_id)
    record = read_run_record(storage, cfg.output, run_id)
    if record["outcome"] != "ok":
        raise ConfigError(record["message"])
    doc: dict[str, Any] = json.loads(storage.read_bytes(join(cfg.output, EVAL_JSON)))
    return doc


def report(doc: dict[str, Any], cfg: EvalJobConfig) -> str:
    """The printed end-of-run table and where the files are."""
    persons = join(cfg.output, PERSONS_FOLDER)
    lines = [
        format_markdown(doc),
        "",
        f"wrote {join(cfg.output, EVAL_JSON)}, {join(cfg.output, EVAL_MD)} and every matched person's errors in "
        f"{persons}/",
    ]
    if doc.get("calibration"):
        cal = doc["calibration"]
        lines.append(
            f"wrote the confidence calibration {cal['uri']} (sha256 {cal['sha256'][:12]}); use it with "
            f"dpmesh-refilter / dpmesh-label filter.calibration={cal['uri']}"
        )
    return "\n".join(lines)


main = hydra_app("dpmesh-eval", "dpmesh_eval", EvalJobConfig, run, report)


if __name__ == "__main__":
    main()

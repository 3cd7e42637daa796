"""``dpmesh-label``: label every person in WebDataset shards with DPMesh, score, filter, write Parquet.

Per input shard ``shard-NNNNNN`` it writes ``annotations/``, ``rejected/`` and ``errors/`` Parquet, then
``_done/shard-NNNNNN.json`` last; a rerun skips shards with a marker of the same config. The run ends
with ``_summary.json``. See README "Labeling".
"""

import json
import logging
import re
import time
from dataclasses import replace
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

import pipelines
from dpmesh_core.confidence import FilterThresholds, default_thresholds, no_thresholds, strict_thresholds
from pipelines.cli import hydra_app
from pipelines.config import (
    ConfigError,
    FilterConfig,
    FilterPreset,
    LabelJobConfig,
    RunnerName,
    config_hash,
    config_to_dict,
)
from pipelines.label.progress import ProgressReporter, build_summary, format_summary, read_markers
from pipelines.label.model_handler import DPMeshModelHandler, check_device
from pipelines.options import inference_resource_hints, pipeline_options
from pipelines.storage import Storage, join
from pipelines.label.shard_steps import (
    ERROR,
    ERRORS,
    REPORT,
    REPORTS,
    ReadShardFn,
    ScorePersonFn,
    WriteShardLabelsFn,
    failed_batch_to_errors,
    shard_name_of,
)
from schemas import KeypointSource


logger = logging.getLogger(__name__)

SHARD_FILE = re.compile(r"shard-\d{6}\.tar$")
SUMMARY_NAME = "_summary.json"


def filter_thresholds(cfg: FilterConfig) -> FilterThresholds:
    """The preset's thresholds with the explicitly set ones replaced.

    Raises:
        ConfigError: if an override is out of range (the message names it).
    """
    presets = {
        FilterPreset.default: default_thresholds,
        FilterPreset.strict: strict_thresholds,
        FilterPreset.off: no_thresholds,
    }
    try:
        return replace(presets[cfg.preset](), **cfg.overrides())
    except ValueError as exc:
        raise ConfigError(str(exc).replace("FilterThresholds.", "filter.")) from exc


def run_info(cfg: LabelJobConfig) -> dict[str, Any]:
    """What markers and the summary record about the run (no secrets: configs hold none)."""
    return {"pipeline_version": pipelines.__version__, "config_hash": config_hash(cfg)}


def list_shards(storage: Storage, shards: str) -> list[str]:
    """Every ``shard-NNNNNN.tar`` under a directory/prefix, or matching a glob, sorted; or the one shard named."""
    if SHARD_FILE.search(shards) and storage.exists(shards):
        return [shards]
    objects = storage.glob(shards) if any(c in shards for c in "*?[") else storage.list(shards.rstrip("/") + "/")
    return sorted(o.uri for o in objects if SHARD_FILE.search(o.uri))


def plan_shards(cfg: LabelJobConfig, storage: Storage) -> tuple[list[str], list[str]]:
    """``(all shards, shards to label)``: shards with a marker of this config are skipped unless ``overwrite``.

    Raises:
        ConfigError: no shards; or markers of a different config in the output without ``overwrite``.
    """
    shards = list_shards(storage, cfg.input.shards)
    if not shards:
        raise ConfigError(f"input.shards={cfg.input.shards!r} holds no shard-NNNNNN.tar files")
    if cfg.overwrite:
        return shards, shards
    markers = read_markers(storage, cfg.output)
    current = config_hash(cfg)
    foreign = sorted(name for name, m in markers.items() if m.get("config_hash") != current)
    if foreign:
        raise ConfigError(
            f"output={cfg.output!r} holds labels made with another config (e.g. {foreign[0]}); "
            "use another output, or overwrite=true to relabel"
        )
    return shards, [s for s in shards if shard_name_of(s) not in markers]


def build_pipeline(
    p: beam.Pipeline, cfg: LabelJobConfig, shards: list[str], *, handler: ModelHandler | None = None
) -> None:
    """Adds the labeling steps for ``shards`` to ``p``; ``handler`` replaces the DPMesh handler (tests)."""
    hints = inference_resource_hints(cfg.runner)  # right fitting on Dataflow: model steps on GPU workers only
    handler = handler or DPMeshModelHandler(
        cfg.model, cfg.storage, flip_consistency=cfg.filter.flip_consistency, resource_hints=hints
    )
    shard_uris = p | "ListShards" >> beam.Create(shards) | "SpreadShards" >> beam.Reshuffle()
    if cfg.detector.detects:
        # detector=vitpose|auto: find people first; the reader then takes (shard URI, its detections).
        from pipelines.label.detection.transforms import DetectPersons

        shard_uris = shard_uris | "FindPeople" >> DetectPersons(
            cfg.storage, cfg.detector, cfg.input.max_image_pixels, resource_hints=hints
        )
    read = shard_uris | "ReadShards" >> beam.ParDo(
        ReadShardFn(
            cfg.storage,
            cfg.input.max_image_pixels,
            KeypointSource.ANNOTATIONS.value,
            cfg.model.batch_size,
            detector=cfg.detector.name.value,
        )
    ).with_outputs(ERRORS, REPORTS, main="batches")
    results, failures = (
        read.batches
        | "KeyByBatchId" >> beam.Map(lambda person_batch: (person_batch.batch_id, person_batch))
        | "DPMesh" >> RunInference(KeyedModelHandler(handler)).with_exception_handling()
    )
    scored = results | "ScoreAndFilter" >> beam.ParDo(ScorePersonFn(filter_thresholds(cfg.filter)))
    failed = failures.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_to_errors)
    errors = read[ERRORS] | "TagErrors" >> beam.MapTuple(lambda shard, row: (shard, (ERROR, row)))
    reports = read[REPORTS] | "TagReports" >> beam.MapTuple(lambda shard, report: (shard, (REPORT, report)))
    _ = (
        (scored, failed, errors, reports)
        | "AllByShard" >> beam.Flatten()
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardLabelsFn(cfg.storage, cfg.output, run_info(cfg)))
    )


def run(
    cfg: LabelJobConfig, *, options: PipelineOptions | None = None, handler: ModelHandler | None = None
) -> dict[str, Any]:
    """Labels every pending shard, writes and returns the run summary (the launch plan on a dry run)."""
    if cfg.runner.dry_run:  # build, print and return the launch plan; touch no storage, submit nothing
        from pipelines.launch_plan import print_launch_plan

        return print_launch_plan(
            "dpmesh-label", cfg, lambda p: build_pipeline(p, cfg, [cfg.input.shards], handler=handler)
        )
    if cfg.runner.name in (RunnerName.direct, RunnerName.portable):
        check_device(cfg.model)  # a local run must see its GPU; remote drivers usually have none
    thresholds = filter_thresholds(cfg.filter)
    storage = Storage(cfg.storage)
    shards, pending = plan_shards(cfg, storage)
    logger.info("%d shards, %d to label, %d already done", len(shards), len(pending), len(shards) - len(pending))
    started = time.monotonic()
    waves = _waves(pending, cfg.wave_size)
    with ProgressReporter(storage, cfg.output, [shard_name_of(s) for s in pending], cfg.progress_interval_s):
        for number, wave in enumerate(waves, start=1):
            with beam.Pipeline(options=options or pipeline_options(cfg.runner, job_name="dpmesh-label")) as p:
                build_pipeline(p, cfg, wave, handler=handler)
            logger.info("wave %d/%d done (%d shards)", number, len(waves), len(wave))
    elapsed = time.monotonic() - started
    markers = read_markers(storage, cfg.output)
    config = {k: v for k, v in config_to_dict(cfg).items() if k in ("input", "output", "model", "filter", "detector")}
    summary = build_summary(
        markers=markers,
        shards_total=[shard_name_of(s) for s in shards],
        processed=[shard_name_of(s) for s in pending],
        elapsed_s=elapsed,
        run_info={**run_info(cfg), "runner": cfg.runner.name.value, "config": config},
        thresholds=thresholds,
    )
    storage.write_bytes(join(cfg.output, SUMMARY_NAME), json.dumps(summary, indent=1, sort_keys=True).encode())
    return summary


def _waves(shards: list[str], wave_size: int) -> list[list[str]]:
    """``shards`` in consecutive waves of ``wave_size`` (all in one wave for 0)."""
    size = wave_size or max(1, len(shards))
    return [shards[i : i + size] for i in range(0, len(shards), size)]


main = hydra_app(
    "dpmesh-label", "dpmesh_label", LabelJobConfig, run, lambda summary, cfg: format_summary(summary, cfg.output)
)


if __name__ == "__main__":
    main()

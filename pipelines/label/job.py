"""``dpmesh-label``: label every person in WebDataset shards with DPMesh, score, filter, write Parquet.

Per input shard ``shard-NNNNNN`` it writes ``annotations/``, ``rejected/`` and ``errors/`` Parquet, then
``_done/shard-NNNNNN.json`` last; a rerun skips shards whose marker records the same shard and config. The graph
is one job, whatever the size of the input::

    Create(shard tasks) -> Reshuffle -> LabelShards (read, detect, batch, infer, score, write, marker; per shard)
                                     -> Finish (indexed marker fields -> marker index, _summary.json)

Nothing waits for other shards before a shard is committed: the only barrier feeds the summary. The labels follow
the shard set's live samples: on a grown set only new shards are labeled, and shards with samples retired since are
updated from their rows without the model (:mod:`pipelines.label.update`). See README "Labeling" and "Growing a
corpus".
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dpmesh_core.calibration import ConfidenceCalibration
from pipelines.cli import hydra_app
from pipelines.common.intent import record_intent
from pipelines.common.label_filter import calibration_lineage, filter_thresholds, load_calibration
from pipelines.common.label_set import SUMMARY_NAME
from pipelines.common.label_summary import format_summary
from pipelines.common.label_units import ShardTask
from pipelines.common.launch import Launch, resolve_launch
from pipelines.common.safe_paths import check_output_location
from pipelines.config import (
    Device,
    LabelJobConfig,
    RunnerName,
    config_hash,
)
from pipelines.label.finish import run_info, write_summary
from pipelines.label.label_shard import LabelSettings, LabelShardFn
from pipelines.label.plan import LabelPlan, plan_shards
from pipelines.label.progress import ProgressReporter
from pipelines.storage import Storage, join


if TYPE_CHECKING:
    from pipelines.label.detection.handlers import KeypointHandler, PersonDetectorHandler
    from pipelines.label.model_handler import DPMeshModelHandler


logger = logging.getLogger(__name__)


APP = "dpmesh-label"


def model_devices(cfg: LabelJobConfig) -> dict[str, Device]:
    """The device of every model the run loads: DPMesh, and the detection models when persons are detected."""
    return {"model": cfg.model.device, **({"detector": cfg.detector.device} if cfg.detector.detects else {})}


# The model stack (torch, diffusers, transformers) is imported where a real model is first needed, not with this
# module: launch checks answer in about a second, and handlers given by the caller (test doubles) keep the
# worker processes free of it.
def _model_handler(cfg: LabelJobConfig, hints: dict[str, str]) -> DPMeshModelHandler:
    from pipelines.label.model_handler import DPMeshModelHandler

    return DPMeshModelHandler(
        cfg.model, cfg.storage, flip_consistency=cfg.filter.flip_consistency, resource_hints=hints
    )


def _detector_handlers(cfg: LabelJobConfig, hints: dict[str, str]) -> tuple[PersonDetectorHandler, KeypointHandler]:
    from pipelines.label.detection.handlers import KeypointHandler, PersonDetectorHandler

    return PersonDetectorHandler(cfg.detector, cfg.storage, hints), KeypointHandler(cfg.detector, cfg.storage, hints)


def _check_local_devices(cfg: LabelJobConfig) -> None:
    """Fails at launch (one line naming the key) when a configured GPU is not visible to this process."""
    from pipelines.common.torch_device import checked_device

    checked_device(cfg.model.device, "model.device")
    if cfg.detector.detects:
        checked_device(cfg.detector.device, "detector.device")


def build_pipeline(
    p: beam.Pipeline,
    cfg: LabelJobConfig,
    plan: LabelPlan,
    launch: Launch,
    calibration: ConfidenceCalibration | None,
    *,
    handler: DPMeshModelHandler | None = None,
    detector_handlers: tuple[PersonDetectorHandler, KeypointHandler] | None = None,
    started_at: float | None = None,
) -> None:
    """Adds the labeling steps for ``plan.pending`` to ``p``; the handlers replace the real ones (tests).

    ``launch.hints`` go on the labeling step (right fitting on Dataflow: only it runs on GPU workers);
    ``calibration`` is the one ``run`` loaded (None on a dry run, which reads no storage).
    """
    hints = launch.hints
    handler = handler or _model_handler(cfg, hints)
    detect = None
    if cfg.detector.detects:
        detect = detector_handlers or _detector_handlers(cfg, hints)
    lineage = calibration_lineage(calibration, cfg.filter.calibration)  # its sha256 in every file, marker, summary
    settings = LabelSettings(
        storage=cfg.storage,
        output=cfg.output,
        run_info={**run_info(cfg), **lineage},
        thresholds=filter_thresholds(cfg.filter),
        max_image_pixels=cfg.input.max_image_pixels,
        batch_size=cfg.model.batch_size,
        prefetch_batches=cfg.prefetch_batches,
        detector=cfg.detector,
        calibration=calibration,
        crop_mode=cfg.input.crop_mode,
        prep_threads=cfg.input.prep_threads,
        overwrite=cfg.overwrite,
    )
    label = beam.ParDo(LabelShardFn(settings, handler, *(detect or ())))
    if hints:
        label = label.with_resource_hints(**hints)
    labeled = (
        p
        | "ListShards" >> beam.Create(plan.pending)
        # Spreads shards over workers (Create puts them in one bundle); a barrier before any work, not after.
        | "SpreadShards" >> beam.Reshuffle()
        | "LabelShards" >> label
    )
    started_at = time.time() if started_at is None else started_at
    shards_total = [t.name for t in plan.shards]
    _ = labeled | "Finish" >> write_summary(cfg, shards_total, lineage, settings.thresholds, started_at)


def run(
    cfg: LabelJobConfig,
    *,
    options: PipelineOptions | None = None,
    handler: DPMeshModelHandler | None = None,
    detector_handlers: tuple[PersonDetectorHandler, KeypointHandler] | None = None,
) -> dict[str, Any]:
    """Labels every pending shard in one pipeline run; returns the run summary (the launch plan on a dry run).

    plan (shards, pending) -> resolve the launch -> execute -> read the summary the pipeline wrote.
    """
    if cfg.runner.dry_run:  # build, print and return the launch plan; touch no storage, submit nothing
        launch = resolve_launch(APP, cfg.runner, devices=model_devices(cfg))
        stand_in = [ShardTask(cfg.input.shards, "shard-000000", {"tar_bytes": 0, "tar_sha1": None})]
        return launch.plan(
            lambda p: build_pipeline(p, cfg, LabelPlan(stand_in, stand_in), launch, None, handler=handler)
        )
    if cfg.runner.name in (RunnerName.direct, RunnerName.portable):
        _check_local_devices(cfg)  # a local run must see its GPU; remote drivers usually have none
    storage = Storage(cfg.storage)
    inputs = {"input.shards": cfg.input.shards, "filter.calibration": cfg.filter.calibration}
    check_output_location(storage, cfg.output, inputs)  # before anything is read or written
    filter_thresholds(cfg.filter)  # bad overrides fail here, before anything runs
    calibration = load_calibration(cfg.filter, cfg.storage)  # and a missing or invalid calibration file
    plan = plan_shards(cfg, storage, calibration.sha256 if calibration else None)
    done = len(plan.shards) - len(plan.pending)
    to_label = len(plan.pending) - len(plan.updates)
    logger.info(
        "%d shards, %d to label, %d to update to the live set (no model), %d already done",
        len(plan.shards), to_label, len(plan.updates), done,
    )  # fmt: skip
    started_at = time.time()
    pending_names = [t.name for t in plan.pending]
    launch = resolve_launch(APP, cfg.runner, units=len(plan.pending), devices=model_devices(cfg))
    record_intent(storage, cfg.output, APP, config_hash(cfg))  # before the first shard's files
    progress = ProgressReporter(storage, cfg.output, pending_names, cfg.progress_interval_s)
    with progress, launch.pipeline(options) as p:
        build_pipeline(
            p, cfg, plan, launch, calibration, handler=handler, detector_handlers=detector_handlers,
            started_at=started_at,
        )  # fmt: skip
    summary: dict[str, Any] = json.loads(storage.read_bytes(join(cfg.output, SUMMARY_NAME)))
    return summary


main = hydra_app(
    "dpmesh-label", "dpmesh_label", LabelJobConfig, run, lambda summary, cfg: format_summary(summary, cfg.output)
)


if __name__ == "__main__":
    main()

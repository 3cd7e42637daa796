"""``dpmesh-refilter``: re-split existing labels by new thresholds, without running the model again.

Every signal a threshold reads is stored in the annotation rows, so a new filter is a pass over the
Parquet: each accepted and rejected row is re-scored with ``dpmesh_core.confidence.combine`` and
written to the new output's ``annotations/`` or ``rejected/``; ``errors/`` rows are carried over.

**Lineage is kept, not replaced.** Rows are carried whole (``model_id``, ``shard``, ``shard_uri``, ``annotation_id``,
``body_model``...). The labeling run behind them is recorded as ``label_run`` in three places: each shard's marker
and each Parquet file's metadata (JSON ``{"labels": <label output>, "config_hash", "pipeline_version"}`` of the
label marker), and ``_summary.json`` (the label run's summary lineage: config, config hash, versions, runner,
model ids, body models). Refiltering a refiltered output carries the original ``label_run`` forward. The file
metadata's own ``config_hash`` / ``pipeline_version`` are the refilter run's (they describe these bytes); the
shard's ``shard_uri`` / ``shard_identity`` / ``tar_read`` and ``detector_models`` come from the label marker.

**Reviews** (``review=<review.json...>``, `pipelines.common.reviews`): the files are read and checked on the driver
before anything is written; files that disagree about a person are refused (or, with ``review_conflicts=skip``,
those persons are left to the filter and listed); a review of another label run is refused unless every person it
decided is in the input as reviewed. The agreed decisions travel to the shard step (bounded by the files' size),
which writes them into the rows' ``review`` column; ``_summary.json`` records each file and what the decisions did.
The decisions are part of the config hash, so another review is another config.

**Resume, like the labeler.** One element per shard; each writes its three Parquet files, then its
``_done/<shard>.json`` marker, last. A rerun skips a shard whose marker has this run's config hash and the same
source (label shard identity and label config hash), so after a kill it refilters only the missing shards; an
output holding another filter config is refused unless ``overwrite=true``, which redoes every shard.
"""

import hashlib
import json
import logging
import time
from typing import Any

import apache_beam as beam

import pipelines
from dpmesh_core.calibration import ConfidenceCalibration
from dpmesh_core.confidence import FilterThresholds
from pipelines.cli import hydra_app
from pipelines.common.commit_log import made_otherwise, refuse_other_units
from pipelines.common.intent import check_intent, record_intent
from pipelines.common.label_filter import calibration_lineage, filter_thresholds, load_calibration
from pipelines.common.label_set import SUMMARY_NAME, read_markers, read_summary
from pipelines.common.label_summary import format_summary
from pipelines.common.launch import resolve_launch
from pipelines.common.reviews import Decision, load_reviews
from pipelines.common.safe_paths import check_output_location
from pipelines.config import ConfigError, RefilterJobConfig, config_hash
from pipelines.refilter.finish import label_run_of_summary, write_summary
from pipelines.refilter.plan import is_refiltered
from pipelines.refilter.refilter_shard import RefilterShardFn
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)

APP = "dpmesh-refilter"


def build_pipeline(
    p: beam.Pipeline,
    cfg: RefilterJobConfig,
    shards: list[str],
    pending: list[str],
    thresholds: FilterThresholds,
    info: dict[str, Any],
    calibration: ConfidenceCalibration | None,
    label_run: dict[str, Any],
    started_at: float,
    decisions: dict[str, dict[str, Decision]] | None = None,
    review: dict[str, Any] | None = None,
) -> None:
    """Adds the refiltering steps for the ``pending`` shard names (of ``shards``, the input's) to ``p``
    (``decisions``: the reviews to apply by shard; ``review``: their record for the summary)."""
    refilter = beam.ParDo(RefilterShardFn(cfg, thresholds, info, calibration, decisions))
    refiltered = p | "Shards" >> beam.Create(pending) | "SpreadShards" >> beam.Reshuffle() | "Refilter" >> refilter
    _ = refiltered | "Finish" >> write_summary(cfg, shards, info, label_run, thresholds, started_at, review)


def refilter_config_hash(cfg: RefilterJobConfig, review_digest: str | None = None) -> str:
    """What decides the refiltered rows: the filter and the review decisions (their content: `ReviewSet.digest`,
    not the files' paths or names; where and how the job runs changes none). Without decisions it is the hash of the
    filter alone, as before reviews existed."""
    not_content = ("input", "output", "runner", "storage", "log_level", "overwrite", "review", "review_conflicts")
    filter_hash = config_hash(cfg, exclude=not_content)
    if review_digest is None:
        return filter_hash
    return hashlib.sha256(f"{filter_hash}/review/{review_digest}".encode()).hexdigest()[:16]


def run(cfg: RefilterJobConfig) -> dict[str, Any]:
    """Re-splits every labeled shard of ``cfg.input`` not yet refiltered into ``cfg.output``; returns the summary
    (the launch plan on a dry run, which reads and writes nothing)."""
    if cfg.runner.dry_run:
        stand_in = {"pipeline_version": pipelines.__version__, "config_hash": refilter_config_hash(cfg)}
        thresholds = filter_thresholds(cfg.filter)  # bad overrides fail a dry run too
        launch = resolve_launch(APP, cfg.runner)
        stand_ins = ["shard-000000"]
        return launch.plan(
            lambda p: build_pipeline(p, cfg, stand_ins, stand_ins, thresholds, stand_in, None, {}, time.time())
        )
    storage = Storage(cfg.storage)
    inputs = {"input": cfg.input, "filter.calibration": cfg.filter.calibration}
    check_output_location(storage, cfg.output, {**inputs, **{f"review[{i}]": r for i, r in enumerate(cfg.review)}})
    thresholds = filter_thresholds(cfg.filter)
    calibration = load_calibration(cfg.filter, cfg.storage)
    sources = read_markers(storage, cfg.input)
    if not sources:
        raise ConfigError(f"input={cfg.input!r} holds no labeled shards (no _done/ markers)")
    shards = sorted(sources)
    review_set, review = load_reviews(
        storage, cfg.review, cfg.review_conflicts.value, cfg.input, read_summary(storage, cfg.input), set(shards)
    )
    info: dict[str, Any] = {
        "pipeline_version": pipelines.__version__,
        "config_hash": refilter_config_hash(cfg, review_set.digest()),
        **calibration_lineage(calibration, cfg.filter.calibration),
    }
    done = {} if cfg.overwrite else read_markers(storage, cfg.output)
    if not cfg.overwrite and not done:  # nothing committed yet: whose unfinished files may the output hold
        check_intent(storage, cfg.output, info["config_hash"], "unfinished refiltered labels")
    foreign, differs = made_otherwise(done, info["config_hash"], info.get("calibration_sha256"))
    if foreign:
        raise refuse_other_units(cfg.output, "refiltered labels", foreign, differs)
    pending = [s for s in shards if not is_refiltered(done.get(s), sources[s], info["config_hash"])]
    logger.info(
        "%d labeled shards, %d to refilter, %d already done", len(shards), len(pending), len(shards) - len(pending)
    )
    label_run = label_run_of_summary(storage, cfg.input)
    started_at = time.time()
    record_intent(storage, cfg.output, APP, info["config_hash"])  # before the first shard's files
    with resolve_launch(APP, cfg.runner, units=len(pending)).pipeline() as p:
        build_pipeline(
            p, cfg, shards, pending, thresholds, info, calibration, label_run, started_at, review_set.decisions, review
        )
    summary: dict[str, Any] = json.loads(storage.read_bytes(join(cfg.output, SUMMARY_NAME)))
    return summary


def report(summary: dict[str, Any], cfg: RefilterJobConfig) -> str:
    """The end-of-run table."""
    return format_summary(summary, cfg.output)


main = hydra_app("dpmesh-refilter", "dpmesh_refilter", RefilterJobConfig, run, report)


if __name__ == "__main__":
    main()

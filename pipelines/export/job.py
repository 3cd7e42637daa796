"""``dpmesh-export``: labels + shards to a training-ready dataset (``format=hmr2|camerahmr|crops``), per shard.

Per labeled shard ``shard-NNNNNN`` it checks the shard (its tar is the one labeled, its labels are there), selects the
accepted rows, reads their images from the shard tar by ``tar_offset`` (one forward pass, no tar scan), bakes the
EXIF orientation, writes the format's files, then ``_done/shard-NNNNNN.json`` last
(:class:`~pipelines.export.export_shard.ExportShardFn`); a rerun exports only shards without a marker, again those
relabeled since (their label lineage, :data:`LABEL_LINEAGE`, differs from the one the marker recorded) and those it
refused before. The graph has the labeler's shape::

    Create(shards) -> Reshuffle -> ExportShards (check, select, read, write, marker; per shard)
                                -> CollectExported -> WriteCard (stats.json, README.md)

No barrier stands between a shard's rows and its files; the only one feeds the card. Planning reads the label and
export markers through their indexes (:mod:`pipelines.export.plan`); the card step rewrites the export's index.

With ``split=`` (:mod:`pipelines.export.splits`) each shard's images go, whole groups at a time, to one writer per
split, each writing the split's sub-folder; ``split=<name>:<fraction>,...`` on the command line is short for
``split.fractions='...'`` (:func:`split_shorthand`).

Launch checks, in order, before anything is read or written: ``output=`` neither overlaps an input nor is a file
(:func:`~pipelines.common.safe_paths.check_output_location`); ``select.where`` is one expression
(:func:`~pipelines.export.selection.parse_where`: no SQL runs before it passes); the labeled shards are in
``input.shards``; the labels follow their shard set (:func:`~pipelines.export.live_set.check_labels_follow`: labels
that lag an append are refused, incomplete ones warned about); the output holds no other config's export. Only then
does the selection run once on an empty table, are a killed run's temporary files removed, and does the pipeline
start.

``review=<review.json...>`` applies people's reviews of ``input.labels`` as ``dpmesh-refilter`` does
(:func:`pipelines.common.reviews.load_reviews` on the driver: conflicts refused or skipped, a review of another label
run refused unless its persons are here): each shard applies its decisions before the selection
(:class:`~pipelines.export.export_shard.ShardReviews`), the decisions join the config hash, the card lists the files.

``from_release=<release> input.images=<folder>`` rebuilds from a labels release (``format=labels``,
:mod:`pipelines.export.release`) instead: the units are the release's shards, the rows its rows, the images files of
``input.images`` checked against the release's sha1s; the same graph, commit and resume. The output must overlap
neither the release nor the images, and the release must be finished (its ``stats.json``).
"""

import dataclasses
import json
import logging
import sys
from typing import Any

import apache_beam as beam

from dpmesh_core.confidence import FilterThresholds
from pipelines.cli import hydra_app
from pipelines.common import label_set
from pipelines.common.intent import record_intent
from pipelines.common.launch import resolve_launch
from pipelines.common.reviews import load_reviews
from pipelines.common.safe_paths import check_output_location
from pipelines.common.shard_set import manifest_pixel_limit
from pipelines.config import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ExportFormat,
    ExportJobConfig,
)
from pipelines.export import scratch
from pipelines.export.export_shard import (
    LABEL_LINEAGE,
    ExportShardFn,
    ShardReviews,
    export_config_hash,
    label_lineage,
)
from pipelines.export.finish import (
    CARD_NAME,
    STATS_NAME,
    WriteCardFn,
    provenance,
    reasons_line,
    rebuild_provenance,
    refused_line,
)
from pipelines.export.live_set import shard_set_record
from pipelines.export.plan import plan_export, plan_pending, plan_tasks, read_release
from pipelines.export.records import ExportTask
from pipelines.export.selection import check_selection, parse_where
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)

APP = "dpmesh-export"

__all__ = ["LABEL_LINEAGE", "export_config_hash", "label_lineage", "main", "plan_pending", "plan_tasks", "run"]


def build_pipeline(
    p: beam.Pipeline,
    cfg: ExportJobConfig,
    pending: list[ExportTask],
    prov: dict[str, Any],
    max_image_pixels: int,
    reviews: ShardReviews | None = None,
    review: dict[str, Any] | None = None,
) -> None:
    """Adds the export steps for ``pending`` to ``p`` (``reviews``: the decisions the shards apply; ``review``:
    their record for the card)."""
    _ = (
        p
        | "ListShards" >> beam.Create(pending)
        # Spreads shards over workers (Create puts them in one bundle); a barrier before any work, not after.
        | "SpreadShards" >> beam.Reshuffle()
        | "ExportShards" >> beam.ParDo(ExportShardFn(cfg, max_image_pixels, reviews))
        | "CollectExported" >> beam.combiners.ToList()
        | "WriteCard" >> beam.ParDo(WriteCardFn(cfg, prov, review))
    )


def _shard_set_pixel_limit(manifests: dict[str, dict[str, Any]]) -> int:
    """The pixel limit the labels' images were checked with: the label run followed its shard set's (manifest)."""
    limits = [limit for manifest in manifests.values() if (limit := manifest_pixel_limit(manifest))]
    return limits[0] if limits else DEFAULT_MAX_IMAGE_PIXELS


def _review_thresholds(summary: dict[str, Any] | None) -> FilterThresholds:
    """The filter that graded the labels' tiers (their summary's ``thresholds``: a refilter's own after a refilter),
    which grades a reviewed accept; the default filter where the summary does not say."""
    recorded = (summary or {}).get("thresholds")
    if not isinstance(recorded, dict):
        return FilterThresholds()
    known = {f.name for f in dataclasses.fields(FilterThresholds)}
    return FilterThresholds(**{k: v for k, v in recorded.items() if k in known})


def _load_reviews(
    cfg: ExportJobConfig, storage: Storage
) -> tuple[ShardReviews | None, dict[str, Any] | None, dict[str, dict[str, Any]] | None]:
    """With ``review=``: the decisions for the shards, their record for the card, and the label markers read to
    check them (planning takes them); all None without."""
    if not cfg.review:
        return None, None, None
    labels = str(cfg.input.labels)
    markers = label_set.read_markers(storage, labels)
    summary = label_set.read_summary(storage, labels)
    review_set, record = load_reviews(storage, cfg.review, cfg.review_conflicts.value, labels, summary, set(markers))
    reviews = ShardReviews(review_set.decisions, _review_thresholds(summary), review_set.digest())
    return reviews, record, markers


def run(cfg: ExportJobConfig) -> dict[str, Any]:
    """Exports every labeled shard not yet exported, then writes the card; returns ``stats.json``'s content (the
    launch plan on a dry run)."""
    default_pixels = DEFAULT_MAX_IMAGE_PIXELS
    if cfg.select.where:  # parsing runs nothing on any data: it precedes every other check, dry run included
        parse_where(cfg.select.where)
    if cfg.runner.dry_run:  # build, print and return the launch plan; touch no storage, submit nothing
        stand_in = [ExportTask("shard-000000", "labels.parquet", "shard-000000.tar", "shard-000000.parquet")]
        launch = resolve_launch(APP, cfg.runner)
        return launch.plan(lambda p: build_pipeline(p, cfg, stand_in, {}, default_pixels))
    storage = Storage(cfg.storage)
    # Before anything is read or written: an output over an input would have its source shards or labels replaced.
    if cfg.from_release:
        inputs = {"from_release": cfg.from_release, "input.images": cfg.input.images}
    else:
        inputs = {"input.labels": cfg.input.labels, "input.shards": cfg.input.shards}
    reviews_given = {f"review[{i}]": r for i, r in enumerate(cfg.review)}
    check_output_location(storage, cfg.output, {**inputs, **reviews_given})
    release = read_release(storage, cfg.from_release) if cfg.from_release else None
    reviews, review, label_markers = _load_reviews(cfg, storage)  # before planning: the decisions are in the hash
    digest = reviews.digest if reviews is not None else None
    plan = plan_export(cfg, storage, digest, label_markers)
    tasks, pending, schema = plan.tasks, plan.pending, plan.schema
    check_selection(cfg.select, schema)  # the one expression, bound to the labels' columns on an empty table
    if release is not None:  # the release's provenance: its label run, and the pixel limit its images were read with
        prov = rebuild_provenance(cfg, release)
        max_pixels = int(prov.get("max_image_pixels") or prov["label_run"].get("max_image_pixels") or default_pixels)
    else:
        prov = provenance(cfg, storage, schema)
        max_pixels = prov["label_run"]["max_image_pixels"] or _shard_set_pixel_limit(plan.manifests)
        prov["max_image_pixels"] = max_pixels  # a release records it, so its rebuilds decode with the same limit
        if (record := shard_set_record(plan.manifests)) is not None:
            prov["shard_set"] = record  # the benchmark overlap guard's count and list, for the card
    splits = tuple(name for name, _ in cfg.split.parts())
    removed = scratch.clear(cfg.output, splits)  # what a killed run left: nothing of this run is written yet
    if removed:
        logger.info("removed %d temporary files a killed run left in %s", removed, cfg.output)
    logger.info(
        "%d labeled shards, %d to export, %d already exported", len(tasks), len(pending), len(tasks) - len(pending)
    )
    if cfg.format == ExportFormat.camerahmr and (not cfg.select.tiers or "bronze" in cfg.select.tiers):
        logger.warning(
            "format=camerahmr with bronze rows: CameraHMR's loader has no per-person SMPL switch, so it would "
            "train on bronze SMPL; pass select.tiers=[gold,silver] to leave them out"
        )
    prov["export"]["config_hash"] = export_config_hash(cfg, digest)
    launch = resolve_launch(APP, cfg.runner, units=len(pending))
    record_intent(storage, cfg.output, APP, prov["export"]["config_hash"])  # before the first shard's files
    with launch.pipeline() as p:
        build_pipeline(p, cfg, pending, prov, max_pixels, reviews, review)
    scratch.remove_if_empty(cfg.output)
    stats: dict[str, Any] = json.loads(storage.read_bytes(join(cfg.output, STATS_NAME)))
    return stats


def report(stats: dict[str, Any], cfg: ExportJobConfig) -> str:
    """The end-of-run lines: what was exported, what was not and why, the shards refused whole."""
    counts = stats["counts"]
    lines = [
        f"dpmesh-export {cfg.format.value}: {stats['shards']} shards, {counts.get('images', 0)} images, "
        f"{counts.get('persons', 0)} persons (tiers {stats['tiers']}, occlusion {stats['occlusion_levels']})",
        f"not exported: {counts.get('persons_skipped', 0)} of {counts.get('rows_selected', 0)} selected persons "
        f"(by reason: {reasons_line(stats)}); counts reconcile: {stats.get('reconciled', True)}",
    ]
    if review := stats.get("review"):
        applied = review["applied"]
        lines.append(
            f"reviews: {len(review['files'])} files; {applied['applied_reject']} reviewed rejects left out, "
            f"{applied['applied_accept']} reviewed accepts exported; {review['conflicts']['count']} conflicts; "
            f"reconciled: {review['reconciled']}"
        )
    if stats.get("shard_errors"):
        lines.append(f"refused shards (nothing exported; see stats.json shard_errors): {refused_line(stats)}")
    if counts.get("index_keys_invalid"):
        lines.append(f"shard index rows with an invalid key, never used: {counts['index_keys_invalid']}")
    if cfg.format == ExportFormat.labels:
        lines.append(
            f"rebuild with: dpmesh-export from_release={cfg.output} input.images=<the corpus> format=hmr2 ..."
        )
    lines.append(f"output: {cfg.output} (dataset card: {join(cfg.output, CARD_NAME)})")
    return "\n".join(lines)


_app = hydra_app("dpmesh-export", "dpmesh_export", ExportJobConfig, run, report)


def split_shorthand(argument: str) -> str:
    """``split=train:0.9,val:0.1`` as Hydra reads it, ``split.fractions='train:0.9,val:0.1'``; any other argument
    as it is. (Unquoted, Hydra would read the commas as a sweep, and ``split`` is a group of keys.)"""
    name, sep, value = argument.partition("=")
    if name != "split" or not sep:
        return argument
    value = value.strip("'\"")
    return "split.fractions=null" if value in ("", "null") else f"split.fractions='{value}'"


def main() -> None:
    """Console entry point ``dpmesh-export`` (``split=<name>:<fraction>,...`` is short for ``split.fractions=``)."""
    sys.argv[1:] = [split_shorthand(argument) for argument in sys.argv[1:]]
    _app()


if __name__ == "__main__":
    main()

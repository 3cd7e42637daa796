"""``dpmesh-export``: labels + shards to a training-ready dataset (``format=hmr2|camerahmr|crops``), per shard.

Per labeled shard ``shard-NNNNNN`` it checks the shard (its tar is the one labeled, its labels are there), selects the
accepted rows, reads their images from the shard tar by ``tar_offset`` (one forward pass, no tar scan), bakes the
EXIF orientation, writes the format's files, then ``_done/shard-NNNNNN.json`` last
(:class:`~pipelines.export.export_shard.ExportShardFn`); a rerun exports only shards without a marker, again those
relabeled since (their label lineage, :data:`LABEL_LINEAGE`, differs from the one the marker recorded) and those it
refused before. The graph has the labeler's shape::

    Create(shards) -> Reshuffle -> ExportShards (check, select, read, write, marker; per shard)
                                -> CollectExported -> WriteCard (stats.json, README.md)

No barrier stands between a shard's rows and its files; the only one feeds the card.

Launch checks, in order, before anything is read or written: ``output=`` neither overlaps an input nor is a file
(:func:`~pipelines.common.safe_paths.check_output_location`); ``select.where`` is one expression
(:func:`~pipelines.export.selection.parse_where`: no SQL runs before it passes); the labeled shards are in
``input.shards``; the output holds no other config's export. Only then does the selection run once on an empty
table, are a killed run's temporary files removed, and does the pipeline start.
"""

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

import pipelines
from pipelines.cli import hydra_app
from pipelines.common.commit_log import refuse_other_units
from pipelines.common.intent import check_intent, record_intent
from pipelines.common.label_set import (
    LABEL_RUN,
    SUMMARY_NAME,
    fetch_markers,
    listed_markers,
    read_markers,
    read_summary,
)
from pipelines.common.launch import resolve_launch
from pipelines.common.safe_paths import check_output_location
from pipelines.common.shard_set import (
    MANIFEST_NAME,
    SHARD_TAR,
    folder_of,
    index_uri_of,
    manifest_pixel_limit,
    shard_name_of,
)
from pipelines.config import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ConfigError,
    ExportFormat,
    ExportJobConfig,
    config_to_dict,
)
from pipelines.export import scratch
from pipelines.export.card import CARD_NAME, STATS_NAME, build_stats, reasons_line, refused_line, render_card
from pipelines.export.export_shard import LABEL_LINEAGE, ExportShardFn, export_config_hash, label_lineage
from pipelines.export.records import ExportTask
from pipelines.export.selection import check_selection, parse_where
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage, join
from schemas import ANNOTATION_SCHEMA


logger = logging.getLogger(__name__)

APP = "dpmesh-export"

__all__ = ["LABEL_LINEAGE", "export_config_hash", "label_lineage", "main", "plan_pending", "plan_tasks", "run"]


def manifest_entries(storage: Storage, tar_uris: list[str]) -> dict[str, dict[str, Any]]:
    """The shard set manifests' records of ``tar_uris`` (``tar_bytes``, ``tar_sha1``), by tar URI; a tar no
    manifest lists has none (its sha1 is then hashed by the worker that checks it).

    Raises:
        ConfigError: a manifest that is not JSON.
    """
    entries: dict[str, dict[str, Any]] = {}
    for folder in sorted({folder_of(uri) for uri in tar_uris}):
        uri = join(folder, MANIFEST_NAME)
        try:
            manifest = json.loads(storage.read_bytes(uri))
        except FileNotFoundError:
            continue
        except ValueError:
            raise ConfigError(f"{uri} is not JSON: rerun dpmesh-shard for that shard set") from None
        shards = manifest.get("shards") if isinstance(manifest, dict) else None
        for entry in shards if isinstance(shards, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("shard"), str):
                entries[join(folder, f"{entry['shard']}.tar")] = entry
    return entries


def plan_tasks(cfg: ExportJobConfig, storage: Storage) -> list[ExportTask]:
    """Every labeled shard, joined to its tar, its index and the manifest's record of the tar.

    Raises:
        ConfigError: no labeled shards; a labeled shard whose tar is not in ``input.shards``.
    """
    labeled = sorted(listed_markers(storage, cfg.input.labels))
    if not labeled:
        raise ConfigError(f"input.labels={cfg.input.labels!r} holds no labeled shards (no _done/ markers)")
    tars = {shard_name_of(obj.uri): obj for obj in storage.list(cfg.input.shards) if SHARD_TAR.search(obj.uri)}
    missing = [name for name in labeled if name not in tars]
    if missing:
        raise ConfigError(
            f"input.shards={cfg.input.shards!r} lacks {len(missing)} labeled shard(s), e.g. {missing[0]}.tar: "
            "point it at the shard set the labels were made from"
        )
    manifests = manifest_entries(storage, [tars[name].uri for name in labeled])
    return [
        ExportTask(
            name=name,
            labels_uri=join(cfg.input.labels, "annotations", f"{name}.parquet"),
            tar_uri=tars[name].uri,
            index_uri=index_uri_of(tars[name].uri),
            tar_bytes=tars[name].size,
            manifest_entry=manifests.get(tars[name].uri),
        )
        for name in labeled
    ]


def labels_schema(storage: Storage, tasks: list[ExportTask]) -> pa.Schema:
    """The annotation schema the labels were written with (the first shard's file), metadata included."""
    for task in tasks:
        try:
            return read_parquet_bytes(storage.read_bytes(task.labels_uri)).schema
        except (FileNotFoundError, pa.ArrowException):  # the shard's worker counts it; the schema comes from another
            continue
    return ANNOTATION_SCHEMA


def provenance(cfg: ExportJobConfig, storage: Storage, schema: pa.Schema) -> dict[str, Any]:
    """What the card and stats record about where the dataset came from (no secrets: configs hold none)."""
    summary = read_summary(storage, cfg.input.labels)
    if summary is None:
        logger.warning("%s has no readable %s: the card lacks the label run's lineage", cfg.input.labels, SUMMARY_NAME)
        summary = {}
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    # A dpmesh-refilter output keeps the labeling run under "label_run"; its own top level is the refilter's.
    label_run = summary.get(LABEL_RUN) or summary
    config = label_run.get("config") or {}
    body_models = label_run.get("body_models") or {}
    return {
        "labels": cfg.input.labels,
        "shards": cfg.input.shards,
        "label_run": {
            "created_by": label_run.get("created_by"),
            "pipeline_version": label_run.get("pipeline_version"),
            "config_hash": label_run.get("config_hash"),
            "model": config.get("model"),
            "model_ids": label_run.get("model_ids"),
            "detector": (config.get("detector") or {}).get("name"),
            "thresholds": summary.get("thresholds"),  # the tiers' filter: the refilter's own after a refilter
            "refiltered_by": summary.get("created_by") if LABEL_RUN in summary else None,
            "max_image_pixels": (config.get("input") or {}).get("max_image_pixels"),
        },
        "body_model": ", ".join(f"{name} (sha256 {digest})" for name, digest in sorted(body_models.items())) or None,
        "labels_schema_version": meta.get("schema_version"),
        "export": {
            "format": cfg.format.value,
            "pipeline_version": pipelines.__version__,
            "config_hash": export_config_hash(cfg),
            "select": config_to_dict(cfg.select),
            "options": config_to_dict(cfg.export),
        },
    }


class WriteCardFn(beam.DoFn):
    """Input: the markers this run wrote (once). Writes ``stats.json`` and ``README.md`` over every exported shard."""

    def __init__(self, cfg: ExportJobConfig, provenance: dict[str, Any]) -> None:
        self._cfg = cfg
        self._provenance = provenance

    def process(self, written: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        storage = Storage(self._cfg.storage)
        markers = {m["shard"]: m for m in written}
        listed = listed_markers(storage, self._cfg.output)
        earlier = fetch_markers(storage, [uri for name, uri in listed.items() if name not in markers])
        markers.update(earlier)  # shards exported by earlier runs of this export
        stats = build_stats([markers[k] for k in sorted(markers)], self._provenance)
        storage.write_bytes(join(self._cfg.output, STATS_NAME), json.dumps(stats, indent=1, sort_keys=True).encode())
        storage.write_bytes(join(self._cfg.output, CARD_NAME), render_card(stats).encode())
        yield stats


def plan_pending(cfg: ExportJobConfig, storage: Storage, tasks: list[ExportTask]) -> list[ExportTask]:
    """The tasks without a marker of this config, whose shard was relabeled since, or that were refused
    (``shard_error``: the user may have fixed ``input.shards`` or the labels since); all with ``overwrite``.

    Files of a re-exported shard are replaced under the same names (its tar, or its npz), and with
    ``format=camerahmr`` the loose images it no longer selects are removed (``ExportTask.exported_before``).

    Raises:
        ConfigError: the output holds shards exported with another config (and ``overwrite`` is off).
    """
    listed = listed_markers(storage, cfg.output)
    if cfg.overwrite:
        return [dataclasses.replace(t, exported_before=t.name in listed) for t in tasks]
    if not listed:  # nothing committed yet: the intent says whose unfinished files the output may hold
        check_intent(storage, cfg.output, export_config_hash(cfg), "an unfinished export")
    done = fetch_markers(storage, list(listed.values()))
    current = export_config_hash(cfg)
    foreign = sorted(name for name, m in done.items() if m.get("config_hash") != current)
    if foreign:
        raise refuse_other_units(cfg.output, "exported shards", foreign, "another config")
    labels = read_markers(storage, cfg.input.labels, names={t.name for t in tasks})
    relabeled = {
        t.name
        for t in tasks
        if t.name in done and label_lineage(done[t.name].get("label") or {}) != label_lineage(labels[t.name])
    }
    if relabeled:
        logger.info(
            "%d exported shards were relabeled since (e.g. %s): exporting them again", len(relabeled), min(relabeled)
        )
    refused = {t.name for t in tasks if (done.get(t.name) or {}).get("shard_error")}
    again = relabeled | refused
    return [
        dataclasses.replace(t, exported_before=True) if t.name in again else t
        for t in tasks
        if t.name not in done or t.name in again
    ]


def build_pipeline(
    p: beam.Pipeline, cfg: ExportJobConfig, pending: list[ExportTask], prov: dict[str, Any], max_image_pixels: int
) -> None:
    """Adds the export steps for ``pending`` to ``p``."""
    _ = (
        p
        | "ListShards" >> beam.Create(pending)
        # Spreads shards over workers (Create puts them in one bundle); a barrier before any work, not after.
        | "SpreadShards" >> beam.Reshuffle()
        | "ExportShards" >> beam.ParDo(ExportShardFn(cfg, max_image_pixels))
        | "CollectExported" >> beam.combiners.ToList()
        | "WriteCard" >> beam.ParDo(WriteCardFn(cfg, prov))
    )


def _shard_set_pixel_limit(storage: Storage, shards: str) -> int:
    """The pixel limit the labels' images were checked with: the label run followed its shard set's (manifest)."""
    try:
        manifest = json.loads(storage.read_bytes(join(shards, MANIFEST_NAME)))
        return manifest_pixel_limit(manifest) or DEFAULT_MAX_IMAGE_PIXELS
    except (FileNotFoundError, ValueError, AttributeError):  # none, or not a manifest: the default limit
        return DEFAULT_MAX_IMAGE_PIXELS


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
    check_output_location(storage, cfg.output, {"input.labels": cfg.input.labels, "input.shards": cfg.input.shards})
    tasks = plan_tasks(cfg, storage)
    pending = plan_pending(cfg, storage, tasks)
    schema = labels_schema(storage, tasks)
    check_selection(cfg.select, schema)  # the one expression, bound to the labels' columns on an empty table
    prov = provenance(cfg, storage, schema)
    removed = scratch.clear(cfg.output)  # what a killed run left: nothing of this run is written yet
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
    max_pixels = prov["label_run"]["max_image_pixels"] or _shard_set_pixel_limit(storage, cfg.input.shards)
    launch = resolve_launch(APP, cfg.runner, units=len(pending))
    record_intent(storage, cfg.output, APP, export_config_hash(cfg))  # before the first shard's files
    with launch.pipeline() as p:
        build_pipeline(p, cfg, pending, prov, max_pixels)
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
    if stats.get("shard_errors"):
        lines.append(f"refused shards (nothing exported; see stats.json shard_errors): {refused_line(stats)}")
    if counts.get("index_keys_invalid"):
        lines.append(f"shard index rows with an invalid key, never used: {counts['index_keys_invalid']}")
    lines.append(f"output: {cfg.output} (dataset card: {join(cfg.output, CARD_NAME)})")
    return "\n".join(lines)


main = hydra_app("dpmesh-export", "dpmesh_export", ExportJobConfig, run, report)


if __name__ == "__main__":
    main()

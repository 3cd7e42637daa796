"""``dpmesh-export``: labels + shards to a training-ready dataset (``format=hmr2|camerahmr|crops``), per shard.

Per labeled shard ``shard-NNNNNN`` it selects the accepted rows, reads their images from the shard tar by
``tar_offset`` (one forward pass, no tar scan), bakes the EXIF orientation, writes the format's files, then
``_done/shard-NNNNNN.json`` last; a rerun exports only shards without a marker, and again those relabeled since
(their label lineage, :data:`LABEL_LINEAGE`, differs from the one the marker recorded). The graph has the labeler's
shape::

    Create(shards) -> Reshuffle -> ExportShards (select, read, write, marker; per shard)
                                -> CollectExported -> WriteCard (stats.json, README.md)

No barrier stands between a shard's rows and its files; the only one feeds the card.
"""

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import groupby
from typing import Any

import apache_beam as beam
import pyarrow as pa

import pipelines
from pipelines.cli import hydra_app
from pipelines.common.image_decode import ImageDecodeError
from pipelines.common.label_set import (
    LABEL_RUN,
    SUMMARY_NAME,
    fetch_markers,
    listed_markers,
    marker_uri,
    read_markers,
)
from pipelines.common.shard_members import (
    MemberError,
    MemberRef,
    check_member,
    decode_upright,
    encode_jpeg,
    iter_members,
)
from pipelines.common.shard_set import MANIFEST_NAME, SHARD_TAR, index_uri_of, manifest_pixel_limit, shard_name_of
from pipelines.config import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ConfigError,
    ExportFormat,
    ExportJobConfig,
    RunnerName,
    config_hash,
    config_to_dict,
)
from pipelines.export.card import CARD_NAME, STATS_NAME, build_stats, render_card
from pipelines.export.formats import WRITERS
from pipelines.export.records import ExportImage, ExportPerson, ExportTask
from pipelines.export.selection import check_selection, select_rows
from pipelines.options import pipeline_options, running_pipeline
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage, join
from schemas import ANNOTATION_SCHEMA


logger = logging.getLogger(__name__)

# What of a label marker decides a labeled shard's rows: the tar labeled, the labeling config, the calibration's
# content and, for a dpmesh-refilter output, the labeling run behind it. Each is in the markers' index, so planning
# reads them for 100k shards without a GET per marker. An export marker records them; a difference means the shard
# was relabeled since it was exported.
LABEL_LINEAGE = ("shard_identity", "config_hash", "calibration_sha256", LABEL_RUN)

# Keys that do not change what is written: where and how the job runs.
_NOT_CONTENT = ("input", "output", "runner", "storage", "log_level", "overwrite")


def export_config_hash(cfg: ExportJobConfig) -> str:
    """Fingerprint of what decides the exported bytes (format, selection, image options)."""
    return config_hash(cfg, exclude=_NOT_CONTENT)


def plan_tasks(cfg: ExportJobConfig, storage: Storage) -> list[ExportTask]:
    """Every labeled shard, joined to its tar and index.

    Raises:
        ConfigError: no labeled shards; a labeled shard whose tar or index is not in ``input.shards``.
    """
    labeled = sorted(listed_markers(storage, cfg.input.labels))
    if not labeled:
        raise ConfigError(f"input.labels={cfg.input.labels!r} holds no labeled shards (no _done/ markers)")
    tars = {shard_name_of(obj.uri): obj.uri for obj in storage.list(cfg.input.shards) if SHARD_TAR.search(obj.uri)}
    missing = [name for name in labeled if name not in tars]
    if missing:
        raise ConfigError(
            f"input.shards={cfg.input.shards!r} lacks {len(missing)} labeled shard(s), e.g. {missing[0]}.tar: "
            "point it at the shard set the labels were made from"
        )
    return [
        ExportTask(
            name=name,
            labels_uri=join(cfg.input.labels, "annotations", f"{name}.parquet"),
            tar_uri=tars[name],
            index_uri=index_uri_of(tars[name]),
        )
        for name in labeled
    ]


def labels_schema(storage: Storage, tasks: list[ExportTask]) -> pa.Schema:
    """The annotation schema the labels were written with (the first shard's file), metadata included."""
    for task in tasks:
        try:
            return read_parquet_bytes(storage.read_bytes(task.labels_uri)).schema
        except FileNotFoundError:
            continue
    return ANNOTATION_SCHEMA


def provenance(cfg: ExportJobConfig, storage: Storage, schema: pa.Schema) -> dict[str, Any]:
    """What the card and stats record about where the dataset came from (no secrets: configs hold none)."""
    try:
        summary = json.loads(storage.read_bytes(join(cfg.input.labels, SUMMARY_NAME)))
    except FileNotFoundError:
        logger.warning("%s has no %s: the card will lack the label run's lineage", cfg.input.labels, SUMMARY_NAME)
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


def _images(table: pa.Table) -> list[tuple[str, list[ExportPerson]]]:
    """Rows (in image-key, person order) grouped by image."""
    return [(key, list(group)) for key, group in groupby(ExportPerson.from_table(table), key=lambda p: p.image_key)]


class ExportShardFn(beam.DoFn):
    """Input: an :class:`ExportTask`. Writes the shard's export files, then its marker; outputs the marker."""

    def __init__(self, cfg: ExportJobConfig, max_image_pixels: int) -> None:
        self._cfg = cfg
        self._max_pixels = max_image_pixels
        self._hash = export_config_hash(cfg)

    def setup(self) -> None:
        self._storage = Storage(self._cfg.storage)

    def process(self, task: ExportTask) -> Iterator[dict[str, Any]]:
        storage, cfg = self._storage, self._cfg
        label_marker = json.loads(storage.read_bytes(marker_uri(cfg.input.labels, task.name)))
        try:
            table = read_parquet_bytes(storage.read_bytes(task.labels_uri))
        except FileNotFoundError:  # a marker without annotations: nothing was accepted
            table = ANNOTATION_SCHEMA.empty_table()
        selected = select_rows(table, cfg.select)
        images = _images(selected)
        index = {r["key"]: r for r in read_parquet_bytes(storage.read_bytes(task.index_uri)).to_pylist()}
        persons = dict(images)
        skipped: list[dict[str, Any]] = []
        refs = []
        for key, people in images:
            if key in index:
                refs.append(MemberRef.from_index_row(index[key]))
            else:
                skipped.append({"key": key, "reason": "not in the shard index", "persons": len(people)})
        writer = WRITERS[cfg.format](storage, cfg.output, task.name, cfg.export)
        exported: list[ExportPerson] = []
        try:
            with storage.open_read(task.tar_uri) as stream:
                for ref, data in self._members(stream, refs, skipped):
                    try:  # the label run read and decoded this image: a failure means the shard changed since
                        pixels = decode_upright(check_member(ref, data), max_image_pixels=self._max_pixels)
                    except (MemberError, ImageDecodeError) as exc:
                        skipped.append({"key": ref.key, "reason": str(exc), "persons": len(persons[ref.key])})
                        continue
                    jpeg = encode_jpeg(pixels, cfg.export.jpeg_quality)
                    writer.add(ExportImage(ref.key, pixels, jpeg, persons[ref.key]))
                    exported.extend(persons[ref.key])
            files = writer.close()
        except BaseException:
            writer.abort()
            raise
        if task.exported_before:  # after the new files, before the marker: a kill in between redoes the shard
            writer.remove_unselected(set(index) - {p.image_key for p in exported})
        occlusion_recorded = "occlusion_level" in table.column_names
        marker = self._marker(
            task, label_marker, table.num_rows, occlusion_recorded, exported, skipped, persons, files
        )
        storage.write_bytes(marker_uri(cfg.output, task.name), json.dumps(marker, indent=1).encode())
        yield marker

    @staticmethod
    def _members(
        stream: Any, refs: list[MemberRef], skipped: list[dict[str, Any]]
    ) -> Iterator[tuple[MemberRef, bytes]]:
        """The wanted members; a truncated tar ends the shard's reading with one skip entry for the rest."""
        try:
            yield from iter_members(stream, refs)
        except MemberError as exc:
            skipped.append({"key": None, "reason": f"shard read stopped: {exc}", "persons": None})

    def _marker(
        self,
        task: ExportTask,
        label_marker: dict[str, Any],
        rows_in: int,
        occlusion_recorded: bool,
        exported: list[ExportPerson],
        skipped: list[dict[str, Any]],
        persons: dict[str, list[ExportPerson]],
        files: list[str],
    ) -> dict[str, Any]:
        exported_ids = {p.sample_id for p in exported}
        selected = [p for people in persons.values() for p in people]
        # Rows from before schema 1.1.0 read back with a null level: "unrecorded", never counted as "none".
        occlusion = (
            Counter(p.row.get("occlusion_level") or "unrecorded" for p in exported) if occlusion_recorded else None
        )
        return {
            "shard": task.name,
            "format": self._cfg.format.value,
            "config_hash": self._hash,
            "pipeline_version": pipelines.__version__,
            "label": {"shard_uri": label_marker.get("shard_uri"), **label_lineage(label_marker)},
            "counts": {
                "rows_in": rows_in,
                "rows_selected": len(selected),
                "images": len({p.image_key for p in exported}),
                "persons": len(exported),
                "persons_skipped": sum(1 for p in selected if p.sample_id not in exported_ids),
            },
            "tiers": dict(sorted(Counter(p.tier for p in exported).items())),
            "occlusion_levels": dict(sorted(occlusion.items())) if occlusion is not None else None,
            "model_ids": sorted({str(p.row.get("model_id")) for p in exported}),
            "body_models": sorted(
                {
                    f"{p.row['body_model']} (sha256 {p.row.get('body_model_sha256')})"
                    for p in exported
                    if p.row.get("body_model")
                }
            ),
            "skipped_images": skipped,
            "files": [uri.rsplit("/", 1)[-1] for uri in files if not uri.endswith(".jpg")],
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


def label_lineage(label_marker: dict[str, Any]) -> dict[str, Any]:
    """The :data:`LABEL_LINEAGE` fields of a label marker (None where it has none)."""
    return {k: label_marker.get(k) for k in LABEL_LINEAGE}


def plan_pending(cfg: ExportJobConfig, storage: Storage, tasks: list[ExportTask]) -> list[ExportTask]:
    """The tasks without a marker of this config, or whose shard was relabeled since (all with ``overwrite``).

    Files of a re-exported shard are replaced under the same names (its tar, or its npz), and with
    ``format=camerahmr`` the loose images it no longer selects are removed (``ExportTask.exported_before``).

    Raises:
        ConfigError: the output holds shards exported with another config (and ``overwrite`` is off).
    """
    listed = listed_markers(storage, cfg.output)
    if cfg.overwrite:
        return [dataclasses.replace(t, exported_before=t.name in listed) for t in tasks]
    done = fetch_markers(storage, list(listed.values()))
    current = export_config_hash(cfg)
    foreign = sorted(name for name, m in done.items() if m.get("config_hash") != current)
    if foreign:
        raise ConfigError(
            f"output={cfg.output!r} holds an export made with another config (e.g. {foreign[0]}); "
            "use another output, or overwrite=true to re-export"
        )
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
    return [
        dataclasses.replace(t, exported_before=True) if t.name in relabeled else t
        for t in tasks
        if t.name not in done or t.name in relabeled
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
    except FileNotFoundError:
        return DEFAULT_MAX_IMAGE_PIXELS
    return manifest_pixel_limit(manifest) or DEFAULT_MAX_IMAGE_PIXELS


def run(cfg: ExportJobConfig) -> dict[str, Any]:
    """Exports every labeled shard not yet exported, then writes the card; returns ``stats.json``'s content (the
    launch plan on a dry run)."""
    default_pixels = DEFAULT_MAX_IMAGE_PIXELS
    if cfg.runner.dry_run:  # build, print and return the launch plan; touch no storage, submit nothing
        from pipelines.launch_plan import print_launch_plan

        stand_in = [ExportTask("shard-000000", "labels.parquet", "shard-000000.tar", "shard-000000.parquet")]
        return print_launch_plan("dpmesh-export", cfg, lambda p: build_pipeline(p, cfg, stand_in, {}, default_pixels))
    storage = Storage(cfg.storage)
    tasks = plan_tasks(cfg, storage)
    schema = labels_schema(storage, tasks)
    check_selection(cfg.select, schema)
    prov = provenance(cfg, storage, schema)
    pending = plan_pending(cfg, storage, tasks)
    logger.info(
        "%d labeled shards, %d to export, %d already exported", len(tasks), len(pending), len(tasks) - len(pending)
    )
    if cfg.format == ExportFormat.camerahmr and (not cfg.select.tiers or "bronze" in cfg.select.tiers):
        logger.warning(
            "format=camerahmr with bronze rows: CameraHMR's loader has no per-person SMPL switch, so it would "
            "train on bronze SMPL; pass select.tiers=[gold,silver] to leave them out"
        )
    runner = cfg.runner
    if runner.name == RunnerName.dask and runner.partitions is None:
        # The DaskRunner ignores Reshuffle: its only parallelism is how Create is split, so one shard per partition.
        runner = dataclasses.replace(runner, partitions=max(1, len(pending)))
    max_pixels = prov["label_run"]["max_image_pixels"] or _shard_set_pixel_limit(storage, cfg.input.shards)
    with running_pipeline(pipeline_options(runner, job_name="dpmesh-export")) as p:
        build_pipeline(p, cfg, pending, prov, max_pixels)
    stats: dict[str, Any] = json.loads(storage.read_bytes(join(cfg.output, STATS_NAME)))
    return stats


def report(stats: dict[str, Any], cfg: ExportJobConfig) -> str:
    """The end-of-run lines."""
    counts = stats["counts"]
    return (
        f"dpmesh-export {cfg.format.value}: {stats['shards']} shards, {counts.get('images', 0)} images, "
        f"{counts.get('persons', 0)} persons (tiers {stats['tiers']}, occlusion {stats['occlusion_levels']})\n"
        f"output: {cfg.output} (dataset card: {join(cfg.output, CARD_NAME)})"
    )


main = hydra_app("dpmesh-export", "dpmesh_export", ExportJobConfig, run, report)


if __name__ == "__main__":
    main()

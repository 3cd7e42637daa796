"""The units of ``dpmesh-export`` and which are pending: every labeled shard joined to its tar, index and manifest
record (or, for a rebuild, every shard of a labels release); those without an export marker of this config,
relabeled since (or whose release shard was remade, or whose near-duplicate groups changed), or refused before (all
with ``overwrite``).

Planning reads markers through indexes, never one GET per marker (:mod:`pipelines.common.marker_index`): the label
markers through the label output's index, the export's own (and a labels release's) through the export's index
(:data:`~pipelines.export.finish.EXPORT_INDEX`); only markers an index lacks are read one by one. Besides the
listings, a rerun over a finished export reads the two indexes, the manifest, the label summary, one labels file
(the schema) and, for the guard (:mod:`pipelines.export.live_set`) and ``split=`` on labels without a
``near_dup_group`` column, the shard set's ``_near_duplicates.parquet`` once and each generation's retired file
once.
"""

import dataclasses
import json
import logging
from typing import Any

import pyarrow as pa

from pipelines.common import label_set
from pipelines.common.commit_log import refuse_other_units
from pipelines.common.intent import check_intent
from pipelines.common.marker_index import listed_markers, read_markers
from pipelines.common.shard_set import (
    MANIFEST_NAME,
    SHARD_TAR,
    folder_of,
    index_uri_of,
    near_duplicate_groups,
    shard_name_of,
)
from pipelines.config import ConfigError, ExportJobConfig
from pipelines.export.export_shard import current_source, export_config_hash, recorded_source
from pipelines.export.finish import EXPORT_INDEX, STATS_NAME
from pipelines.export.live_set import check_labels_follow
from pipelines.export.records import ExportTask
from pipelines.export.release import corpus_root, images_uri, labels_uri, release_label_marker
from pipelines.export.splits import NEAR_DUP_COLUMN
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage, join
from schemas import ANNOTATION_SCHEMA


logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """What launch needs from the inputs.

    Attributes:
        tasks: Every unit (labeled shard, or release shard), in name order. pending: Those this run exports.
        schema: The labels' annotation schema, file metadata included (:func:`labels_schema`).
        manifests: The shard set manifests by folder (none for a rebuild).
        unlabeled: Live shards of the shard set without labels (exported by a rerun once labeled).
    """

    tasks: list[ExportTask]
    pending: list[ExportTask]
    schema: pa.Schema
    manifests: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    unlabeled: list[str] = dataclasses.field(default_factory=list)


def plan_export(
    cfg: ExportJobConfig,
    storage: Storage,
    review_digest: str | None = None,
    label_markers: dict[str, dict[str, Any]] | None = None,
) -> ExportPlan:
    """The export's units, the labels' schema and the pending units, after the labels are checked against their
    shard set (:func:`~pipelines.export.live_set.check_labels_follow`). ``review_digest``: the review decisions'
    (in the config hash); ``label_markers``: the label markers when the caller has read them already.

    Raises:
        ConfigError: no labeled shards, labeled shards missing from ``input.shards``, labels that lag their shard
            set, or an output holding another config's export.
    """
    if cfg.from_release:
        tasks = plan_release_tasks(cfg, storage)
        sources = _release_sources(storage, cfg.from_release, {t.name for t in tasks})
        return ExportPlan(tasks, plan_pending(cfg, storage, tasks, sources), labels_schema(storage, tasks))
    labels = str(cfg.input.labels)
    if label_markers is None:
        label_markers = label_set.read_markers(storage, labels)
    tasks, manifests = plan_tasks(cfg, storage, label_markers)
    schema = labels_schema(storage, tasks)
    # The set's near-duplicate groups (one read per set): the guard compares them with what the labels recorded
    # (labels that record a live_digest), and split= takes them from here for labels older than the column.
    split_groups = cfg.split.enabled and NEAR_DUP_COLUMN not in schema.names
    guard_groups = any("live_digest" in marker for marker in label_markers.values())
    near_dups = {f: near_duplicate_groups(storage, f) for f in manifests} if split_groups or guard_groups else {}
    unlabeled = check_labels_follow(storage, manifests, label_markers, near_dups, labels, str(cfg.input.shards))
    if split_groups:
        tasks = _with_near_dups(tasks, near_dups)
    pending = plan_pending(cfg, storage, tasks, label_markers, review_digest)
    return ExportPlan(tasks, pending, schema, manifests, unlabeled)


def read_manifests(storage: Storage, tar_uris: list[str]) -> dict[str, dict[str, Any]]:
    """The shard set manifests of the folders holding ``tar_uris``, by folder (a folder without one is absent).

    Raises:
        ConfigError: a manifest that is not a JSON object.
    """
    manifests: dict[str, dict[str, Any]] = {}
    for folder in sorted({folder_of(uri) for uri in tar_uris}):
        uri = join(folder, MANIFEST_NAME)
        try:
            manifest = json.loads(storage.read_bytes(uri))
        except FileNotFoundError:
            continue
        except ValueError:
            raise ConfigError(f"{uri} is not JSON: rerun dpmesh-shard for that shard set") from None
        if not isinstance(manifest, dict):
            raise ConfigError(f"{uri} is not a JSON object: rerun dpmesh-shard for that shard set")
        manifests[folder] = manifest
    return manifests


def manifest_entries(manifests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The manifests' records of their tars (``tar_bytes``, ``tar_sha1``), by tar URI; a tar no manifest lists has
    none (its sha1 is then hashed by the worker that checks it)."""
    entries: dict[str, dict[str, Any]] = {}
    for folder, manifest in manifests.items():
        shards = manifest.get("shards")
        for entry in shards if isinstance(shards, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("shard"), str):
                entries[join(folder, f"{entry['shard']}.tar")] = entry
    return entries


def plan_tasks(
    cfg: ExportJobConfig, storage: Storage, label_markers: dict[str, dict[str, Any]]
) -> tuple[list[ExportTask], dict[str, dict[str, Any]]]:
    """Every labeled shard (``label_markers``: by name), joined to its tar, its index and the manifest's record of
    the tar; and the manifests of the folders holding them, by folder.

    Raises:
        ConfigError: no labeled shards; a labeled shard whose tar is not in ``input.shards``.
    """
    labels, shards = str(cfg.input.labels), str(cfg.input.shards)
    labeled = sorted(label_markers)
    if not labeled:
        raise ConfigError(f"input.labels={labels!r} holds no labeled shards (no _done/ markers)")
    tars = {shard_name_of(obj.uri): obj for obj in storage.list(shards) if SHARD_TAR.search(obj.uri)}
    missing = [name for name in labeled if name not in tars]
    if missing:
        raise ConfigError(
            f"input.shards={shards!r} lacks {len(missing)} labeled shard(s), e.g. {missing[0]}.tar: "
            "point it at the shard set the labels were made from"
        )
    manifests = read_manifests(storage, [tars[name].uri for name in labeled])
    entries = manifest_entries(manifests)
    tasks = [
        ExportTask(
            name=name,
            labels_uri=join(labels, "annotations", f"{name}.parquet"),
            tar_uri=tars[name].uri,
            index_uri=index_uri_of(tars[name].uri),
            tar_bytes=tars[name].size,
            manifest_entry=entries.get(tars[name].uri),
            corpus_root=corpus_root(manifests.get(folder_of(tars[name].uri)) or {}),
        )
        for name in labeled
    ]
    return tasks, manifests


def _with_near_dups(tasks: list[ExportTask], near_dups: dict[str, dict[str, dict[str, str]]]) -> list[ExportTask]:
    """``tasks``, each with its shard's part of its shard set's near-duplicate groups (``near_dups``: by folder; a
    shard in no group gets an empty part)."""
    return [
        dataclasses.replace(t, near_dup_groups=dict((near_dups.get(folder_of(t.tar_uri)) or {}).get(t.name) or {}))
        for t in tasks
    ]


def read_release(storage: Storage, release: str) -> dict[str, Any]:
    """The ``stats.json`` of a finished labels release (its provenance: label run, selection, pixel limit).

    Raises:
        ConfigError: ``from_release`` holds no finished export, or one of another format.
    """
    uri = join(release, STATS_NAME)
    try:
        stats = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise ConfigError(
            f"from_release={release!r} is not a finished labels release (no {STATS_NAME}): point it at the output "
            "of a finished dpmesh-export format=labels run"
        ) from None
    except ValueError:
        raise ConfigError(f"from_release={release!r}: {uri} is not JSON") from None
    made = ((stats.get("provenance") or {}).get("export") or {}).get("format") if isinstance(stats, dict) else None
    if made != "labels":
        raise ConfigError(
            f"from_release={release!r} is a format={made} export, not a labels release: rebuild only from the "
            "output of dpmesh-export format=labels"
        )
    return stats  # type: ignore[no-any-return]


def plan_release_tasks(cfg: ExportJobConfig, storage: Storage) -> list[ExportTask]:
    """Every shard of the release ``from_release``, its images read from ``input.images``.

    Raises:
        ConfigError: the release has no shards.
    """
    release, images = str(cfg.from_release), str(cfg.input.images)
    names = sorted(listed_markers(storage, release))
    if not names:
        raise ConfigError(f"from_release={release!r} holds no released shards (no _done/ markers)")
    return [
        ExportTask(
            name=name,
            labels_uri=labels_uri(release, name),
            tar_uri="",
            index_uri=images_uri(release, name),
            images_folder=images,
        )
        for name in names
    ]


def labels_schema(storage: Storage, tasks: list[ExportTask]) -> pa.Schema:
    """The annotation schema the labels were written with (the first shard's file), metadata included."""
    for task in tasks:
        try:
            return read_parquet_bytes(storage.read_bytes(task.labels_uri)).schema
        except (FileNotFoundError, pa.ArrowException):  # the shard's worker counts it; the schema comes from another
            continue
    return ANNOTATION_SCHEMA


def plan_pending(
    cfg: ExportJobConfig,
    storage: Storage,
    tasks: list[ExportTask],
    sources: dict[str, dict[str, Any]],
    review_digest: str | None = None,
) -> list[ExportTask]:
    """The tasks without a marker of this config, whose shard was relabeled since (``sources``: the label markers,
    or a rebuild's stand-ins for them, by name) or whose near-duplicate groups changed, or that were refused
    (``shard_error``: the user may have fixed ``input.shards`` or the labels since); all with ``overwrite``.

    Files of a re-exported shard are replaced under the same names (its tar, or its npz), and with
    ``format=camerahmr`` the loose images it no longer selects are removed (``ExportTask.exported_before``).

    Raises:
        ConfigError: the output holds shards exported with another config (and ``overwrite`` is off).
    """
    if cfg.overwrite:
        listed = listed_markers(storage, cfg.output)
        return [dataclasses.replace(t, exported_before=t.name in listed) for t in tasks]
    done = read_markers(storage, cfg.output, EXPORT_INDEX)
    current = export_config_hash(cfg, review_digest)
    if not done:  # nothing committed yet: the intent says whose unfinished files the output may hold
        check_intent(storage, cfg.output, current, "an unfinished export")
    foreign = sorted(name for name, m in done.items() if m.get("config_hash") != current)
    if foreign:
        raise refuse_other_units(cfg.output, "exported shards", foreign, "another config")
    relabeled = {
        t.name
        for t in tasks
        if t.name in done and recorded_source(done[t.name]) != current_source(sources.get(t.name) or {}, t)
    }
    if relabeled:
        logger.info(
            "%d exported shards were relabeled (or regrouped) since (e.g. %s): exporting them again",
            len(relabeled),
            min(relabeled),
        )
    refused = {t.name for t in tasks if (done.get(t.name) or {}).get("shard_error")}
    again = relabeled | refused
    return [
        dataclasses.replace(t, exported_before=True) if t.name in again else t
        for t in tasks
        if t.name not in done or t.name in again
    ]


def _release_sources(storage: Storage, release: str, names: set[str]) -> dict[str, dict[str, Any]]:
    """For a rebuild, the stand-ins for label markers made from the release's markers of ``names`` (through the
    release's export index); a release marker that is not one is left out (its shard is exported again, and the
    worker refuses it in one line)."""
    markers = read_markers(storage, release, EXPORT_INDEX, names=names)
    stand_ins: dict[str, dict[str, Any]] = {}
    for name, marker in markers.items():
        try:
            stand_ins[name] = release_label_marker(marker)
        except ValueError:
            continue
    return stand_ins

"""The units of ``dpmesh-export`` and which are pending: every labeled shard joined to its tar, index and manifest
record; those without an export marker of this config, relabeled since, or refused before (all with
``overwrite``)."""

import dataclasses
import json
import logging
from typing import Any

import pyarrow as pa

from pipelines.common.commit_log import refuse_other_units
from pipelines.common.intent import check_intent
from pipelines.common.label_set import (
    fetch_markers,
    listed_markers,
    read_markers,
)
from pipelines.common.shard_set import (
    MANIFEST_NAME,
    SHARD_TAR,
    folder_of,
    index_uri_of,
    shard_name_of,
)
from pipelines.config import ConfigError, ExportJobConfig
from pipelines.export.export_shard import export_config_hash, label_lineage
from pipelines.export.records import ExportTask
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage, join
from schemas import ANNOTATION_SCHEMA


logger = logging.getLogger(__name__)


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

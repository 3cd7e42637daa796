"""Planning a labeling run on the driver: which shards exist, what each one is, which still need labels.

A shard set is labeled only when it is complete (its ``_manifest.json`` exists and lists the tars found) unless
``input.allow_incomplete=true``; each shard's identity (tar size and sha1) comes from the manifest. A shard is
pending when it has no marker, or its marker records another identity (the shard was rebuilt since), or with
``overwrite=true``. Markers come from the output's marker index, the rest read in parallel (see
:mod:`pipelines.common.label_set`): a driver planning 100k shards must not spend an hour on GETs.

Labels follow the set's live samples (README "Growing a corpus"). The driver reads, once per shard set, what later
generations retired (``retired_keys_by_shard``) and the near-duplicate groups (``_near_duplicates.parquet``), and
hands each task its shard's part. A shard whose marker has its identity but another live record (``live_digest``)
is pending as an *update*: its committed rows are brought up to date without the model
(:mod:`pipelines.label.update`). On a grown set, only the new shards are labeled.
"""

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pipelines.common.commit_log import made_otherwise, refuse_other_units
from pipelines.common.intent import check_intent
from pipelines.common.label_set import read_markers
from pipelines.common.label_units import ShardTask, follows_live_record
from pipelines.common.shard_set import (
    MANIFEST_NAME,
    SHARD_TAR,
    folder_of,
    manifest_pixel_limit,
    near_duplicate_groups,
    retired_keys_by_shard,
    shard_name_of,
)
from pipelines.config import ConfigError, LabelJobConfig, config_hash
from pipelines.storage import ObjectInfo, Storage, join


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelPlan:
    """Every shard of the input (``shards``) and those this run labels or updates (``pending``), in name order;
    ``updates`` names the pending shards whose committed labels only need their live record brought up to date."""

    shards: list[ShardTask]
    pending: list[ShardTask]
    updates: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _SetRecord:
    """What a shard set's folder says about its shards: identities, pixel limit, and the live record per shard."""

    identities: dict[str, dict[str, Any]] | None
    pixel_limit: int | None = None
    retired: dict[str, frozenset[str]] = field(default_factory=dict)
    near_dup_groups: dict[str, dict[str, str]] = field(default_factory=dict)


def list_shard_objects(storage: Storage, shards: str) -> list[ObjectInfo]:
    """Every ``shard-NNNNNN.tar`` under a directory/prefix, or matching a glob, or the one shard named."""
    if SHARD_TAR.search(shards) and not _is_glob(shards):
        return [ObjectInfo(shards, storage.size(shards))] if storage.exists(shards) else []
    objects = storage.glob(shards) if _is_glob(shards) else storage.list(shards.rstrip("/") + "/")
    return sorted((o for o in objects if SHARD_TAR.search(o.uri)), key=lambda o: o.uri)


def _is_glob(uri: str) -> bool:
    return any(c in uri for c in "*?[")


def shard_tasks(cfg: LabelJobConfig, storage: Storage) -> list[ShardTask]:
    """The input's shards with their identities from the manifest(s) and their live records (retired keys,
    near-duplicate groups).

    Raises:
        ConfigError: no shards; a folder without ``_manifest.json``, tars the manifest does not list, or listed
            shards that are missing, unless ``input.allow_incomplete=true``.
    """
    listed = list_shard_objects(storage, cfg.input.shards)
    if not listed:
        raise ConfigError(f"input.shards={cfg.input.shards!r} holds no shard-NNNNNN.tar files")
    whole_folder = not _is_glob(cfg.input.shards) and not SHARD_TAR.search(cfg.input.shards)
    allow = cfg.input.allow_incomplete
    tasks = []
    for folder in sorted({folder_of(o.uri) for o in listed}):
        record = _set_record(storage, folder, allow)
        recorded = record.identities
        here = [o for o in listed if folder_of(o.uri) == folder]
        unlisted = [o.uri for o in here if recorded is not None and shard_name_of(o.uri) not in recorded]
        if unlisted and not allow:
            raise ConfigError(
                f"{unlisted[0]} (and {len(unlisted) - 1} more) is not in {join(folder, MANIFEST_NAME)}: the shard "
                "set changed after dpmesh-shard wrote it. Reshard it, or pass input.allow_incomplete=true"
            )
        missing = sorted(set(recorded or ()) - {shard_name_of(o.uri) for o in here}) if whole_folder else []
        if missing and not allow:
            raise ConfigError(
                f"{join(folder, MANIFEST_NAME)} lists {len(missing)} shards that are not there (e.g. {missing[0]}); "
                "pass input.allow_incomplete=true to label the rest"
            )
        for obj in here:
            name = shard_name_of(obj.uri)
            identity = (recorded or {}).get(name) or {"tar_bytes": obj.size, "tar_sha1": None}
            retired, groups = record.retired.get(name, frozenset()), record.near_dup_groups.get(name, {})
            tasks.append(ShardTask(obj.uri, name, identity, record.pixel_limit, retired, groups))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"input.shards={cfg.input.shards!r} matches shards of the same name in several folders")
    return sorted(tasks, key=lambda t: t.name)


def _set_record(storage: Storage, folder: str, allow_incomplete: bool) -> _SetRecord:
    """The folder's manifest record of its shards (``{shard name: {"tar_bytes", "tar_sha1"}}``, None without a
    manifest, if allowed), the ``shard.max_image_pixels`` the set was made with (None when unknown), and each shard's
    live record: the keys later generations retired and the near-duplicate groups of its samples."""
    try:
        manifest = json.loads(storage.read_bytes(join(folder, MANIFEST_NAME)))
    except FileNotFoundError:
        if allow_incomplete:
            logger.warning("%s has no %s: labeling it as allowed (input.allow_incomplete)", folder, MANIFEST_NAME)
            return _SetRecord(None)
        raise ConfigError(
            f"{folder} has no {MANIFEST_NAME}: its dpmesh-shard run did not finish, so the shard set may be "
            "incomplete. Rerun dpmesh-shard, or pass input.allow_incomplete=true to label what is there"
        ) from None
    shards = {
        entry["shard"]: {"tar_bytes": int(entry["tar_bytes"]), "tar_sha1": entry.get("tar_sha1")}
        for entry in manifest.get("shards", [])
    }
    retired = retired_keys_by_shard(storage, folder, manifest)
    return _SetRecord(shards, manifest_pixel_limit(manifest), retired, near_duplicate_groups(storage, folder))


def plan_shards(cfg: LabelJobConfig, storage: Storage, calibration_sha256: str | None = None) -> LabelPlan:
    """Every shard and those to label now; ``calibration_sha256`` is that of the ``filter.calibration`` file's
    content (None without one).

    Raises:
        ConfigError: see :func:`shard_tasks`; or markers of a different config or calibration in the output
            without ``overwrite``.
    """
    tasks = shard_tasks(cfg, storage)
    if cfg.overwrite:
        return LabelPlan(tasks, tasks)
    markers = read_markers(storage, cfg.output)
    if not markers:  # nothing committed yet: the intent says whose unfinished files the output may hold
        check_intent(storage, cfg.output, config_hash(cfg), "unfinished labels")
    foreign, differs = made_otherwise(markers, config_hash(cfg), calibration_sha256)
    if foreign:
        raise refuse_other_units(cfg.output, "labels", foreign, differs)
    pending = [t for t in tasks if _pending(markers.get(t.name), t)]
    updates = [t.name for t in pending if t.name in markers and markers[t.name].get("shard_identity") == t.identity]
    changed = sum(1 for t in pending if t.name in markers) - len(updates)
    if changed:
        logger.info("%d labeled shards changed since (their identity differs from the marker): relabeling", changed)
    if updates:
        logger.info("%d labeled shards have another live record (retired samples, near-duplicates)", len(updates))
    return LabelPlan(tasks, pending, updates)


def _pending(marker: dict[str, Any] | None, task: ShardTask) -> bool:
    """Whether a shard needs work: no marker, another identity (label), or another live record (update). The step
    where it runs tells the two apart again from the marker itself (:mod:`pipelines.label.label_shard`)."""
    if marker is None or marker.get("shard_identity") != task.identity:
        return True
    return not follows_live_record(marker, task)

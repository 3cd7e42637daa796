"""What ``dpmesh-export`` checks and takes from the shard set's record (its ``_manifest.json`` and the files it names),
on the driver, before any shard is exported.

**The labels must follow the shard set** (:func:`check_labels_follow`). A shard set grows by generations
(``dpmesh-shard mode=append``: new shards, and samples of older shards retired when their file changed or left);
``dpmesh-label`` run again labels the new shards and brings the older ones up to the live set. An export of labels
that lag the set would miss the new images and ship retired ones (a changed image's old version beside its new one),
so planning compares the label markers with the manifest:

* a generation with shards of which none is labeled, newer than every labeled shard: the labels predate it
  (``dpmesh-shard mode=append`` ran since): **refused**, in one line naming ``dpmesh-label``;
* a labeled shard whose labels do not follow the set's live record: its marker's ``live_digest`` (the digest of
  the retired keys and near-duplicate groups it was labeled with, :attr:`~pipelines.common.label_units.ShardTask.
  live_digest`) is not the one the set's retired files and ``_near_duplicates.parquet`` give now, or, for a marker
  written before labels followed the live set, it counts fewer retired samples (``counts.images_retired``) than the
  set's generations retired from it: its rows hold samples that are no longer live, or stale ``near_dup_group`` s:
  **refused** likewise. A ``dpmesh-refilter`` output carries its labels' rows and their ``live_digest`` (in its
  ``label_run``), and is checked by that.
* live shards without labels otherwise (a label run not finished, or killed): the labels are **incomplete**: a
  warning naming how many; the labeled shards are exported, and a rerun after the labels are finished exports the
  rest (only those).

A labeled shard whose tar is not the one the manifest lists stays a per-shard refusal (``lineage_mismatch``,
:mod:`pipelines.export.checks`): labels pointed at another shard set export what still matches.

**What the card reports of the set** (:func:`shard_set_record`): the benchmark overlap guard's count over every
generation (``counts.benchmark_overlap``) and its list (``exclude``).
"""

import logging
from typing import Any

from pipelines.common.label_set import LABEL_RUN
from pipelines.common.label_units import IMAGES_RETIRED, ShardTask
from pipelines.common.shard_set import manifest_generations, retired_keys_by_shard
from pipelines.config import ConfigError
from pipelines.storage import Storage


logger = logging.getLogger(__name__)


def check_labels_follow(
    storage: Storage,
    manifests: dict[str, dict[str, Any]],
    label_markers: dict[str, dict[str, Any]],
    near_dups: dict[str, dict[str, dict[str, str]]],
    labels: str,
    shards: str,
) -> list[str]:
    """Refuses labels that lag their shard set (module docstring); returns the live shards without labels (logged as
    a warning when there are any).

    Args:
        manifests: The shard set manifests by folder (:func:`pipelines.export.plan.read_manifests`).
        label_markers: The label markers (or their index entries) by shard name.
        near_dups: Per manifest folder, the set's near-duplicate groups ``{shard: {key: group}}``
            (:func:`~pipelines.common.shard_set.near_duplicate_groups`; may be empty when no marker records a
            ``live_digest``).
        labels, shards: ``input.labels`` and ``input.shards``, for the message.

    Raises:
        ConfigError: one line naming the generation or shard the labels lag and the ``dpmesh-label`` command.
    """
    relabel = (
        f"run dpmesh-label input.shards={shards} output={labels} (it labels the new shards and brings the others up "
        "to date), then export again"
    )
    unlabeled: list[str] = []
    for folder, manifest in sorted(manifests.items()):
        generations = [g for g in manifest_generations(manifest) if g.get("shards")]
        labeled_generations = [g["generation"] for g in generations if any(s in label_markers for s in g["shards"])]
        if not labeled_generations:
            continue  # no label of this set (labels of another folder of input.shards): nothing to compare
        newest = max(labeled_generations)
        behind = [g for g in generations if g["generation"] > newest]
        if behind:
            first = behind[0]
            raise ConfigError(
                f"input.labels={labels!r} lags the shard set {folder}: generation {first['generation']} "
                f"({len(first['shards'])} shards, e.g. {first['shards'][0]}) is not labeled; {relabel}"
            )
        retired = retired_keys_by_shard(storage, folder, manifest)
        groups = near_dups.get(folder) or {}
        stale = sorted(
            shard
            for g in generations
            for shard in g["shards"]
            if shard in label_markers
            and not _follows(label_markers[shard], shard, retired.get(shard, frozenset()), groups.get(shard) or {})
        )
        if stale:
            raise ConfigError(
                f"input.labels={labels!r} lags the shard set {folder}: {len(stale)} labeled shards (e.g. {stale[0]}) "
                f"do not follow its live samples (a later generation retired some, or regrouped their "
                f"near-duplicates); {relabel}"
            )
        unlabeled += [s for g in generations for s in g["shards"] if s not in label_markers]
    if unlabeled:
        logger.warning(
            "%d live shards of the shard set have no labels yet (e.g. %s): exporting the labeled ones; once "
            "dpmesh-label has finished, a rerun of this export exports the rest",
            len(unlabeled),
            min(unlabeled),
        )
    return sorted(unlabeled)


def _follows(marker: dict[str, Any], shard: str, retired: frozenset[str], groups: dict[str, str]) -> bool:
    """Whether a labeled shard's marker follows the set's live record of it: the same ``live_digest`` (the label
    job's own digest, :attr:`~pipelines.common.label_units.ShardTask.live_digest`), or for a marker written before
    labels recorded one, at least as many retired samples counted as the set retired from the shard. A
    ``dpmesh-refilter`` output follows through its labels: the ``live_digest`` its label run carries (one refiltered
    from labels that recorded none is taken as it is)."""
    if LABEL_RUN in marker:
        carried = marker[LABEL_RUN] or {}
        if "live_digest" not in carried:
            return True
        marker = {"live_digest": carried["live_digest"]}
    if "live_digest" in marker:
        live = ShardTask(uri="", name=shard, identity={}, retired=retired, near_dup_groups=groups)
        return bool(marker["live_digest"] == live.live_digest)
    return int((marker.get("counts") or {}).get(IMAGES_RETIRED) or 0) >= len(retired)


def shard_set_record(manifests: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The card's record of the shard set(s): ``{"benchmark_overlap": <images left out, every generation>,
    "exclude": [<each benchmark list's summary: source, images, threshold, digest>]}``; None when no manifest records
    the guard (a set made before it existed)."""
    recorded = [m for m in manifests.values() if "exclude" in m]
    if not recorded:
        return None
    overlap = 0
    for manifest in recorded:
        listed = manifest.get("generations")
        per_generation = listed if isinstance(listed, list) and listed else [manifest]
        overlap += sum(int((g.get("counts") or {}).get("benchmark_overlap") or 0) for g in per_generation)
    return {"benchmark_overlap": overlap, "exclude": [m["exclude"] for m in recorded if m.get("exclude")]}

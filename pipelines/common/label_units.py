"""A label set's unit, shared by the jobs that write label sets (``dpmesh-label``, ``dpmesh-refilter``): the shard
to label (:class:`ShardTask`), what reading it found (:class:`ShardReport`), and the ``_done/`` marker that commits
it (:func:`shard_marker`).

A label set follows its shard set's **live** samples (README "Growing a corpus"): a task carries what later
generations retired from its shard and the near-duplicate groups of its samples, and the marker records their
digest (``live_digest``), so a shard whose live record changed since it was labeled is brought up to date.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


IMAGES_RETIRED = "images_retired"
"""Marker and summary count: samples of the shard that later generations retired (superseded or removed). They are
never labeled, and no count of the live samples (``images_in`` ...) includes them."""
PERSONS_RETIRED = "persons_retired"
"""Marker and summary count: the persons of the retired samples, as the shard's index lists them (``n_persons``: the
annotated persons; a retired image is never read, so no detector runs on it)."""
LIVE_UPDATE = "live_update"
"""Marker field (True) of a shard brought up to its live record from its committed rows, without the model: its
``elapsed_s`` and ``model_hosts`` are those of the run that labeled the rows."""


@dataclass(frozen=True)
class ShardTask:
    """One shard to label: the unit of work, of commit and of resume.

    Attributes:
        uri: The shard tar.
        name: ``shard-NNNNNN``.
        identity: What the shard is: ``{"tar_bytes": int, "tar_sha1": str | None}`` from the shard set's manifest
            (``tar_sha1`` None when labeled without one). The marker records it, so a changed shard is relabeled.
        max_image_pixels: The pixel limit its shard set was made with (``shard.max_image_pixels`` in the
            manifest); None when the manifest does not say.
        retired: Keys of the shard's samples that later generations retired (``retired_keys_by_shard``): left out
            of the labels.
        near_dup_groups: ``{key: group}`` of the shard's samples in a near-duplicate group (``_near_duplicates
            .parquet``; a group is named by its smallest key): the rows' ``near_dup_group``.
    """

    uri: str
    name: str
    identity: dict[str, Any]
    max_image_pixels: int | None = None
    retired: frozenset[str] = frozenset()
    near_dup_groups: Mapping[str, str] = field(default_factory=dict)

    @property
    def live_digest(self) -> str | None:
        """SHA-256 (hex) of the shard's live record (its retired keys and near-duplicate groups); None when it has
        neither, as for a shard of a set that never grew (and in markers written before live records existed)."""
        if not self.retired and not self.near_dup_groups:
            return None
        record = {"retired": sorted(self.retired), "near_dup_groups": sorted(self.near_dup_groups.items())}
        return hashlib.sha256(json.dumps(record, separators=(",", ":")).encode()).hexdigest()


def follows_live_record(marker: Mapping[str, Any], task: ShardTask) -> bool:
    """Whether a shard's committed labels follow the task's live record (retired keys, near-duplicate groups)."""
    return marker.get("live_digest") == task.live_digest


@dataclass
class ShardReport:
    """The per-shard counts the reader keeps (``images_in = images_ok + images_errored``, over live samples; plus
    :data:`IMAGES_RETIRED` and :data:`PERSONS_RETIRED` for a shard with retired samples) and what it read."""

    counts: Counter[str] = field(
        default_factory=lambda: Counter({"images_in": 0, "images_ok": 0, "images_errored": 0, "persons_in": 0})
    )
    tar_bytes: int = 0
    tar_sha1: str = ""
    detector_models: dict[str, str] = field(default_factory=dict)


def shard_marker(
    task: ShardTask,
    report: ShardReport,
    accepted: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    run_info: dict[str, str],
) -> dict[str, Any]:
    """The ``_done/<shard>.json`` document: what the shard was, and per-shard counts that reconcile.

    ``shard_identity`` is the manifest's record of the tar the run planned to label (what the next run compares
    to decide whether the shard changed); ``tar_read`` is what was actually read. ``model_ids`` and ``body_models``
    (``{name: sha256}``) are the distinct model lineage of the shard's labels, from its rows (so ``dpmesh-refilter``,
    which carries the rows, records the same). ``live_digest`` is the task's (:attr:`ShardTask.live_digest`); a shard
    with retired samples counts them apart (:data:`IMAGES_RETIRED`, :data:`PERSONS_RETIRED`): every other count is
    over its live samples, and those reconcile.
    """
    person_errors = [e for e in errors if e["person_idx"] is not None]
    retired = (IMAGES_RETIRED, PERSONS_RETIRED)
    counts = {
        **{k: report.counts[k] for k in ("images_in", "images_ok", "images_errored", "persons_in")},
        "persons_accepted": len(accepted),
        "persons_rejected": len(rejected),
        "persons_errored": len(person_errors),
        # Only for a shard with retired samples (the reader counts them then): a set that never grew keeps the counts
        # it always had. A job carrying a label set's rows carries them by putting them in its report.
        **({k: report.counts[k] for k in retired} if IMAGES_RETIRED in report.counts else {}),
    }
    labels = accepted + rejected
    body_models = {row["body_model"]: row.get("body_model_sha256") for row in labels if row.get("body_model")}
    persons_ok = counts["persons_in"] == len(accepted) + len(rejected) + len(person_errors)
    images_ok = counts["images_in"] == counts["images_ok"] + counts["images_errored"]
    return {
        "shard": task.name,
        "shard_uri": task.uri,
        "shard_identity": task.identity,
        "live_digest": task.live_digest,
        "tar_read": {"tar_bytes": report.tar_bytes, "tar_sha1": report.tar_sha1},
        **({"detector_models": dict(sorted(report.detector_models.items()))} if report.detector_models else {}),
        **run_info,
        "model_ids": sorted({row["model_id"] for row in labels if row.get("model_id")}),
        "body_models": dict(sorted(body_models.items())),
        "counts": counts,
        "reconciled": persons_ok and images_ok,
        "rejected_by_reason": dict(sorted(Counter(r for row in rejected for r in row["reasons"]).items())),
        "errors_by_stage": dict(sorted(Counter(e["stage"] for e in errors).items())),
        "errors_by_reason": dict(sorted(Counter(e["reason"] for e in errors).items())),
        "tiers": dict(sorted(Counter(row["quality_tier"] for row in accepted + rejected).items())),
    }

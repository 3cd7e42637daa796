"""A label set's unit, shared by the jobs that write label sets (``dpmesh-label``, ``dpmesh-refilter``): the shard
to label (:class:`ShardTask`), what reading it found (:class:`ShardReport`), and the ``_done/`` marker that commits
it (:func:`shard_marker`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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
    """

    uri: str
    name: str
    identity: dict[str, Any]
    max_image_pixels: int | None = None


@dataclass
class ShardReport:
    """The per-shard counts the reader keeps (``images_in = images_ok + images_errored``) and what it read."""

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
    which carries the rows, records the same).
    """
    person_errors = [e for e in errors if e["person_idx"] is not None]
    counts = {
        **{k: report.counts[k] for k in ("images_in", "images_ok", "images_errored", "persons_in")},
        "persons_accepted": len(accepted),
        "persons_rejected": len(rejected),
        "persons_errored": len(person_errors),
    }
    labels = accepted + rejected
    body_models = {row["body_model"]: row.get("body_model_sha256") for row in labels if row.get("body_model")}
    persons_ok = counts["persons_in"] == len(accepted) + len(rejected) + len(person_errors)
    images_ok = counts["images_in"] == counts["images_ok"] + counts["images_errored"]
    return {
        "shard": task.name,
        "shard_uri": task.uri,
        "shard_identity": task.identity,
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

"""Bringing a committed shard up to its live record without the model (README "Growing a corpus").

A shard labeled before a later generation retired some of its samples, or before its near-duplicate groups changed,
keeps its labels: :func:`update_shard` reads its committed rows back, drops the rows and error rows of its retired
samples, and commits the rest through :class:`~pipelines.label.write.LabeledShardWriter`, which sets
``near_dup_group`` from the task's groups, recomputes the statistics, writes the three files and then the marker
(last, with the task's ``live_digest``). The rows are those a full label of the live samples writes: a retired
sample is never labeled, and the rows of the others are the same rows.

The counts are the earlier marker's, less what the retired samples had contributed; each is derived from the
earlier marker, the live rows and the shard's index only, never from the rows being dropped. So a kill after some
files were rewritten and before the marker resumes to the same files and marker: the next run finds the earlier
marker and updates again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipelines.common.label_set import ERRORS_FOLDER, ROW_FOLDERS
from pipelines.common.label_units import IMAGES_RETIRED, ShardReport, ShardTask
from pipelines.label.read import errored_images, read_shard_index, retired_counts
from pipelines.label.write import LabeledShardWriter
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage, join
from schemas import SCHEMA_VERSION


def update_shard(
    storage: Storage, output: str, task: ShardTask, committed: dict[str, Any], writer: LabeledShardWriter
) -> dict[str, Any]:
    """Commits the shard's labels under ``output`` again, following ``task``'s live record; returns the marker.

    ``committed`` is the shard's marker, of the same identity and config: its counts, what was read, how long it took
    and how its models were hosted (``elapsed_s``, ``model_hosts``) carry over, since no model runs.
    """
    accepted, rejected = (_live(storage, output, folder, task, "image_key") for folder in ROW_FOLDERS)
    errors = _live(storage, output, ERRORS_FOLDER, task, "key")
    report = live_report(task, committed, read_shard_index(storage, task.uri), accepted, rejected, errors)
    return writer.write(
        task, report, accepted, rejected, errors, committed.get("elapsed_s"), committed.get("model_hosts"),
        live_update=True,
    )  # fmt: skip


def _live(storage: Storage, output: str, folder: str, task: ShardTask, key_column: str) -> list[dict[str, Any]]:
    """The shard's committed rows of ``folder`` less those of retired samples (a shard-level error row, without a
    key, stays). Rows of an earlier schema version get the columns it lacked as nulls, and this version's number."""
    table = read_parquet_bytes(storage.read_bytes(join(output, folder, f"{task.name}.parquet")))
    return [
        {**row, "schema_version": SCHEMA_VERSION} for row in table.to_pylist() if row[key_column] not in task.retired
    ]


def live_report(
    task: ShardTask,
    committed: dict[str, Any],
    index: dict[str, dict[str, Any]] | None,
    accepted: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> ShardReport:
    """The counts of the shard's live samples, from its earlier marker (``committed``) and its live rows.

    * Images: the samples retired since that marker (its ``images_retired`` grew by as many) leave ``images_in``;
      ``images_errored`` is the live images whose error rows fail the whole image (:func:`errored_images`, the
      reader's rule), and the retired images not among them leave ``images_ok``.
    * Persons: every person the reader counted is one row (accepted, rejected or a person error row) keyed by its
      image, so the persons of the dropped rows leave ``persons_in``: the rows the marker counted less those kept.

    An earlier marker that reconciled gives counts that reconcile.
    """
    before = committed["counts"]
    retired = retired_counts(task, index)
    newly_retired = retired[IMAGES_RETIRED] - int(before.get(IMAGES_RETIRED, 0))
    errored = len(errored_images(errors))
    retired_errored = int(before["images_errored"]) - errored
    rows_before = sum(int(before[k]) for k in ("persons_accepted", "persons_rejected", "persons_errored"))
    rows_kept = len(accepted) + len(rejected) + sum(1 for e in errors if e["person_idx"] is not None)
    counts = Counter(
        {
            "images_in": int(before["images_in"]) - newly_retired,
            "images_ok": int(before["images_ok"]) - (newly_retired - retired_errored),
            "images_errored": errored,
            "persons_in": int(before["persons_in"]) - (rows_before - rows_kept),
            **retired,
        }
    )
    read = committed.get("tar_read") or {}
    report = ShardReport(counts, int(read.get("tar_bytes", 0)), str(read.get("tar_sha1", "")))
    report.detector_models.update(committed.get("detector_models") or {})
    return report

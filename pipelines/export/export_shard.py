"""Exporting one labeled shard: the unit of work, of commit and of resume of ``dpmesh-export``.

:class:`ExportShardFn` takes an :class:`~pipelines.export.records.ExportTask` and, inside one element, checks that the
shard can be trusted, selects its rows, reads their images (from the tar by ``tar_offset``, or for a rebuild from a
labels release from ``input.images``, :mod:`pipelines.export.image_sources`), writes the format's files and then
``_done/shard-NNNNNN.json``, its marker, last. Nothing a user's files hold is trusted before
:mod:`pipelines.export.checks` has passed it:

* A shard whose tar is not the one its labels were made from (``lineage_mismatch``), whose label marker says
  persons were accepted while its annotations are gone (``labels_missing``), or whose labels, index or output path
  cannot be used (``labels_unreadable``, ``index_unreadable``, ``unsafe_path``) exports nothing: its marker records
  ``shard_error`` and counts every accepted row under that reason. A rerun tries such a shard again.
* A row with a key that is not of the grammar, a null / NaN / inf label value or a duplicated ``sample_id`` is an
  error entry (``errors``); an image that cannot be read is a skip entry (``skipped_images``); an index row with a
  bad key is never used, not even to name a file to delete.

Every selected person is exported or counted under exactly one reason (``skipped_by_reason``), so a marker's counts
reconcile: ``rows_selected = persons + persons_skipped`` (``reconciled``).

A rebuild from a labels release (``from_release``) runs the same steps on the release's shards: the release's marker
stands in for the label marker (:func:`~pipelines.export.release.release_label_marker`: the same label lineage, so
the rebuild's marker records what a direct export's does, plus the release's config hash under ``release``), there
is no tar to check, and each image is proven by the release's size and sha1 instead. A shard the release refused is
refused again with the release's reason.
"""

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

import pipelines
from dpmesh_core.confidence import FilterThresholds
from pipelines.common.commit_log import committed_marker
from pipelines.common.image_decode import ImageDecodeError
from pipelines.common.label_set import LABEL_RUN
from pipelines.common.marker_index import marker_uri
from pipelines.common.metrics import EXPORT_METRICS
from pipelines.common.reviews import Decision, apply_decisions
from pipelines.common.safe_paths import UnsafeName, safe_join
from pipelines.common.shard_members import decode_upright, encode_jpeg
from pipelines.config import ConfigError, ExportJobConfig, config_hash, config_to_dict
from pipelines.export.checks import (
    CHECKED_COLUMNS,
    IMAGE_UNREADABLE,
    LABELS_MISSING,
    LABELS_UNREADABLE,
    LINEAGE_MISMATCH,
    UNSAFE_PATH,
    ShardRefused,
    check_rows,
    lineage_problem,
    skip_entry,
)
from pipelines.export.formats import WRITERS, ShardWriter
from pipelines.export.image_sources import FolderImages, ImageSource, ShardTarImages
from pipelines.export.records import ExportImage, ExportPerson, ExportTask
from pipelines.export.release import release_label_marker
from pipelines.export.selection import select_rows
from pipelines.export.splits import NEAR_DUP_COLUMN, SplitTally, Splitter, near_dup_digest
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage
from schemas import ANNOTATION_SCHEMA, QualityTier
from schemas.annotations import REVIEW_ACCEPT


# What of a label marker decides a labeled shard's rows: the tar labeled, the shard set's live record the rows follow
# (retired samples, near-duplicate groups: README "Growing a corpus"), the labeling config, the calibration's content
# and, for a dpmesh-refilter output, the labeling run behind it. Each is in the markers' index, so planning reads them
# for 100k shards without a GET per marker. An export marker records them; a difference means the shard was relabeled
# (or its labels brought up to date) since it was exported.
LABEL_LINEAGE = ("shard_identity", "live_digest", "config_hash", "calibration_sha256", LABEL_RUN)
NEAR_DUPS = "near_dup_groups_sha256"
"""Export marker field, with ``split=`` when the near-duplicate groups came from the shard set's file: their digest
(:func:`~pipelines.export.splits.near_dup_digest`); absent otherwise."""

# Keys that do not change what is written: where and how the job runs, and where its labels and images come from
# (a rebuild from a release writes what a direct export of the same config writes).
# The review files are in it by their decisions' content (`ReviewSet.digest`), not by their paths.
_NOT_CONTENT = (
    "input", "from_release", "output", "runner", "storage", "log_level", "overwrite", "review", "review_conflicts",
)  # fmt: skip
# Options whose default was added after exports were made: left out of the hash at their default, so an output made
# before they existed is still this config's (and a box_scale other than 1.0, or any split, is another config).
_NEUTRAL_DEFAULTS: dict[str, Any] = {"export.box_scale": 1.0, "split": {"fractions": None, "group_by": None}}
# Label columns the export reads besides the checked values: ids, verdict (an annotation file lacking one is refused).
_ID_COLUMNS = ("sample_id", "image_key", "person_idx", "quality_tier")


def export_config_hash(cfg: ExportJobConfig, review_digest: str | None = None) -> str:
    """Fingerprint of what decides the exported bytes (format, selection, image options) and, with ``review=``,
    the review decisions (``review_digest``: `ReviewSet.digest`). Without decisions it is the hash it always was."""
    options = {"export.box_scale": cfg.export.box_scale, "split": config_to_dict(cfg.split)}
    neutral = tuple(key for key, default in _NEUTRAL_DEFAULTS.items() if options[key] == default)
    plain = config_hash(cfg, exclude=(*_NOT_CONTENT, *neutral))
    if review_digest is None:
        return plain
    return hashlib.sha256(f"{plain}/review/{review_digest}".encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ShardReviews:
    """What ``review=`` gives the shard step: the agreed decisions by shard and sample id, the thresholds that grade
    a reviewed accept (the label run's tiers' filter) and the decisions' digest (in the config hash)."""

    decisions: Mapping[str, Mapping[str, Decision]]
    thresholds: FilterThresholds
    digest: str | None


def label_lineage(label_marker: dict[str, Any]) -> dict[str, Any]:
    """The :data:`LABEL_LINEAGE` fields of a label marker (None where it has none)."""
    return {k: label_marker.get(k) for k in LABEL_LINEAGE}


def current_source(label_marker: dict[str, Any], task: ExportTask | None = None) -> dict[str, Any]:
    """What decides a unit's rows and where they go, from its label marker (or a rebuild's stand-in for one): the
    label lineage, for a rebuild the release's config hash, and with ``split=`` the digest of the near-duplicate
    groups the task carries from the shard set's file (None where there is none)."""
    near_dups = near_dup_digest(task.near_dup_groups) if task is not None else None
    return {"label": label_lineage(label_marker), "release": label_marker.get("release"), "near_dups": near_dups}


def recorded_source(export_marker: dict[str, Any]) -> dict[str, Any]:
    """The same, as an export marker recorded it: a difference from :func:`current_source` means the unit's labels
    (or its release, or its near-duplicate groups) changed since it was exported."""
    return {
        "label": label_lineage(export_marker.get("label") or {}),
        "release": export_marker.get("release"),
        "near_dups": export_marker.get(NEAR_DUPS),
    }


def group_by_image(persons: list[ExportPerson]) -> dict[str, list[ExportPerson]]:
    """Persons by image key, images in the order first seen (rows come in image-key order; a hand-edited file that
    interleaves images still gives each image one group)."""
    images: dict[str, list[ExportPerson]] = {}
    for person in persons:
        images.setdefault(person.image_key, []).append(person)
    return images


class ExportShardFn(beam.DoFn):
    """Input: an :class:`ExportTask`. Writes the shard's export files, then its marker; outputs the marker."""

    def __init__(self, cfg: ExportJobConfig, max_image_pixels: int, reviews: ShardReviews | None = None) -> None:
        self._cfg = cfg
        self._max_pixels = max_image_pixels
        self._reviews = reviews
        self._hash = export_config_hash(cfg, reviews.digest if reviews is not None else None)
        self._splitter = Splitter(cfg.split) if cfg.split.enabled else None

    def setup(self) -> None:
        self._storage = Storage(self._cfg.storage)

    def process(self, task: ExportTask) -> Iterator[dict[str, Any]]:
        label_marker: dict[str, Any] = {}
        table: pa.Table | None = None
        try:
            label_marker = self._label_marker(task)
            if (committed := self._committed(task, label_marker)) is not None:
                yield committed  # a retried or recomputed work item: the shard is exported, its files stay
                return
            if error := label_marker.get("release_error"):  # the release holds nothing of this shard
                raise ShardRefused(error["reason"], f"refused when the release was made: {error.get('error')}")
            table = self._labels(task, label_marker)
            if task.images_folder is None:  # a rebuild has no tar: each image is proven by the release's sha1
                self._check_lineage(task, label_marker)
            table, applied = self._reviewed(task, table)
            marker = self._export(task, label_marker, table)
            if self._reviews is not None:
                marker["review"] = applied
        except ShardRefused as refused:
            marker = self._refused(task, label_marker, table, refused)
        self._storage.write_bytes(marker_uri(self._cfg.output, task.name), json.dumps(marker, indent=1).encode())
        yield marker

    def _committed(self, task: ExportTask, label_marker: dict[str, Any]) -> dict[str, Any] | None:
        """The shard's export marker when it already covers these labels under this config (checked again where
        the unit runs: planning may predate a commit by an earlier attempt); None under ``overwrite``."""
        if self._cfg.overwrite:
            return None
        committed = committed_marker(self._storage, self._cfg.output, task.name, {"config_hash": self._hash})
        if committed is None or committed.get("shard_error"):
            return None
        if recorded_source(committed) != current_source(label_marker, task):
            return None
        Metrics.counter(EXPORT_METRICS, "shards_already_committed").inc()
        return committed

    def _label_marker(self, task: ExportTask) -> dict[str, Any]:
        """The shard's label marker; for a rebuild, the stand-in made from the release's marker."""
        release = self._cfg.from_release
        data = self._storage.read_bytes(marker_uri(release or str(self._cfg.input.labels), task.name))
        try:
            marker = json.loads(data)
        except ValueError as exc:
            raise ShardRefused(LABELS_UNREADABLE, f"the label marker is not JSON: {exc}") from None
        if release:
            try:
                return release_label_marker(marker)
            except ValueError as exc:
                raise ShardRefused(LABELS_UNREADABLE, str(exc)) from None
        if not isinstance(marker, dict):
            raise ShardRefused(LABELS_UNREADABLE, "the label marker is not a JSON object")
        return marker

    def _labels(self, task: ExportTask, label_marker: dict[str, Any]) -> pa.Table:
        """The shard's accepted rows; an empty table when the label run accepted none."""
        try:
            data = self._storage.read_bytes(task.labels_uri)  # storage faults propagate: the runner retries
        except FileNotFoundError:
            accepted = _accepted(label_marker)
            if accepted:
                raise ShardRefused(
                    LABELS_MISSING,
                    f"the label marker says {accepted} persons were accepted but {task.labels_uri} is missing",
                ) from None
            return ANNOTATION_SCHEMA.empty_table()
        table = _parquet(data, task.labels_uri, LABELS_UNREADABLE)
        missing = [name for name in (*_ID_COLUMNS, *CHECKED_COLUMNS) if name not in table.column_names]
        if missing:
            raise ShardRefused(LABELS_UNREADABLE, f"{task.labels_uri} lacks the column(s) {', '.join(missing)}")
        return table

    def _reviewed(self, task: ExportTask, table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        """The shard's rows with its review decisions applied (`apply_decisions`, before the selection): a reviewed
        accept of a row the filter rejected is taken from ``rejected/`` and kept in the tier its confidence earns, a
        reviewed reject leaves the rows (reason ``reviewed_reject``: never exported); the kept rows carry the
        decision in ``review``. Returns the rows and the counts (`pipelines.common.reviews.APPLIED_COUNTS`)."""
        decisions = dict(self._reviews.decisions.get(task.name) or {}) if self._reviews is not None else {}
        if not decisions or self._reviews is None:
            return table, {}
        held = set(table["sample_id"].to_pylist())
        accepts = {i for i, d in decisions.items() if d.decision == REVIEW_ACCEPT and i not in held}
        if accepts:
            table = self._with_rejected(task, table, accepts)
        for name in ("review", "reasons"):  # labels written before the column: none reviewed, no reasons
            if name not in table.column_names:
                field = ANNOTATION_SCHEMA.field(name)
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        table, applied = apply_decisions(table, decisions, self._reviews.thresholds)
        rejected = pc.equal(table["quality_tier"], pa.scalar(QualityTier.REJECT.value))
        kept = table.filter(pc.invert(pc.fill_null(rejected, False)))  # a null tier is the row checks' to judge
        return kept, applied

    def _with_rejected(self, task: ExportTask, table: pa.Table, accepts: set[str]) -> pa.Table:
        """``table`` with the ``rejected/`` rows of the shard whose sample ids are in ``accepts`` (reviewed accepts
        of rows the filter rejected), in (image key, person index) order."""
        uri = safe_join(str(self._cfg.input.labels), "rejected", f"{task.name}.parquet", what="shard name")
        try:
            data = self._storage.read_bytes(uri)
        except FileNotFoundError:  # no rejected rows: the decisions count as not found
            return table
        rejected = _parquet(data, uri, LABELS_UNREADABLE)
        rejected = rejected.filter(pc.is_in(rejected["sample_id"], value_set=pa.array(sorted(accepts))))
        if not rejected.num_rows:
            return table
        try:
            rejected = rejected.select(table.column_names).cast(table.schema)
        except (KeyError, ValueError, pa.ArrowException) as exc:
            raise ShardRefused(LABELS_UNREADABLE, f"{uri} does not hold the annotations' columns: {exc}") from None
        both = pa.concat_tables([table, rejected])
        return both.sort_by([("image_key", "ascending"), ("person_idx", "ascending")])

    def _check_lineage(self, task: ExportTask, label_marker: dict[str, Any]) -> None:
        try:
            problem = lineage_problem(self._storage, task.tar_uri, task.tar_bytes, task.manifest_entry, label_marker)
        except (AttributeError, TypeError, ValueError) as exc:  # a hand-made marker: identity fields of other types
            raise ShardRefused(LABELS_UNREADABLE, f"the label marker's shard_identity is unusable: {exc}") from None
        if problem:
            raise ShardRefused(LINEAGE_MISMATCH, problem)

    def _source(self, task: ExportTask) -> ImageSource:
        """Where the unit's images come from: the shard tar, or a rebuild's folder of files."""
        if task.images_folder is None:
            return ShardTarImages(self._storage, task)
        return FolderImages(self._storage, task)

    def _export(self, task: ExportTask, label_marker: dict[str, Any], table: pa.Table) -> dict[str, Any]:
        cfg = self._cfg
        try:
            selected = select_rows(table, cfg.select)
        except ConfigError as exc:  # launch checked the first shard's schema; this shard's differs
            raise ShardRefused(LABELS_UNREADABLE, str(exc)) from None
        writable, errors = check_rows(selected)
        try:
            images = group_by_image(ExportPerson.from_table(writable))
        except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
            raise ShardRefused(LABELS_UNREADABLE, f"{task.labels_uri} does not hold annotation rows: {exc}") from None
        source = self._source(task)
        index, index_skipped = source.table()
        skipped = list(index_skipped)
        placed = self._placement(task, table, images)
        writers = self._writers(task)
        tally = SplitTally() if self._splitter is not None else None
        exported: list[ExportPerson] = []
        written: dict[str, set[str]] = {folder: set() for folder in writers}  # image keys, by split ("" for none)
        try:
            for key, data, record in source.read(images, index, skipped):
                people = images[key]
                group, group_source, split = placed.get(key, (key, "", ""))
                writer = writers[split]
                try:  # the label run decoded these bytes (they are proven the same): a failure means they changed
                    pixels = decode_upright(data, max_image_pixels=self._max_pixels)
                except ImageDecodeError as exc:
                    skipped.append(skip_entry(key, IMAGE_UNREADABLE, str(exc), len(people)))
                    continue
                jpeg = encode_jpeg(pixels, cfg.export.jpeg_quality) if writer.WRITES_IMAGES else b""
                try:
                    writer.add(ExportImage(key, pixels, jpeg, people, record))
                except UnsafeName as exc:  # e.g. a link planted in the output folder
                    skipped.append(skip_entry(key, UNSAFE_PATH, str(exc), len(people)))
                    continue
                exported.extend(people)
                written[split].add(key)
                if tally is not None and self._splitter is not None:
                    matched = self._splitter.matched(people[0].row.get("source_uri"))
                    tally.add(self._splitter, key, group, group_source, split, len(people), matched)
            files = []
            for writer in writers.values():  # every split's file, an empty one too: a split's shard names are fixed
                if writer.WRITES_ROWS:
                    writer.add_rows(_rows_of(writable, exported))
                files += writer.close()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        if task.exported_before:  # after the new files, before the marker: a kill in between redoes the shard
            for split, writer in writers.items():  # an image now in another split goes from its earlier one
                writer.remove_unselected(set(index) - written[split])
        counts = {"rows_in": table.num_rows, "rows_selected": selected.num_rows}
        counts["index_keys_invalid"] = len(index_skipped)
        marker = self._marker(task, label_marker, table, counts, exported, errors, skipped, files)
        if tally is not None and self._splitter is not None:
            marker["splits"] = tally.block(self._splitter.names)
            marker["reconciled"] = marker["reconciled"] and sum(tally.persons.values()) == len(exported)
        return marker

    def _folders(self) -> dict[str, str]:
        """Where the shard's files go, by split: ``{"": output}`` without splits, else each split's sub-folder.

        Raises:
            UnsafeName: a split folder that resolves outside the output (a link planted there).
        """
        output = self._cfg.output
        if self._splitter is None:
            return {"": output}
        return {name: safe_join(output, name, what="split folder") for name in self._splitter.names}

    def _writers(self, task: ExportTask) -> dict[str, ShardWriter]:
        """One writer per split (or one for the whole output), each building its tars in the output's scratch."""
        cfg, made = self._cfg, {}
        try:
            for split, folder in self._folders().items():
                made[split] = WRITERS[cfg.format](
                    self._storage, folder, task.name, cfg.export, config_hash=self._hash, scratch_root=cfg.output
                )
        except UnsafeName as exc:
            for writer in made.values():
                writer.abort()
            raise ShardRefused(UNSAFE_PATH, str(exc)) from None
        return made

    def _placement(
        self, task: ExportTask, table: pa.Table, images: dict[str, list[ExportPerson]]
    ) -> dict[str, tuple[str, str, str]]:
        """``{image key: (group, where the group came from, split)}`` with ``split=``; empty without
        (:mod:`pipelines.export.splits`: the rows' ``near_dup_group``, else the task's part of the shard set's
        near-duplicate file, then ``split.group_by`` over ``source_uri``, then the key)."""
        splitter = self._splitter
        if splitter is None:
            return {}
        in_rows = NEAR_DUP_COLUMN in table.column_names
        from_set = task.near_dup_groups or {}
        placed = {}
        for key, people in images.items():
            row = people[0].row
            near_dup = row.get(NEAR_DUP_COLUMN) if in_rows else from_set.get(key)
            group, source = splitter.group_of(key, row.get("source_uri"), near_dup)
            placed[key] = (group, source, splitter.split_of(group))
        return placed

    def _marker(
        self,
        task: ExportTask,
        label_marker: dict[str, Any],
        table: pa.Table,
        counts: dict[str, int],
        exported: list[ExportPerson],
        errors: list[dict[str, Any]],
        skipped: list[dict[str, Any]],
        files: list[str],
    ) -> dict[str, Any]:
        occlusion_recorded = "occlusion_level" in table.column_names
        # Rows from before schema 1.1.0 read back with a null level: "unrecorded", never counted as "none".
        occlusion = (
            Counter(p.row.get("occlusion_level") or "unrecorded" for p in exported) if occlusion_recorded else None
        )
        by_reason: Counter[str] = Counter(e["reason"] for e in errors)
        for entry in skipped:
            by_reason[entry["reason"]] += entry["persons"]
        by_reason = Counter({reason: n for reason, n in by_reason.items() if n})
        persons_skipped = sum(by_reason.values())
        root = f"{self._cfg.output.rstrip('/')}/"
        return {
            **self._head(task, label_marker),
            "counts": {
                "rows_in": counts["rows_in"],
                "rows_selected": counts["rows_selected"],
                "images": len({p.image_key for p in exported}),
                "persons": len(exported),
                "persons_skipped": persons_skipped,
                "index_keys_invalid": counts["index_keys_invalid"],
            },
            "reconciled": counts["rows_selected"] == len(exported) + persons_skipped,
            "skipped_by_reason": dict(sorted(by_reason.items())),
            "shard_error": None,
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
            "errors": errors,
            "skipped_images": skipped,
            # Relative to the output: a split's files carry their split folder (the loose images are not listed).
            "files": [uri.removeprefix(root) for uri in files if not uri.endswith(".jpg")],
        }

    def _refused(
        self, task: ExportTask, label_marker: dict[str, Any], table: pa.Table | None, refused: ShardRefused
    ) -> dict[str, Any]:
        """The marker of a shard that exports nothing: every accepted row counts under the refusal's reason (the
        selection is not applied to rows that cannot be trusted). An earlier export of the shard is withdrawn, so
        no training file contradicts the marker."""
        if task.exported_before:
            keys = self._known_keys(task)
            try:
                folders = list(self._folders().values())
            except UnsafeName:  # a split folder made a link: nothing of this export can be there to withdraw
                folders = []
            for folder in folders:
                WRITERS[self._cfg.format].withdraw(self._storage, folder, task.name, keys)
        rows = table.num_rows if table is not None and table.num_rows else _accepted(label_marker)
        return {
            **self._head(task, label_marker),
            "counts": {
                "rows_in": rows,
                "rows_selected": rows,
                "images": 0,
                "persons": 0,
                "persons_skipped": rows,
                "index_keys_invalid": 0,
            },
            "reconciled": True,
            "skipped_by_reason": {refused.reason: rows} if rows else {},
            "shard_error": {"reason": refused.reason, "error": str(refused)},
            "tiers": {},
            "occlusion_levels": {},  # nothing exported: it adds nothing, and takes no level from the card
            "model_ids": [],
            "body_models": [],
            "errors": [],
            "skipped_images": [],
            "files": [],
        }

    def _known_keys(self, task: ExportTask) -> set[str]:
        """The usable index keys of a shard (what an earlier export may have written files for), if readable."""
        try:
            return set(self._source(task).table()[0])
        except ShardRefused:
            return set()

    def _head(self, task: ExportTask, label_marker: dict[str, Any]) -> dict[str, Any]:
        head: dict[str, Any] = {
            "shard": task.name,
            "format": self._cfg.format.value,
            "config_hash": self._hash,
            "pipeline_version": pipelines.__version__,
            "label": {"shard_uri": label_marker.get("shard_uri"), **label_lineage(label_marker)},
        }
        if self._cfg.from_release:
            head["release"] = label_marker.get("release")
        if self._splitter is not None and (near_dups := near_dup_digest(task.near_dup_groups)):
            head[NEAR_DUPS] = near_dups
        return head


def _accepted(label_marker: dict[str, Any]) -> int:
    """How many persons the label marker says were accepted (0 when it does not say, or says nonsense)."""
    counts = label_marker.get("counts")
    value = counts.get("persons_accepted") if isinstance(counts, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


def _parquet(data: bytes, uri: str, reason: str) -> pa.Table:
    """The table in ``data`` (already read: a failure here is the content's, never the storage's)."""
    try:
        return read_parquet_bytes(data)
    except (OSError, pa.ArrowException) as exc:
        raise ShardRefused(
            reason, f"{uri} is not Parquet: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None


def _rows_of(table: pa.Table, persons: list[ExportPerson]) -> pa.Table:
    """The rows of ``table`` (checked rows: sample ids unique) of the persons exported, in table order, with the
    table's types and metadata (``format=labels`` writes them as they are)."""
    ids = pa.array(sorted({p.sample_id for p in persons}), type=table.schema.field("sample_id").type)
    return table.filter(pc.is_in(table["sample_id"], value_set=ids))


__all__ = [
    "LABEL_LINEAGE",
    "ExportShardFn",
    "ShardReviews",
    "current_source",
    "export_config_hash",
    "label_lineage",
    "recorded_source",
]

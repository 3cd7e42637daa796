"""Exporting one labeled shard: the unit of work, of commit and of resume of ``dpmesh-export``.

:class:`ExportShardFn` takes an :class:`~pipelines.export.records.ExportTask` and, inside one element, checks that the
shard can be trusted, selects its rows, reads their images from the tar by ``tar_offset``, writes the format's files
and then ``_done/shard-NNNNNN.json``, its marker, last. Nothing a user's files hold is trusted before
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
"""

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

import pipelines
from pipelines.common.commit_log import committed_marker
from pipelines.common.image_decode import ImageDecodeError
from pipelines.common.label_set import LABEL_RUN, marker_uri
from pipelines.common.metrics import EXPORT_METRICS
from pipelines.common.safe_paths import UnsafeName
from pipelines.common.shard_members import (
    MemberError,
    MemberRef,
    check_member,
    decode_upright,
    encode_jpeg,
    iter_members,
)
from pipelines.config import ConfigError, ExportJobConfig, config_hash
from pipelines.export.checks import (
    CHECKED_COLUMNS,
    IMAGE_MISMATCH,
    IMAGE_UNREADABLE,
    INDEX_UNREADABLE,
    LABELS_MISSING,
    LABELS_UNREADABLE,
    LINEAGE_MISMATCH,
    NOT_IN_INDEX,
    TAR_READ_STOPPED,
    UNSAFE_PATH,
    check_rows,
    lineage_problem,
    shown,
    usable_index,
)
from pipelines.export.formats import WRITERS
from pipelines.export.records import ExportImage, ExportPerson, ExportTask
from pipelines.export.selection import select_rows
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage
from schemas import ANNOTATION_SCHEMA


# What of a label marker decides a labeled shard's rows: the tar labeled, the labeling config, the calibration's
# content and, for a dpmesh-refilter output, the labeling run behind it. Each is in the markers' index, so planning
# reads them for 100k shards without a GET per marker. An export marker records them; a difference means the shard
# was relabeled since it was exported.
LABEL_LINEAGE = ("shard_identity", "config_hash", "calibration_sha256", LABEL_RUN)

# Keys that do not change what is written: where and how the job runs.
_NOT_CONTENT = ("input", "output", "runner", "storage", "log_level", "overwrite")
# Label columns the export reads besides the checked values: ids, verdict (an annotation file lacking one is refused).
_ID_COLUMNS = ("sample_id", "image_key", "person_idx", "quality_tier")


def export_config_hash(cfg: ExportJobConfig) -> str:
    """Fingerprint of what decides the exported bytes (format, selection, image options)."""
    return config_hash(cfg, exclude=_NOT_CONTENT)


def label_lineage(label_marker: dict[str, Any]) -> dict[str, Any]:
    """The :data:`LABEL_LINEAGE` fields of a label marker (None where it has none)."""
    return {k: label_marker.get(k) for k in LABEL_LINEAGE}


class _RefusedError(Exception):
    """The shard exports nothing: ``reason`` (a :mod:`pipelines.export.checks` reason) and a one-line message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def group_by_image(persons: list[ExportPerson]) -> dict[str, list[ExportPerson]]:
    """Persons by image key, images in the order first seen (rows come in image-key order; a hand-edited file that
    interleaves images still gives each image one group)."""
    images: dict[str, list[ExportPerson]] = {}
    for person in persons:
        images.setdefault(person.image_key, []).append(person)
    return images


class ExportShardFn(beam.DoFn):
    """Input: an :class:`ExportTask`. Writes the shard's export files, then its marker; outputs the marker."""

    def __init__(self, cfg: ExportJobConfig, max_image_pixels: int) -> None:
        self._cfg = cfg
        self._max_pixels = max_image_pixels
        self._hash = export_config_hash(cfg)

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
            table = self._labels(task, label_marker)
            self._check_lineage(task, label_marker)
            marker = self._export(task, label_marker, table)
        except _RefusedError as refused:
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
        if label_lineage(committed.get("label") or {}) != label_lineage(label_marker):
            return None
        Metrics.counter(EXPORT_METRICS, "shards_already_committed").inc()
        return committed

    def _label_marker(self, task: ExportTask) -> dict[str, Any]:
        data = self._storage.read_bytes(marker_uri(self._cfg.input.labels, task.name))
        try:
            marker = json.loads(data)
        except ValueError as exc:
            raise _RefusedError(LABELS_UNREADABLE, f"the label marker is not JSON: {exc}") from None
        if not isinstance(marker, dict):
            raise _RefusedError(LABELS_UNREADABLE, "the label marker is not a JSON object")
        return marker

    def _labels(self, task: ExportTask, label_marker: dict[str, Any]) -> pa.Table:
        """The shard's accepted rows; an empty table when the label run accepted none."""
        try:
            data = self._storage.read_bytes(task.labels_uri)  # storage faults propagate: the runner retries
        except FileNotFoundError:
            accepted = _accepted(label_marker)
            if accepted:
                raise _RefusedError(
                    LABELS_MISSING,
                    f"the label marker says {accepted} persons were accepted but {task.labels_uri} is missing",
                ) from None
            return ANNOTATION_SCHEMA.empty_table()
        table = _parquet(data, task.labels_uri, LABELS_UNREADABLE)
        missing = [name for name in (*_ID_COLUMNS, *CHECKED_COLUMNS) if name not in table.column_names]
        if missing:
            raise _RefusedError(LABELS_UNREADABLE, f"{task.labels_uri} lacks the column(s) {', '.join(missing)}")
        return table

    def _check_lineage(self, task: ExportTask, label_marker: dict[str, Any]) -> None:
        try:
            problem = lineage_problem(self._storage, task.tar_uri, task.tar_bytes, task.manifest_entry, label_marker)
        except (AttributeError, TypeError, ValueError) as exc:  # a hand-made marker: identity fields of other types
            raise _RefusedError(LABELS_UNREADABLE, f"the label marker's shard_identity is unusable: {exc}") from None
        if problem:
            raise _RefusedError(LINEAGE_MISMATCH, problem)

    def _export(self, task: ExportTask, label_marker: dict[str, Any], table: pa.Table) -> dict[str, Any]:
        storage, cfg = self._storage, self._cfg
        try:
            selected = select_rows(table, cfg.select)
        except ConfigError as exc:  # launch checked the first shard's schema; this shard's differs
            raise _RefusedError(LABELS_UNREADABLE, str(exc)) from None
        writable, errors = check_rows(selected)
        try:
            images = group_by_image(ExportPerson.from_table(writable))
        except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
            raise _RefusedError(LABELS_UNREADABLE, f"{task.labels_uri} does not hold annotation rows: {exc}") from None
        index, index_skipped = self._index(task)
        skipped = list(index_skipped)
        refs = []
        for key, people in images.items():
            if key not in index:
                skipped.append(_skip(key, NOT_IN_INDEX, "not in the shard index", people))
                continue
            try:
                refs.append(_member_ref(index[key], task.tar_bytes))
            except (KeyError, TypeError, ValueError) as exc:
                skipped.append(_skip(key, IMAGE_MISMATCH, f"its shard index row is unusable: {exc}", people))
        try:
            writer = WRITERS[cfg.format](storage, cfg.output, task.name, cfg.export)
        except UnsafeName as exc:
            raise _RefusedError(UNSAFE_PATH, str(exc)) from None
        exported: list[ExportPerson] = []
        try:
            with storage.open_read(task.tar_uri) as stream:
                for ref, data in self._members(stream, refs, skipped, images):
                    people = images[ref.key]
                    try:  # the label run read and decoded this image: a failure means the shard changed since
                        pixels = decode_upright(check_member(ref, data), max_image_pixels=self._max_pixels)
                    except MemberError as exc:
                        skipped.append(_skip(ref.key, IMAGE_MISMATCH, str(exc), people))
                        continue
                    except ImageDecodeError as exc:
                        skipped.append(_skip(ref.key, IMAGE_UNREADABLE, str(exc), people))
                        continue
                    jpeg = encode_jpeg(pixels, cfg.export.jpeg_quality)
                    try:
                        writer.add(ExportImage(ref.key, pixels, jpeg, people))
                    except UnsafeName as exc:  # e.g. a link planted in the output folder
                        skipped.append(_skip(ref.key, UNSAFE_PATH, str(exc), people))
                        continue
                    exported.extend(people)
            files = writer.close()
        except BaseException:
            writer.abort()
            raise
        if task.exported_before:  # after the new files, before the marker: a kill in between redoes the shard
            writer.remove_unselected(set(index) - {p.image_key for p in exported})
        counts = {"rows_in": table.num_rows, "rows_selected": selected.num_rows}
        counts["index_keys_invalid"] = len(index_skipped)
        return self._marker(task, label_marker, table, counts, exported, errors, skipped, files)

    def _index(self, task: ExportTask) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """The usable index rows by key, and skip entries for the others."""
        try:
            data = self._storage.read_bytes(task.index_uri)
        except FileNotFoundError:
            raise _RefusedError(INDEX_UNREADABLE, f"{task.index_uri} is missing") from None
        return usable_index(_parquet(data, task.index_uri, INDEX_UNREADABLE).to_pylist())

    @staticmethod
    def _members(
        stream: Any, refs: list[MemberRef], skipped: list[dict[str, Any]], images: dict[str, list[ExportPerson]]
    ) -> Iterator[tuple[MemberRef, bytes]]:
        """The wanted members; a tar that cannot be read on ends the shard's reading with a skip entry for each
        image not reached."""
        reached: set[str] = set()
        try:
            for ref, data in iter_members(stream, refs):
                reached.add(ref.key)
                yield ref, data
        except MemberError as exc:
            for ref in refs:
                if ref.key not in reached:
                    skipped.append(_skip(ref.key, TAR_READ_STOPPED, f"shard read stopped: {exc}", images[ref.key]))

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
            "files": [uri.rsplit("/", 1)[-1] for uri in files if not uri.endswith(".jpg")],
        }

    def _refused(
        self, task: ExportTask, label_marker: dict[str, Any], table: pa.Table | None, refused: _RefusedError
    ) -> dict[str, Any]:
        """The marker of a shard that exports nothing: every accepted row counts under the refusal's reason (the
        selection is not applied to rows that cannot be trusted). An earlier export of the shard is withdrawn, so
        no training file contradicts the marker."""
        if task.exported_before:
            WRITERS[self._cfg.format].withdraw(self._storage, self._cfg.output, task.name, self._known_keys(task))
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
            return set(self._index(task)[0])
        except _RefusedError:
            return set()

    def _head(self, task: ExportTask, label_marker: dict[str, Any]) -> dict[str, Any]:
        return {
            "shard": task.name,
            "format": self._cfg.format.value,
            "config_hash": self._hash,
            "pipeline_version": pipelines.__version__,
            "label": {"shard_uri": label_marker.get("shard_uri"), **label_lineage(label_marker)},
        }


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
        raise _RefusedError(
            reason, f"{uri} is not Parquet: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None


def _member_ref(row: dict[str, Any], tar_bytes: int) -> MemberRef:
    """The member an index row points at, which must lie inside the tar (a hand-made index could ask for a negative
    offset or a terabyte read).

    Raises:
        ValueError: it does not. KeyError, TypeError: the row lacks ``tar_offset`` / ``bytes`` or holds no numbers.
    """
    ref = MemberRef.from_index_row(row)
    if ref.offset < 0 or ref.size < 0 or ref.offset + ref.size > tar_bytes:
        raise ValueError(f"{ref.size} bytes at offset {ref.offset} lie outside the {tar_bytes}-byte tar")
    return ref


def _skip(key: str, reason: str, error: str, people: list[ExportPerson]) -> dict[str, Any]:
    """A ``skipped_images`` entry: an image (and its persons) not exported, and why."""
    return {"key": shown(key), "reason": reason, "error": error, "persons": len(people)}


__all__ = ["LABEL_LINEAGE", "ExportShardFn", "export_config_hash", "label_lineage"]

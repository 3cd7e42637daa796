"""What ``dpmesh-export`` checks before it trusts a labeled shard, its rows and its index: the one home of the
export's problem reasons.

Labels and shard indexes are files a user can edit, copy from elsewhere or point at the wrong shard set, so nothing in
them is used before these checks pass:

* **Lineage** (:func:`lineage_problem`): the tar about to be read must be the one the labels were made from. Its
  identity (size as listed, sha1 from the shard set's ``_manifest.json``, or hashed here when the manifest has no
  record of it) is compared with the ``shard_identity`` the label marker recorded. A mismatch exports nothing from
  the shard: its rows would be paired with other pixels.
* **Rows** (:func:`check_rows`): a row's ``image_key`` must be a key of the one grammar and its ``sample_id``
  ``<image_key>_p<person_idx>`` (both become file and tar member names), unique in the shard, and the label values
  every format derives its supervision from (:data:`CHECKED_COLUMNS`) must be present and finite. Other rows go on;
  a failing row becomes an error entry.
* **Index** (:func:`usable_index`): an index row whose key is not of the grammar is never used, not even to name a
  file to delete. A labels release's image table is an index too, held to the same rule.
* **Images** (:mod:`pipelines.export.image_sources`): an image's bytes must be the ones labeled (the index's sha1
  for a tar member, the release's size and sha1 for a rebuild's file) before they are decoded.

Every problem is counted under one of the reasons below, per person (or per index row), in the shard's marker.
"""

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from pipelines.common.safe_paths import KEY_GRAMMAR, SAMPLE_ID_PATTERN, is_valid_key
from pipelines.storage import Storage


# Per-person reasons: the row is not exported, the rest of its shard is.
INVALID_KEY = "invalid_key"  # image_key / sample_id not of the key grammar: never used as a path or member name
INVALID_LABEL = "invalid_label_value"  # a null or non-numeric value where a format needs a number
NON_FINITE = "non_finite_label"  # NaN or inf where a format needs a number: never written into a training file
NOT_IN_INDEX = "not_in_index"  # the labeled image is not in the shard's index (or the release's image table)
# The bytes are not the ones labeled: the tar's are not the index's (short read, sha1: the shard changed), or a
# rebuild's file is not the one the release records (size, sha1: the image changed). Never paired with the label.
IMAGE_MISMATCH = "image_mismatch"
IMAGE_MISSING = "image_missing"  # a rebuild's input.images holds no file at the path the release records
IMAGE_UNREADABLE = "image_unreadable"  # the bytes do not decode (the label run decoded them: the image changed)
TAR_READ_STOPPED = "tar_read_stopped"  # the tar ends (or its index overlaps) before the image
DUPLICATE_ROW = "duplicate_sample_id"  # a second row of the same person: one training item per person
# A path from data that is not plain segments inside its folder: an output path (a link planted in the output
# folder), a release image path (``..``, a separator in a segment, a link out of input.images), or none at all.
UNSAFE_PATH = "unsafe_path"
# Per-shard reasons: nothing of the shard is exported; every accepted row of it counts under the reason.
LINEAGE_MISMATCH = "lineage_mismatch"  # the tar is not the one the labels were made from
LABELS_MISSING = "labels_missing"  # the marker says persons were accepted, the annotations Parquet is gone
LABELS_UNREADABLE = "labels_unreadable"  # the marker or annotations cannot be read as labels
INDEX_UNREADABLE = "index_unreadable"  # the shard's index (or the release's image table) is missing or not Parquet
# (UNSAFE_PATH too, when the shard's own file name resolves outside output.) A rebuild carries the reason a release
# refused a shard with: the release holds nothing of it.

CHECKED_COLUMNS = (
    "keypoints_2d", "bbox_xyxy", "crop_bbox_xywh", "global_orient", "body_pose", "betas", "transl", "focal_length",
    "principal_point", "confidence",
)  # fmt: skip
"""The label values every format derives its supervision from (keypoints, boxes, SMPL, camera, confidence): a row
with a null, NaN or inf in any of them is an error row for all three formats, so no trainer ever reads one."""

_SHOWN = 120  # characters of a hostile value kept in a marker or a message


class ShardRefused(Exception):  # noqa: N818 (the shard is refused: reads as the outcome it is)
    """The shard exports nothing: ``reason`` (a per-shard reason above) and a one-line message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def skip_entry(key: str, reason: str, error: str, persons: int) -> dict[str, Any]:
    """A marker's ``skipped_images`` entry: an image (and its ``persons``) not exported, and why."""
    return {"key": shown(key), "reason": reason, "error": error, "persons": persons}


def shown(value: object) -> str:
    """A value from data, as a marker or message may carry it: text, at most :data:`_SHOWN` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def expected_identity(label_marker: dict[str, Any]) -> tuple[int | None, str | None]:
    """``(tar bytes, tar sha1)`` of the tar the labels were made from, from the label marker: its ``shard_identity``
    (the manifest's record when it was labeled), completed by ``tar_read`` (what the label run hashed) where the
    identity holds no sha1 (a shard set labeled without its manifest)."""
    identity = label_marker.get("shard_identity") or {}
    read = label_marker.get("tar_read") or {}
    size = identity.get("tar_bytes", read.get("tar_bytes"))
    return (int(size) if size is not None else None), (identity.get("tar_sha1") or read.get("tar_sha1") or None)


def tar_sha1(storage: Storage, uri: str) -> str:
    """sha1 of a whole object, streamed (for a shard whose manifest has no record of its tar)."""
    digest = hashlib.sha1()
    with storage.open_read(uri) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def lineage_problem(
    storage: Storage, tar_uri: str, tar_bytes: int, manifest_entry: dict[str, Any] | None, label_marker: dict[str, Any]
) -> str | None:
    """Why the tar at ``tar_uri`` is not the one its labels were made from, or None when it is.

    Args:
        tar_bytes: The tar's size as listed now. manifest_entry: The shard set manifest's record of the tar
            (``tar_bytes``, ``tar_sha1``), None when there is no manifest or it does not list the shard.
        label_marker: The shard's ``_done/`` marker in the labels.
    """
    want_bytes, want_sha1 = expected_identity(label_marker)
    if want_bytes is None and want_sha1 is None:
        return "the label marker records no shard_identity: the labels cannot be tied to a tar"
    if want_bytes is not None and tar_bytes != want_bytes:
        return f"{tar_uri} is {tar_bytes} bytes; the labels were made from a {want_bytes}-byte tar"
    if want_sha1 is None:
        return None
    entry = manifest_entry or {}
    # The manifest's sha1 speaks for the tar only while the tar still has the size it recorded.
    have_sha1 = entry.get("tar_sha1") if entry.get("tar_bytes") == tar_bytes else None
    if not have_sha1:
        have_sha1 = tar_sha1(storage, tar_uri)
    if have_sha1 != want_sha1:
        return f"{tar_uri} has sha1 {have_sha1}; the labels were made from sha1 {want_sha1}"
    return None


def _leaves(value: Any) -> Iterable[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _value_problem(column: str, value: Any) -> tuple[str, str] | None:
    """``(reason, message)`` when a checked column's value cannot be written, else None."""
    for leaf in _leaves(value):
        if isinstance(leaf, bool) or not isinstance(leaf, int | float):
            return INVALID_LABEL, f"{column} holds {shown(leaf)}, not a number"
        if not math.isfinite(leaf):
            return NON_FINITE, f"{column} holds {leaf}"
    return None


def _key_problem(row: dict[str, Any]) -> str | None:
    """Why a row's ``image_key`` / ``sample_id`` cannot name files, or None."""
    key, sample_id, person = row.get("image_key"), row.get("sample_id"), row.get("person_idx")
    if not is_valid_key(key):
        return f"image_key {shown(key)} is not a key ({KEY_GRAMMAR})"
    if (
        not isinstance(sample_id, str)
        or SAMPLE_ID_PATTERN.fullmatch(sample_id) is None
        or sample_id != f"{key}_p{person}"
    ):
        return f"sample_id {shown(sample_id)} is not <image_key>_p<person_idx> ({key}_p{person})"
    return None


def check_rows(table: pa.Table) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The rows a format can write, and one error entry per other row (first problem found), in row order.

    Raises:
        KeyError: the table lacks a checked column (labels of another schema: the caller refuses the shard).
    """
    ids = table.select(["image_key", "sample_id", "person_idx"]).to_pylist()
    columns = {name: table[name].to_pylist() for name in CHECKED_COLUMNS}
    keep, errors = [], []
    seen: set[str] = set()
    for i, row in enumerate(ids):
        problem: tuple[str, str] | None = None
        key_message = _key_problem(row)
        if key_message:
            problem = (INVALID_KEY, key_message)
        elif row["sample_id"] in seen:
            problem = (DUPLICATE_ROW, f"sample_id {row['sample_id']} appears more than once; the first is kept")
        else:
            seen.add(row["sample_id"])
        for name in CHECKED_COLUMNS:
            if problem:
                break
            value = columns[name][i]
            problem = (INVALID_LABEL, f"{name} is null") if value is None else _value_problem(name, value)
        if problem is None:
            keep.append(i)
            continue
        errors.append(
            {
                "sample_id": shown(row["sample_id"]),
                "image_key": shown(row["image_key"]),
                "reason": problem[0],
                "error": problem[1],
            }
        )
    if len(keep) == table.num_rows:
        return table, errors
    return table.take(pa.array(keep, type=pa.int64())), errors


def usable_index(rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The shard index by key, for rows whose key is of the grammar; one skip entry per other row."""
    index: dict[str, dict[str, Any]] = {}
    skipped = []
    for row in rows:
        key = row.get("key")
        if isinstance(key, str) and is_valid_key(key):
            index[key] = row
        else:
            skipped.append(
                {
                    "key": shown(key),
                    "reason": INVALID_KEY,
                    "error": f"shard index key {shown(key)} is not a key ({KEY_GRAMMAR}): never used as a path",
                    "persons": 0,
                }
            )
    return index, skipped

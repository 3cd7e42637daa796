"""Where an export unit's images come from, and the proof that they are the images labeled.

Two sources, one shape: :meth:`ImageSource.table` gives the unit's image table by key (a shard's index, or a labels
release's image table; rows with a key off the grammar are never used) and :meth:`ImageSource.read` yields, for the
images an export wants, the original bytes once they are proven to be the ones labeled, with the
:class:`~pipelines.export.records.ImageRecord` a labels release keeps of them. Every image not yielded is a skip
entry with its reason (:mod:`pipelines.export.checks`); nothing is decoded before its bytes are proven.

* :class:`ShardTarImages`: the shard tar, read in one forward pass at the index's ``tar_offset`` s, each member checked
  against the index's size and sha1 (the tar itself was checked against the label marker's identity first).
* :class:`FolderImages`: a rebuild from a labels release: each image is the file at ``<input.images>/<path>`` (the
  release's ``path``, every segment through :func:`~pipelines.common.safe_paths.safe_join`), read up to one byte
  past the release's size and used only if its size and sha1 are the release's.

Both yield in key order, the order of a shard tar's members, so a rebuild adds images to a writer in the order a
direct export does.
"""

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from pipelines.common.safe_paths import UnsafeName, safe_join
from pipelines.common.shard_members import MemberError, MemberRef, check_member, iter_members
from pipelines.export.checks import (
    IMAGE_MISMATCH,
    IMAGE_MISSING,
    INDEX_UNREADABLE,
    NOT_IN_INDEX,
    TAR_READ_STOPPED,
    UNSAFE_PATH,
    ShardRefused,
    skip_entry,
    usable_index,
)
from pipelines.export.records import ExportPerson, ExportTask, ImageRecord
from pipelines.export.release import image_path
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage


Wanted = dict[str, list[ExportPerson]]
"""The images an export wants: persons by image key."""


def read_table_rows(storage: Storage, uri: str, what: str) -> list[dict[str, Any]]:
    """The rows of the Parquet file at ``uri`` (storage faults propagate: the runner retries).

    Raises:
        ShardRefused: ``index_unreadable``: it is missing or not Parquet.
    """
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ShardRefused(INDEX_UNREADABLE, f"{what} {uri} is missing") from None
    try:
        rows: list[dict[str, Any]] = read_parquet_bytes(data).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise ShardRefused(INDEX_UNREADABLE, f"{what} {uri} is not Parquet: {first}") from None
    return rows


class ImageSource(ABC):
    """A unit's images (see the module docstring)."""

    def __init__(self, storage: Storage, task: ExportTask) -> None:
        self.storage = storage
        self.task = task

    @abstractmethod
    def table(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """The usable image rows by key, and a skip entry (0 persons) for each row with a key off the grammar.

        Raises:
            ShardRefused: the table is missing or unreadable (``index_unreadable``).
        """

    @abstractmethod
    def read(
        self, wanted: Wanted, table: dict[str, dict[str, Any]], skipped: list[dict[str, Any]]
    ) -> Iterator[tuple[str, bytes, ImageRecord]]:
        """``(key, original bytes, record)`` of each wanted image whose bytes are proven, in key order; a skip
        entry in ``skipped`` for every other wanted image."""


class ShardTarImages(ImageSource):
    """The images of a labeled shard, from its tar by the shard index (``task.tar_uri``, ``task.index_uri``)."""

    def table(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        return usable_index(read_table_rows(self.storage, self.task.index_uri, "the shard index"))

    def read(
        self, wanted: Wanted, table: dict[str, dict[str, Any]], skipped: list[dict[str, Any]]
    ) -> Iterator[tuple[str, bytes, ImageRecord]]:
        refs = []
        for key, people in wanted.items():
            if key not in table:
                skipped.append(skip_entry(key, NOT_IN_INDEX, "not in the shard index", len(people)))
                continue
            try:
                refs.append(member_ref(table[key], self.task.tar_bytes))
            except (KeyError, TypeError, ValueError) as exc:
                skipped.append(skip_entry(key, IMAGE_MISMATCH, f"its shard index row is unusable: {exc}", len(people)))
        reached: set[str] = set()
        with self.storage.open_read(self.task.tar_uri) as stream:
            try:
                for ref, data in iter_members(stream, refs):
                    reached.add(ref.key)
                    try:
                        check_member(ref, data)
                    except MemberError as exc:
                        skipped.append(skip_entry(ref.key, IMAGE_MISMATCH, str(exc), len(wanted[ref.key])))
                        continue
                    yield ref.key, data, self._record(ref, table[ref.key], data)
            except MemberError as exc:  # the tar cannot be read on: every image not reached is skipped
                for ref in refs:
                    if ref.key not in reached:
                        error = f"shard read stopped: {exc}"
                        skipped.append(skip_entry(ref.key, TAR_READ_STOPPED, error, len(wanted[ref.key])))

    def _record(self, ref: MemberRef, row: dict[str, Any], data: bytes) -> ImageRecord:
        """The original file of a proven member (the member is the file's bytes, as sharded)."""
        source = row.get("source_uri")
        source_uri = source if isinstance(source, str) else ""
        path = image_path(source_uri, self.task.corpus_root) if source_uri else ""
        # check_member compared the bytes with the index's sha1 when the index has one: no second hash then.
        sha1 = ref.sha1 or hashlib.sha1(data).hexdigest()
        return ImageRecord(ref.key, path, source_uri, sha1, len(data))


def member_ref(row: dict[str, Any], tar_bytes: int) -> MemberRef:
    """The member an index row points at, which must lie inside the tar (a hand-made index could ask for a negative
    offset or a terabyte read).

    Raises:
        ValueError: it does not. KeyError, TypeError: the row lacks ``tar_offset`` / ``bytes`` or holds no numbers.
    """
    ref = MemberRef.from_index_row(row)
    if ref.offset < 0 or ref.size < 0 or ref.offset + ref.size > tar_bytes:
        raise ValueError(f"{ref.size} bytes at offset {ref.offset} lie outside the {tar_bytes}-byte tar")
    return ref


class FolderImages(ImageSource):
    """A rebuild's images: files under ``task.images_folder`` named by the release's image table
    (``task.index_uri``), each proven by the release's size and sha1."""

    def table(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        return usable_index(read_table_rows(self.storage, self.task.index_uri, "the release's image table"))

    def read(
        self, wanted: Wanted, table: dict[str, dict[str, Any]], skipped: list[dict[str, Any]]
    ) -> Iterator[tuple[str, bytes, ImageRecord]]:
        for key in sorted(wanted):
            persons = len(wanted[key])
            if key not in table:
                skipped.append(skip_entry(key, NOT_IN_INDEX, "not in the release's image table", persons))
                continue
            try:
                record = _release_record(table[key])
            except (KeyError, TypeError, ValueError) as exc:
                skipped.append(skip_entry(key, IMAGE_MISMATCH, f"its release image row is unusable: {exc}", persons))
                continue
            try:
                uri = safe_join(str(self.task.images_folder), *record.path.split("/"), what="release image path")
            except UnsafeName as exc:
                skipped.append(skip_entry(key, UNSAFE_PATH, str(exc), persons))
                continue
            try:  # one byte past the recorded size tells a longer file without reading all of it
                data = self.storage.read_range(uri, 0, record.bytes + 1)
            except FileNotFoundError:  # storage's not-found: no object, or a folder where the file should be
                skipped.append(skip_entry(key, IMAGE_MISSING, f"input.images holds no file {record.path}", persons))
                continue
            problem = _changed(record, data)
            if problem:
                skipped.append(skip_entry(key, IMAGE_MISMATCH, problem, persons))
                continue
            yield key, data, record


def _release_record(row: dict[str, Any]) -> ImageRecord:
    """The :class:`ImageRecord` of a release image row (typed: the table is data a user can edit).

    Raises:
        TypeError, ValueError: a value of the wrong type or out of range.
    """
    path, source_uri, sha1, size = row["path"], row.get("source_uri") or "", row["sha1"], row["bytes"]
    if not isinstance(path, str) or not isinstance(source_uri, str) or not isinstance(sha1, str):
        raise TypeError("path, source_uri and sha1 must be text")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"bytes is {size!r}, not a size")
    return ImageRecord(row["key"], path, source_uri, sha1, size)


def _changed(record: ImageRecord, data: bytes) -> str | None:
    """Why ``data`` is not the file the release records (size, then sha1), or None when it is."""
    if len(data) != record.bytes:
        size = f"more than {record.bytes}" if len(data) > record.bytes else str(len(data))
        return f"{record.path} is {size} bytes; the labels were made from a {record.bytes}-byte file"
    digest = hashlib.sha1(data).hexdigest()
    if digest != record.sha1:
        return f"{record.path} has sha1 {digest}; the labels were made from sha1 {record.sha1}"
    return None

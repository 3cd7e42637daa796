"""Beam steps of ``dpmesh-shard`` before the shard writes: list, plan, join annotations, (drop duplicates).

Only metadata travels here: listing entries become :class:`~pipelines.shard.plan.PlannedFile` records, which
meet their annotations by file name and then their bucket; the bytes are read once, by the shard writer.

Each step has one output: the records it passes on mixed with
:class:`~pipelines.shard.finish.ManifestRecord` reports; the next step selects its records by type. No
tagged outputs, because Beam's DaskRunner merges them into the main output.
"""

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import apache_beam as beam

from pipelines.common.metrics import SHARD_METRICS, counter
from pipelines.config import InputConfig, ShardConfig
from pipelines.config.storage import StorageConfig
from pipelines.shard.annotation_formats import parse_annotations
from pipelines.shard.coco import ImageAnnotations, join_name
from pipelines.shard.compare import partition_of
from pipelines.shard.finish import FILES_LISTED_KIND, JOIN_KIND, ManifestRecord
from pipelines.shard.keys import make_key
from pipelines.shard.listing import ListingTask, SourceFile, list_task
from pipelines.shard.plan import PlannedBatch, PlannedFile, planned_file
from pipelines.storage import ObjectNotFoundError, Storage


_BATCH_FILES = 10_000  # listed files per PlannedBatch: a few MB of metadata, bounded whatever the task lists
_COUNTED_EVERY = 1_000  # listed files per update of the files_listed counter


class ListTaskFn(beam.DoFn):
    """Input: a :class:`ListingTask`. Yields its :class:`PlannedFile` entries (lazily), then how many it listed.

    Entries whose size the listing does not know (manifest lines) are stat'ed, so the plan can cut shards by
    bytes; one that does not exist is planned with size 0 and reported as ``read_failed`` when its shard is
    written.

    With ``compare_partitions`` (``mode=append``, files going straight to the comparison), the entries come in
    :class:`PlannedBatch` es instead, one per comparison partition and up to :data:`_BATCH_FILES` files, so that the
    comparison moves a few elements per partition rather than one per file.
    """

    def __init__(self, storage_cfg: StorageConfig, input_cfg: InputConfig, compare_partitions: int | None = None):
        self._storage_cfg = storage_cfg
        self._input_cfg = input_cfg
        self._compare_partitions = compare_partitions
        self._listed = counter(SHARD_METRICS, "files_listed")

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)

    def process(self, task: ListingTask) -> Iterator[PlannedFile | PlannedBatch | ManifestRecord]:
        listed = 0
        batches: dict[int, list[tuple[str, SourceFile]]] = {}
        for source in list_task(self._storage, self._input_cfg, task):
            if source.size is None and source.problem is None:
                source = replace(source, size=self._size(source.uri))
            listed += 1
            if listed % _COUNTED_EVERY == 0:  # the progress counter, without a metrics update per file
                self._listed.inc(_COUNTED_EVERY)
            if self._compare_partitions is None:
                yield planned_file(source)
                continue
            key = make_key(source.relpath)
            partition = partition_of(key, self._compare_partitions)
            batch = batches.setdefault(partition, [])
            batch.append((key, source))
            if len(batch) == _BATCH_FILES:
                yield PlannedBatch.of(partition, batches.pop(partition))
        for partition, files in sorted(batches.items()):
            yield PlannedBatch.of(partition, files)
        self._listed.inc(listed % _COUNTED_EVERY)
        yield ManifestRecord(FILES_LISTED_KIND, listed)

    def _size(self, uri: str) -> int:
        try:
            return self._storage.size(uri)
        except ObjectNotFoundError:
            return 0


def read_annotations(
    uri: str, storage_cfg: StorageConfig, annotation_format: str = "auto"
) -> Iterator[tuple[str, ImageAnnotations]]:
    """``(join name, annotations)`` for every annotated image of an annotation file (COCO-17 persons).

    ``annotation_format`` is ``coco``, ``crowdpose``, ``aic`` or ``auto`` (told from the file; see
    :mod:`pipelines.shard.annotation_formats`). The file was validated at launch.
    """
    for annotations in parse_annotations(Storage(storage_cfg).read_bytes(uri), annotation_format):
        yield join_name(annotations.file_name), annotations


class AttachAnnotationsFn(beam.DoFn):
    """Input: ``(join name, {"images": [PlannedFile], "annotations": [...]})``; attaches persons to their image.

    A name matched by several images (same file name in different folders) is ambiguous: those images
    are sharded without persons and reported in the manifest rather than guessing; a name matched by no
    listed image is reported as unmatched.
    """

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        name, grouped = element
        images: list[PlannedFile] = sorted(grouped["images"], key=lambda f: f.key)
        annotations: list[ImageAnnotations] = list(grouped["annotations"])
        if not annotations:
            yield from images  # not listed in the annotation file: annotated stays False
            return
        if len(images) != 1 or len(annotations) != 1:
            status = "unmatched" if not images else "ambiguous"
            yield ManifestRecord(JOIN_KIND, {"name": name, "status": status, "images": len(images)})
            yield from images
            return
        image, ann = images[0], annotations[0]
        problems = tuple((p.annotation_id, p.message) for p in ann.problems)
        yield replace(image, annotated=True, persons=ann.persons, annotation_problems=problems)


class HashFileFn(beam.DoFn):
    """For ``shard.drop_duplicates``: ``(sha1, (key, uri))`` of a readable planned file (one extra read each)."""

    def __init__(self, storage_cfg: StorageConfig, shard_cfg: ShardConfig) -> None:
        self._storage_cfg = storage_cfg
        self._max_bytes = shard_cfg.max_file_bytes

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)

    def process(self, planned: PlannedFile) -> Iterator[tuple[str, tuple[str, str]]]:
        source = planned.source
        if source.problem is not None or (source.size or 0) > self._max_bytes:
            return
        try:
            data = self._storage.read_bytes(source.uri)
        except FileNotFoundError:
            return  # reported as read_failed when its shard is written
        if data:
            yield hashlib.sha1(data).hexdigest(), (planned.key, source.uri)


def drops_of_group(group: tuple[str, Iterable[tuple[str, str]]]) -> Iterator[tuple[str, Any]]:
    """For one sha1 group: ``(dropped key, (kept key, kept uri))`` for all but the smallest key, and, keyed by
    ``""``, the group ``(sha1, keys)`` for the duplicate report."""
    sha1, members = group
    ordered = sorted(members)
    if len(ordered) < 2:
        return
    kept = ordered[0]
    yield "", (sha1, [key for key, _ in ordered])
    for key, _ in ordered[1:]:
        yield key, kept


def mark_dropped(element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[PlannedFile]:
    """``(key, {"files": [PlannedFile], "drops": [(kept key, kept uri)]})``: the file, marked when dropped."""
    _, grouped = element
    drops = list(grouped["drops"])
    for planned in grouped["files"]:
        yield replace(planned, duplicate_of=tuple(drops[0])) if drops else planned

"""Beam steps of ``dpmesh-shard``: list, probe, de-duplicate, join annotations, cut shards, write.

Only metadata travels through the shuffles; the image bytes are read twice (once to hash and
check them, once when their shard is written, with the hash verified again). That keeps every
worker's memory bounded by one shard in flight, whatever the corpus size, at the price of a
second read.

Each step has one output: the records it passes on (:class:`SourceFile`, :class:`ShardSample`) mixed
with :class:`~pipelines.transforms.shard_manifest.ManifestRecord` reports (errors, duplicates, join
problems, shard summaries); the next step selects its records by type. No tagged outputs, because
Beam's DaskRunner merges them into the main output.
"""

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.annotation_formats import parse_annotations
from pipelines.coco_annotations import ImageAnnotations, join_name
from pipelines.config import InputConfig, ShardConfig, ValidateMode
from pipelines.config.storage import StorageConfig
from pipelines.corpus import SourceFile, list_corpus
from pipelines.error_rows import error_row
from pipelines.image_probe import ImageRejectedError, probe_image
from pipelines.keys import make_key, shard_name
from pipelines.parquet_io import parquet_bytes
from pipelines.shard_format import (
    ShardSample,
    ShardTarWriter,
    cut_into_shards,
    file_sha1,
    index_rows,
    shard_id_of_part,
)
from pipelines.storage import Storage, TransientStorageError, join
from pipelines.transforms.shard_manifest import (
    DUPLICATE_GROUP_KIND,
    ERROR_KIND,
    FILES_LISTED_KIND,
    JOIN_KIND,
    SUMMARY_KIND,
    ManifestRecord,
)
from schemas import SHARD_INDEX_SCHEMA, ErrorReason, ErrorStage, table_from_rows, with_file_metadata


logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "dpmesh_shard"
_READ_AHEAD = 8


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


class ListCorpusFn(beam.DoFn):
    """Lists the corpus on a worker, lazily, so the driver never holds the listing; then reports the count."""

    def __init__(self, storage_cfg: StorageConfig, input_cfg: InputConfig) -> None:
        self._storage_cfg = storage_cfg
        self._input_cfg = input_cfg
        self._listed = _counter("files_listed")

    def process(self, _: Any) -> Iterator[SourceFile | ManifestRecord]:
        listed = 0
        for source in list_corpus(Storage(self._storage_cfg), self._input_cfg):
            self._listed.inc()
            listed += 1
            yield source
        yield ManifestRecord(FILES_LISTED_KIND, listed)


class ProbeFileFn(beam.DoFn):
    """Reads, hashes and decodes one file; emits a :class:`ShardSample` or an error record."""

    def __init__(self, storage_cfg: StorageConfig, shard_cfg: ShardConfig) -> None:
        self._storage_cfg = storage_cfg
        self._shard_cfg = shard_cfg
        self._ok = _counter("images_ok")
        self._errored = _counter("files_errored")

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)

    def process(self, source: SourceFile) -> Iterator[Any]:
        key = make_key(source.relpath)
        try:
            data = self._read(source)
            decode = self._shard_cfg.validate == ValidateMode.decode
            info = probe_image(data, max_image_pixels=self._shard_cfg.max_image_pixels, decode=decode)
        except ImageRejectedError as exc:
            self._errored.inc()
            stage = ErrorStage.SHARD_READ if exc.reason in _READ_REASONS else ErrorStage.SHARD_DECODE
            yield ManifestRecord(ERROR_KIND, error_row(stage, exc.reason, str(exc), key=key, source_uri=source.uri))
            return
        self._ok.inc()
        yield ShardSample(
            key=key,
            source_uri=source.uri,
            sha1=hashlib.sha1(data).hexdigest(),
            format=info.format,
            extension=info.extension,
            width=info.width,
            height=info.height,
            exif_orientation=info.exif_orientation,
            bytes=len(data),
            relpath=source.relpath,
        )

    def _read(self, source: SourceFile) -> bytes:
        limit = self._shard_cfg.max_file_bytes
        too_large = ImageRejectedError(ErrorReason.FILE_TOO_LARGE.value, f"file exceeds shard.max_file_bytes={limit}")
        if source.size is not None and source.size > limit:
            raise too_large
        try:
            data = self._storage.read_bytes(source.uri)
        except TransientStorageError:
            raise  # the store is failing, not the file: fail the work item so the runner retries it
        except OSError as exc:
            raise ImageRejectedError(ErrorReason.READ_FAILED.value, f"{type(exc).__name__}: {exc}") from None
        if len(data) > limit:
            raise too_large
        return data


_READ_REASONS = {ErrorReason.READ_FAILED.value, ErrorReason.FILE_TOO_LARGE.value, ErrorReason.ZERO_BYTES.value}


class ResolveDuplicatesFn(beam.DoFn):
    """Input: ``(sha1, samples)``. Reports byte-identical files; optionally keeps only the smallest key."""

    def __init__(self, drop_duplicates: bool) -> None:
        self._drop = drop_duplicates
        self._duplicates = _counter("duplicate_files")

    def process(self, element: tuple[str, Iterable[ShardSample]]) -> Iterator[Any]:
        sha1, group = element
        samples = sorted(group, key=lambda s: s.key)
        if len(samples) > 1:
            self._duplicates.inc(len(samples) - 1)
            yield ManifestRecord(DUPLICATE_GROUP_KIND, {"sha1": sha1, "keys": [s.key for s in samples]})
        if not self._drop:
            yield from samples
            return
        yield samples[0]
        for dup in samples[1:]:
            message = f"same bytes as {samples[0].source_uri} (kept as {samples[0].key})"
            row = error_row(
                ErrorStage.SHARD_DEDUP, ErrorReason.DUPLICATE, message, key=dup.key, source_uri=dup.source_uri
            )
            yield ManifestRecord(ERROR_KIND, row)


def read_annotations(
    uri: str, storage_cfg: StorageConfig, annotation_format: str = "auto"
) -> Iterator[tuple[str, ImageAnnotations]]:
    """``(join name, annotations)`` for every annotated image of an annotation file (COCO-17 persons).

    ``annotation_format`` is ``coco``, ``crowdpose``, ``aic`` or ``auto`` (told from the file; see
    :mod:`pipelines.annotation_formats`).
    """
    for annotations in parse_annotations(Storage(storage_cfg).read_bytes(uri), annotation_format):
        yield join_name(annotations.file_name), annotations


class AttachAnnotationsFn(beam.DoFn):
    """Input: ``(join name, {"images": [...], "annotations": [...]})``; attaches persons to their image.

    A name matched by several images (same file name in different folders) is ambiguous: those images
    are sharded without persons and reported in the manifest rather than guessing.
    """

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        name, grouped = element
        images = sorted(grouped["images"], key=lambda s: s.key)
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
        for problem in ann.problems:
            message = f"annotation {problem.annotation_id}: {problem.message}"
            row = error_row(
                ErrorStage.SHARD_ANNOTATIONS, problem.reason, message, key=image.key, source_uri=image.source_uri
            )
            yield ManifestRecord(ERROR_KIND, row)
        yield replace(image, annotated=True, persons=ann.persons)


def count_and_bytes(samples: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """Combine ``(count, bytes)`` pairs."""
    count = total = 0
    for c, b in samples:
        count += c
        total += b
    return count, total


def num_buckets(totals: tuple[int, int], cfg: ShardConfig) -> int:
    """How many digest buckets (planned shards) a corpus of ``(count, bytes)`` gets.

    Sized so an average shard sits at ``fill_target`` of both caps; the key digest then spreads samples
    evenly, and the rare bucket that still exceeds a cap spills into an overflow shard.
    """
    count, total = totals
    by_count = count / (cfg.max_samples * cfg.fill_target)
    by_bytes = total / (cfg.max_bytes * cfg.fill_target)
    return max(1, math.ceil(max(by_count, by_bytes)))


class WriteBucketFn(beam.DoFn):
    """Input: ``((bucket, buckets), samples)``. Cuts the bucket into shards and writes each tar and index.

    The bucket count rides in the key rather than in a side input: the DaskRunner would recompute a side
    input (here: probe the whole corpus again) for every bundle that reads it.

    Each shard is built in a local temporary file, then published with one upload, then its index
    Parquet is written: an index present means its tar is complete.
    """

    def __init__(self, storage_cfg: StorageConfig, shard_cfg: ShardConfig, output: str, file_metadata: dict[str, str]):
        self._storage_cfg = storage_cfg
        self._shard_cfg = shard_cfg
        self._output = output
        self._file_metadata = file_metadata
        self._shards = _counter("shards_written")
        self._samples = _counter("samples_written")
        self._changed = _counter("files_changed_during_run")

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)
        self._pool = ThreadPoolExecutor(max_workers=_READ_AHEAD)
        self._schema = with_file_metadata(SHARD_INDEX_SCHEMA, **self._file_metadata)

    def teardown(self) -> None:
        self._pool.shutdown(wait=False)

    def process(self, element: tuple[tuple[int, int], Iterable[ShardSample]]) -> Iterator[ManifestRecord]:
        (bucket, buckets), samples = element
        parts = cut_into_shards(samples, max_samples=self._shard_cfg.max_samples, max_bytes=self._shard_cfg.max_bytes)
        for part_index, part in enumerate(parts):
            yield from self._write_shard(shard_id_of_part(bucket, part_index, buckets), part)

    def _write_shard(self, shard_id: int, samples: list[ShardSample]) -> Iterator[ManifestRecord]:
        name = shard_name(shard_id)
        with tempfile.TemporaryDirectory(prefix="dpmesh-shard-") as tmpdir:
            tar_path = os.path.join(tmpdir, f"{name}.tar")
            with open(tar_path, "wb") as tar_file:
                writer = ShardTarWriter(tar_file)
                for sample, data, problem in self._read_verified(samples, name):
                    if problem is not None:
                        yield ManifestRecord(ERROR_KIND, problem)
                    else:
                        writer.add(sample, data)
                writer.close()
            if not writer.members:
                return
            self._storage.upload_file(tar_path, join(self._output, f"{name}.tar"))
            rows = index_rows(writer.members, shard_id)
            self._storage.write_bytes(
                join(self._output, f"{name}.parquet"), parquet_bytes(table_from_rows(rows, self._schema))
            )
            summary = {
                "shard": name,
                "samples": len(rows),
                "image_bytes": sum(r["bytes"] for r in rows),
                "persons": sum(r["n_persons"] for r in rows),
                "annotated": sum(1 for r in rows if r["annotated"]),
                "tar_bytes": os.path.getsize(tar_path),
                "tar_sha1": file_sha1(tar_path),
            }
        self._shards.inc()
        self._samples.inc(len(rows))
        yield ManifestRecord(SUMMARY_KIND, summary)

    def _read_verified(self, samples: list[ShardSample], shard: str) -> Iterator[tuple[ShardSample, bytes, Any]]:
        """Reads samples a few ahead (object stores reward concurrency), in order, checking each hash."""
        pending: list[tuple[ShardSample, Future[bytes]]] = []
        queue = iter(samples)
        for sample in queue:
            pending.append((sample, self._pool.submit(self._storage.read_bytes, sample.source_uri)))
            if len(pending) >= _READ_AHEAD:
                yield self._verify(*pending.pop(0), shard)
        while pending:
            yield self._verify(*pending.pop(0), shard)

    def _verify(self, sample: ShardSample, future: "Future[bytes]", shard: str) -> tuple[ShardSample, bytes, Any]:
        try:
            data = future.result()
        except TransientStorageError:
            raise  # as in probing: a persisting store fault is not a property of the file
        except OSError as exc:
            message = f"{type(exc).__name__}: {exc}"
            return sample, b"", self._error(sample, shard, ErrorReason.READ_FAILED, message)
        if hashlib.sha1(data).hexdigest() != sample.sha1:
            self._changed.inc()
            message = "bytes changed since they were probed"
            return sample, b"", self._error(sample, shard, ErrorReason.CHANGED_DURING_RUN, message)
        return sample, data, None

    @staticmethod
    def _error(sample: ShardSample, shard: str, reason: ErrorReason, message: str) -> dict[str, Any]:
        return error_row(
            ErrorStage.SHARD_WRITE, reason, message, key=sample.key, source_uri=sample.source_uri, shard=shard
        )

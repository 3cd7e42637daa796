"""Writing one planned shard: read each file once, check it, append it to the tar as it is hashed, publish.

Per planned shard, in key order: read the file (object stores: 8 reads ahead), check its size and image
header (:mod:`pipelines.shard.probe`), hash it, append it to the tar, which is itself hashed as it is
written straight to its final name (:mod:`pipelines.shard.publish`). Then the index Parquet, then the
shard's marker ``_shards/shard-NNNNNN.json`` (counts, tar digest, the shard's error rows): the marker is
the shard's commit. A rerun finds the markers of finished shards and keeps them untouched when the plan
gave the same shard (same files, sizes, persons; same config), so a killed run resumes shard by shard.

Storage faults that persist (:class:`~pipelines.storage.TransientStorageError`) fail the work item so the
runner retries it; only problems of the file itself become error rows.
"""

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam

from pipelines.common.metrics import SHARD_METRICS, counter
from pipelines.config import ShardConfig, ValidateMode
from pipelines.config.storage import StorageConfig
from pipelines.error_rows import error_row, error_sort_key
from pipelines.parquet_io import parquet_bytes
from pipelines.shard.exclude import BenchmarkHashes, BenchmarkMatcher
from pipelines.shard.perceptual_hash import UnhashableImageError, perceptual_hash
from pipelines.shard.plan import PlannedFile, PlannedShard, plan_bucket
from pipelines.shard.probe import ImageRejectedError, probe_image
from pipelines.shard.publish import TarSink, remove_stale_temporaries
from pipelines.shard.tar_format import ShardSample, ShardTarWriter, index_rows
from pipelines.storage import ObjectNotFoundError, Storage, TransientStorageError, join, parse_uri
from schemas import SHARD_INDEX_SCHEMA, ErrorReason, ErrorStage, table_from_rows, with_file_metadata


logger = logging.getLogger(__name__)

MARKERS_FOLDER = "_shards"
_READ_AHEAD = 8
_READ_REASONS = {
    ErrorReason.READ_FAILED.value,
    ErrorReason.FILE_TOO_LARGE.value,
    ErrorReason.ZERO_BYTES.value,
    ErrorReason.NOT_A_FILE.value,
    ErrorReason.BROKEN_LINK.value,
    ErrorReason.OUTSIDE_INPUT.value,
    ErrorReason.INVALID_FILE_NAME.value,
}


def marker_uri(output: str, shard: str) -> str:
    """Where a shard's marker (its commit record) lives."""
    return join(output, MARKERS_FOLDER, f"{shard}.json")


@dataclass(frozen=True)
class ShardDone:
    """A planned shard that is finished (written now or by an earlier run): its marker without the error rows.

    Attributes:
        shard: Shard name.
        files: Planned files (listed entries) it covered.
        samples: Images in its tar (0: no tar nor index was written, every file is an error row).
        errors: Its error rows, of which ``file_errors`` are files left out (the others are annotation problems).
        summary: The manifest's entry for it (``shard``, ``samples``, ``image_bytes``, ``persons``,
            ``annotated``, ``tar_bytes``, ``tar_sha1``), None when it holds no sample.
        errors_by_reason: Files left out, by reason.
        resumed: True when an earlier run wrote it.
        buckets: The plan's bucket count (sizes the duplicate search's partitions).
        shard_id: Its number.
    """

    shard: str
    files: int
    samples: int
    errors: int
    file_errors: int
    summary: dict[str, Any] | None
    errors_by_reason: dict[str, int]
    resumed: bool
    buckets: int = 1
    shard_id: int = 0


class WriteShardsFn(beam.DoFn):
    """Input: ``((bucket, buckets), files)``; plans the bucket's shards, writes those not finished, yields
    a :class:`ShardDone` per shard.

    ``first_shard`` numbers the shards after an existing set's (an appended generation); ``benchmark`` is the
    benchmark overlap guard's list (:mod:`pipelines.shard.exclude`), None without one.
    """

    def __init__(
        self,
        storage_cfg: StorageConfig,
        shard_cfg: ShardConfig,
        output: str,
        file_metadata: dict[str, str],
        first_shard: int = 0,
        benchmark: BenchmarkHashes | None = None,
    ) -> None:
        self._storage_cfg = storage_cfg
        self._shard_cfg = shard_cfg
        self._output = output
        self._file_metadata = file_metadata
        self._first_shard = first_shard
        self._benchmark = benchmark
        self._written = counter(SHARD_METRICS, "shards_written")
        self._resumed = counter(SHARD_METRICS, "shards_resumed")
        self._samples = counter(SHARD_METRICS, "samples_written")
        self._errored = counter(SHARD_METRICS, "files_errored")
        self._excluded = counter(SHARD_METRICS, "benchmark_overlap")
        self._unhashed = counter(SHARD_METRICS, "images_unhashed")

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)
        self._matcher = BenchmarkMatcher(self._benchmark) if self._benchmark is not None else None
        self._pool = ThreadPoolExecutor(max_workers=_READ_AHEAD)
        self._schema = with_file_metadata(SHARD_INDEX_SCHEMA, **self._file_metadata)
        remove_stale_temporaries(self._output, folders=())  # temp folders of killed workers on this machine

    def teardown(self) -> None:
        self._pool.shutdown(wait=False)

    def process(self, element: tuple[tuple[int, int], Iterable[PlannedFile]]) -> Iterator[ShardDone]:
        (bucket, buckets), files = element
        extra = f"exclude={self._benchmark.digest}" if self._benchmark is not None else ""
        for shard in plan_bucket(bucket, buckets, files, self._shard_cfg, self._first_shard, extra):
            done = self._finished(shard)
            if done is None:
                done = self._write(shard)
                self._written.inc()
            else:
                self._resumed.inc()
            yield replace(done, buckets=buckets, shard_id=shard.shard_id)

    def _finished(self, shard: PlannedShard) -> ShardDone | None:
        """The shard as an earlier run finished it, if its marker matches this plan and config."""
        try:
            marker = json.loads(self._storage.read_bytes(marker_uri(self._output, shard.name)))
        except ObjectNotFoundError:
            return None
        if marker.get("identity") != shard.identity or marker.get("config_hash") != self._file_metadata["config_hash"]:
            logger.info("%s: an earlier run planned it differently; writing it again", shard.name)
            return None
        return _done(marker, resumed=True)

    def _write(self, shard: PlannedShard) -> ShardDone:
        errors: list[dict[str, Any]] = []
        tar_uri = join(self._output, f"{shard.name}.tar")
        with TarSink(self._storage, tar_uri) as sink:
            writer = ShardTarWriter(sink)
            for planned, data, problem in self._read_all(shard.files):
                errors.extend(_annotation_errors(planned))
                sample = None if problem else self._check(planned, data, errors)
                if problem:
                    errors.append(problem)
                if sample is not None:
                    writer.add(sample, data)
            tar_sha1 = writer.close()
            if writer.members:
                sink.publish()
        rows = index_rows(writer.members, shard.name)
        if rows:
            index = parquet_bytes(table_from_rows(rows, self._schema))
            self._storage.write_bytes(join(self._output, f"{shard.name}.parquet"), index)
        errors.sort(key=error_sort_key)
        marker = {
            "shard": shard.name,
            "identity": shard.identity,
            "config_hash": self._file_metadata["config_hash"],
            "files": len(shard.files),
            "samples": len(rows),
            "image_bytes": sum(r["bytes"] for r in rows),
            "persons": sum(r["n_persons"] for r in rows),
            "annotated": sum(1 for r in rows if r["annotated"]),
            "tar_bytes": writer.size if rows else 0,
            "tar_sha1": tar_sha1 if rows else None,
            "errors": errors,
        }
        document = json.dumps(marker, sort_keys=True, separators=(",", ":")).encode("utf-8")
        self._storage.write_bytes(marker_uri(self._output, shard.name), document)  # last: the shard's commit
        self._samples.inc(len(rows))
        return _done(marker, resumed=False)

    def _check(self, planned: PlannedFile, data: bytes, errors: list[dict[str, Any]]) -> ShardSample | None:
        """The sample of bytes read for ``planned``, or None with its error row appended."""
        source = planned.source
        try:
            if len(data) > self._shard_cfg.max_file_bytes:
                raise _too_large(self._shard_cfg.max_file_bytes)
            decode = self._shard_cfg.validate == ValidateMode.decode
            info = probe_image(data, max_image_pixels=self._shard_cfg.max_image_pixels, decode=decode)
        except ImageRejectedError as exc:
            self._errored.inc()
            stage = ErrorStage.SHARD_READ if exc.reason in _READ_REASONS else ErrorStage.SHARD_DECODE
            errors.append(error_row(stage, exc.reason, str(exc), key=planned.key, source_uri=source.uri))
            return None
        sha1 = hashlib.sha1(data).hexdigest()
        try:
            phash: int | None = perceptual_hash(data)
        except UnhashableImageError:  # corrupt pixels in a whole file: header mode leaves them to labeling
            phash = None
            self._unhashed.inc()
        overlap = self._matcher.match(sha1, phash) if self._matcher is not None else None
        if overlap is not None:
            self._errored.inc()
            self._excluded.inc()
            reason = ErrorReason.BENCHMARK_OVERLAP
            errors.append(error_row(ErrorStage.SHARD_DEDUP, reason, overlap, key=planned.key, source_uri=source.uri))
            return None
        return ShardSample(
            key=planned.key,
            source_uri=source.uri,
            sha1=sha1,
            format=info.format,
            extension=info.extension,
            width=info.width,
            height=info.height,
            exif_orientation=info.exif_orientation,
            bytes=len(data),
            relpath=source.relpath,
            annotated=planned.annotated,
            persons=planned.persons,
            phash=phash,
        )

    def _read_all(self, files: tuple[PlannedFile, ...]) -> Iterator[tuple[PlannedFile, bytes, dict[str, Any] | None]]:
        """``(file, bytes, error row)`` in key order; object stores are read a few ahead (they reward concurrency)."""
        if parse_uri(files[0].source.uri).scheme == "file":  # local reads gain nothing from threads
            for planned in files:
                yield self._read(planned)
            return
        pending: list[Future[tuple[PlannedFile, bytes, dict[str, Any] | None]]] = []
        for planned in files:
            pending.append(self._pool.submit(self._read, planned))
            if len(pending) >= _READ_AHEAD:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()

    def _read(self, planned: PlannedFile) -> tuple[PlannedFile, bytes, dict[str, Any] | None]:
        source = planned.source
        reason = message = None
        data = b""
        if source.problem is not None:
            reason, message = source.problem
        elif planned.duplicate_of is not None:
            kept_key, kept_uri = planned.duplicate_of
            reason, message = ErrorReason.DUPLICATE.value, f"same bytes as {kept_uri} (kept as {kept_key})"
        elif source.size is not None and source.size > self._shard_cfg.max_file_bytes:
            reason, message = ErrorReason.FILE_TOO_LARGE.value, str(_too_large(self._shard_cfg.max_file_bytes))
        else:
            try:
                data = self._storage.read_bytes(source.uri)
            except TransientStorageError:
                raise  # the store is failing, not the file: fail the work item so the runner retries it
            except OSError as exc:
                reason, message = ErrorReason.READ_FAILED.value, f"{type(exc).__name__}: {exc}"
        if reason is None:
            return planned, data, None
        self._errored.inc()
        stage = ErrorStage.SHARD_DEDUP if reason == ErrorReason.DUPLICATE.value else ErrorStage.SHARD_READ
        return planned, b"", error_row(stage, reason, str(message), key=planned.key, source_uri=source.uri)


def _too_large(limit: int) -> ImageRejectedError:
    return ImageRejectedError(ErrorReason.FILE_TOO_LARGE.value, f"file exceeds shard.max_file_bytes={limit}")


def _annotation_errors(planned: PlannedFile) -> Iterator[dict[str, Any]]:
    for annotation_id, message in planned.annotation_problems:
        yield error_row(
            ErrorStage.SHARD_ANNOTATIONS,
            ErrorReason.INVALID_ANNOTATION,
            f"annotation {annotation_id}: {message}",
            key=planned.key,
            source_uri=planned.source.uri,
        )


_FILE_STAGES = {
    ErrorStage.SHARD_READ.value,
    ErrorStage.SHARD_DECODE.value,
    ErrorStage.SHARD_DEDUP.value,
    ErrorStage.SHARD_WRITE.value,
}


def is_file_error(row: dict[str, Any]) -> bool:
    """Errors at these stages mean an input file was not sharded; annotation problems are about persons."""
    return row["stage"] in _FILE_STAGES


def _done(marker: dict[str, Any], *, resumed: bool) -> ShardDone:
    file_errors = [e for e in marker["errors"] if is_file_error(e)]
    by_reason: dict[str, int] = {}
    for e in file_errors:
        by_reason[e["reason"]] = by_reason.get(e["reason"], 0) + 1
    summary_keys = ("shard", "samples", "image_bytes", "persons", "annotated", "tar_bytes", "tar_sha1")
    return ShardDone(
        shard=marker["shard"],
        files=marker["files"],
        samples=marker["samples"],
        errors=len(marker["errors"]),
        file_errors=len(file_errors),
        summary={k: marker[k] for k in summary_keys} if marker["samples"] else None,
        errors_by_reason=by_reason,
        resumed=resumed,
    )

"""Reading one shard for labeling: stream its tar, check each sample against the index, decode, find persons.

:meth:`ShardReader.read` yields, in shard order, a :class:`PersonTask` per person ready for the model and an
error row (a ``dict`` of :data:`schemas.ERROR_SCHEMA`) per element that cannot be labeled, and fills a
:class:`ShardReport` with the counts that make the shard reconcile.

What is content and what is a fault decides what becomes a row:

* Content problems become error rows: a member or index row whose key is not of the one key grammar
  (``invalid_key``: never labeled, so no later tool builds a path from it), a member whose key the index does not
  list (``not_in_index``), a key seen
  twice (``duplicate``: the first one is labeled, never both), image bytes whose sha1 differs from the index
  (``checksum_mismatch``), a tar that ends early or is damaged (``truncated_shard``, plus one row per sample
  the index lists but the tar did not yield), undecodable images, malformed annotations.
* Storage faults are not content: :class:`~pipelines.storage.StorageError` propagates out of the reader, so the
  work item fails and the runner retries it; no row and no marker is written for that shard.

Samples a later generation of the shard set retired (:attr:`ShardTask.retired`) are passed over undecoded: they
give no row and no count but their own (:func:`retired_counts`).
"""

import hashlib
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import cv2

from dpmesh_core.config import CropGeometry
from pipelines.common.image_decode import DecodedImage, ImageDecodeError, open_image
from pipelines.common.label_units import IMAGES_RETIRED, PERSONS_RETIRED, ShardReport, ShardTask
from pipelines.common.safe_paths import KEY_GRAMMAR, is_valid_key
from pipelines.common.shard_members import ShardReadError, ShardSampleData, iter_shard_samples, sample_metadata
from pipelines.common.shard_set import index_uri_of
from pipelines.config import DEFAULT_MAX_IMAGE_PIXELS, DetectorName
from pipelines.config.label import CropMode
from pipelines.error_rows import error_row
from pipelines.label.detection.records import ImageDetections
from pipelines.label.detection.shard_detector import ShardDetector, needs_detection
from pipelines.label.persons import AnnotatedPerson, PersonTask, decode_for_crops, person_from_json, prepare_tasks
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage
from schemas import ErrorReason, ErrorStage, KeypointSource


IndexRows = dict[str, dict[str, Any]]
"""A shard index's rows by key (columns key, sha1, n_persons, source_uri)."""


logger = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20
# With detection, images wait for their detection batch to fill; at most this many detection batches' worth of
# decoded images (annotated ones included) are held before a partial batch is detected anyway.
_MAX_PENDING_BATCHES = 4
# Samples decoded and cropped ahead of the one being emitted, per preparation thread: enough to keep every thread
# busy while the reader waits on the oldest, few enough to bound memory (each holds a decoded image and its crops).
_SAMPLES_AHEAD_PER_THREAD = 2


def default_prep_threads() -> int:
    """The worker's cores minus one (the model's thread, or the process's own work), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def read_shard_index(storage: Storage, shard_uri: str) -> IndexRows | None:
    """The shard's index rows by key, or None when the shard has no index (labeled with weaker checks)."""
    try:
        data = storage.read_bytes(index_uri_of(shard_uri))
    except FileNotFoundError:
        logger.warning("%s has no index: members are not checked against it", shard_uri)
        return None
    columns = ["key", "sha1", "n_persons", "source_uri"]
    return {row["key"]: row for row in read_parquet_bytes(data).select(columns).to_pylist()}


def retired_counts(task: ShardTask, index: IndexRows | None) -> Counter[str]:
    """The shard's retired samples (:data:`IMAGES_RETIRED`: those of its index, all of them without one) and their
    persons as the index lists them (:data:`PERSONS_RETIRED`); empty for a shard with none retired."""
    if not task.retired:
        return Counter()
    if index is None:
        return Counter({IMAGES_RETIRED: len(task.retired), PERSONS_RETIRED: 0})
    keys = [key for key in task.retired if key in index]
    persons = sum(int(index[key]["n_persons"] or 0) for key in keys)
    return Counter({IMAGES_RETIRED: len(keys), PERSONS_RETIRED: persons})


def errored_images(errors: Iterable[Mapping[str, Any]]) -> set[str]:
    """The keys of the images the reader counted as ``images_errored``, from their error rows: a row of the image as
    a whole (``person_idx`` null) or of the read and decode stages, which fail the image with all its persons.
    Person-level rows of a read image (preprocess, a failed batch) and shard-level rows (no key) fail no image."""
    image_stages = {ErrorStage.LABEL_READ.value, ErrorStage.LABEL_DECODE.value}
    return {
        str(row["key"])
        for row in errors
        if row.get("key") is not None and (row.get("person_idx") is None or row.get("stage") in image_stages)
    }


class _HashingStream:
    """A read-only stream that hashes and counts every byte read through it (the tar's identity, in one pass)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha1 = hashlib.sha1()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.sha1.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Reads what tarfile left (end-of-archive blocks), so the digest covers the whole object."""
        while self.read(_READ_CHUNK):
            pass


@dataclass
class _Pending:
    """A sample waiting for its detection batch: its persons are unknown until the batch is detected."""

    sample: ShardSampleData
    meta: dict[str, Any]
    image: DecodedImage
    detect: bool


@dataclass
class _Prepared:
    """What one sample gave, in order: rows and person tasks, the counts they add, or a sample waiting for
    detection. Made in a preparation thread, emitted (and counted) by the reading thread in shard order."""

    items: list[PersonTask | dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    pending: _Pending | None = None


class ShardReader:
    """Streams shards and turns their samples into person tasks and error rows.

    Args:
        storage: Where shards are read from.
        max_image_pixels: Larger images are ``decompression_bomb`` errors; None: each shard's own limit
            (:attr:`ShardTask.max_image_pixels`, else the shard job's default).
        detector: Where persons come from; with ``vitpose``/``auto``, ``shard_detector`` finds them.
        shard_detector: Runs detection on batches of images (None with ``detector=annotations``).
        geometry: The model's crop geometry, which every person's crop is cut with.
        crop_mode: ``reference`` (the official crop) or ``fast`` (see :class:`CropMode`).
        prep_threads: Threads that decode and crop samples ahead of the one being emitted (0: in the calling
            thread; None: :func:`default_prep_threads`). Items come out in shard order whatever the value.
    """

    def __init__(
        self,
        storage: Storage,
        max_image_pixels: int | None,
        detector: DetectorName = DetectorName.annotations,
        shard_detector: ShardDetector | None = None,
        *,
        geometry: CropGeometry,
        crop_mode: CropMode = CropMode.reference,
        prep_threads: int | None = 0,
    ) -> None:
        if detector != DetectorName.annotations and shard_detector is None:
            raise ValueError(f"detector={detector.value} needs a ShardDetector")
        self._storage = storage
        self._max_pixels = max_image_pixels
        self._detector = detector
        self._shard_detector = shard_detector
        self._geometry = geometry
        self._crop_mode = crop_mode
        self._threads = default_prep_threads() if prep_threads is None else prep_threads
        # Parallelism is ours (prep_threads): OpenCV's own thread pool on top would oversubscribe the cores.
        cv2.setNumThreads(1)

    def read(self, task: ShardTask, report: ShardReport) -> Iterator[PersonTask | dict[str, Any]]:
        """Every person task and error row of the shard, in shard order.

        Raises:
            StorageError: the shard or its index could not be read (after retries): not a content problem.
        """
        index = read_shard_index(self._storage, task.uri)
        report.counts.update(retired_counts(task, index))
        pixel_limit = self._max_pixels or task.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS
        seen: set[str] = set()
        pending: list[_Pending] = []
        # Samples in flight, oldest first: each a Future of a _Prepared, or a _Prepared made in this thread.
        ahead: deque[Future[_Prepared] | _Prepared] = deque()
        depth = max(1, self._threads * _SAMPLES_AHEAD_PER_THREAD)
        pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"prep-{task.name}") if self._threads else None

        def emit(block: bool) -> Iterator[PersonTask | dict[str, Any]]:
            while ahead and (block or len(ahead) > depth or _ready(ahead[0])):
                head = ahead.popleft()
                yield from self._emit(task, head.result() if isinstance(head, Future) else head, pending, report)

        try:
            with self._storage.open_read(task.uri) as raw:
                stream = _HashingStream(raw)
                try:
                    for sample in iter_shard_samples(stream):  # type: ignore[arg-type]
                        if sample.key in task.retired:  # out of the live set: never labeled, counted apart
                            seen.add(sample.key)
                            continue
                        work = self._sample(task, sample, index, seen, report, pixel_limit)
                        ahead.append(work if isinstance(work, _Prepared) else _run(pool, work))
                        yield from emit(block=False)
                    stream.drain()
                except ShardReadError as exc:
                    yield from emit(block=True)
                    yield from self._flush(task, pending, report)
                    yield self._error(task, ErrorStage.LABEL_READ, ErrorReason.TRUNCATED_SHARD, str(exc))
                report.tar_bytes, report.tar_sha1 = stream.size, stream.sha1.hexdigest()
            yield from emit(block=True)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        yield from self._flush(task, pending, report)
        yield from self._missing_samples(task, index, seen, report)
        yield from self._check_identity(task, report)

    def _sample(
        self,
        task: ShardTask,
        sample: ShardSampleData,
        index: dict[str, dict[str, Any]] | None,
        seen: set[str],
        report: ShardReport,
        pixel_limit: int,
    ) -> _Prepared | Callable[[], _Prepared]:
        """Checks a sample against the index (here, in shard order: ``seen`` decides duplicates); returns its
        error rows, or the work that decodes it (at most ``pixel_limit`` pixels) and cuts its crops."""
        report.counts["images_in"] += 1
        problem = self._member_problem(sample, index, seen)
        seen.add(sample.key)
        if problem is not None:
            reason, message = problem
            error = self._error(task, ErrorStage.LABEL_READ, reason, message, key=sample.key)
            return _Prepared([error], Counter(images_errored=1))
        try:
            meta = sample_metadata(sample)
        except ValueError as exc:
            reason = ErrorReason.INVALID_ANNOTATION
            error = self._error(task, ErrorStage.LABEL_DECODE, reason, str(exc), key=sample.key)
            return _Prepared([error], Counter(images_errored=1))
        detect = self._shard_detector is not None and needs_detection(self._detector, meta)
        return lambda: self._prepare(task, sample, meta, detect, pixel_limit)

    def _prepare(
        self, task: ShardTask, sample: ShardSampleData, meta: dict[str, Any], detect: bool, pixel_limit: int
    ) -> _Prepared:
        """Decodes a sample and, without detection, cuts its persons' crops (in a preparation thread: touches no
        shared state; its counts travel in the result)."""
        persons = [] if detect else list(meta.get("persons") or [])
        try:
            opened = open_image(sample.image_bytes() or b"", max_image_pixels=pixel_limit)
            # The detector sees the full image; annotated persons are cut at the crop mode's scale.
            image = opened.decode(1) if detect else decode_for_crops(opened, persons, self._geometry, self._crop_mode)
        except ImageDecodeError as exc:
            done = _Prepared(counts=Counter(images_errored=1, persons_in=len(persons)))
            where = {"key": sample.key, "source_uri": meta.get("source_uri")}
            for idx in range(len(persons)) or [None]:
                done.items.append(
                    self._error(task, ErrorStage.LABEL_DECODE, exc.reason, str(exc), person_idx=idx, **where)
                )
            return done
        item = _Pending(sample, meta, image, detect)
        if self._shard_detector is not None:  # every sample waits its turn behind the detection batch
            return _Prepared(pending=item)
        done = _Prepared()
        done.items.extend(self._persons(task, item, None, done.counts))
        return done

    def _emit(
        self, task: ShardTask, prepared: _Prepared, pending: list[_Pending], report: ShardReport
    ) -> Iterator[PersonTask | dict[str, Any]]:
        """A prepared sample's items and counts, in shard order; a sample for detection joins the pending batch."""
        report.counts.update(prepared.counts)
        yield from prepared.items
        if prepared.pending is None:
            return
        pending.append(prepared.pending)
        detector = self._shard_detector
        waiting = sum(p.detect for p in pending)
        if (
            detector is None
            or waiting == 0
            or waiting >= detector.batch_size
            or len(pending) >= _MAX_PENDING_BATCHES * detector.batch_size
        ):
            yield from self._flush(task, pending, report)

    def _member_problem(
        self, sample: ShardSampleData, index: dict[str, dict[str, Any]] | None, seen: set[str]
    ) -> tuple[ErrorReason, str] | None:
        """Why a member must not be labeled: a key off the grammar, a repeated key, a key the index lacks, bytes
        that changed."""
        if not is_valid_key(sample.key):
            return ErrorReason.INVALID_KEY, f"sample key {sample.key!r} is not {KEY_GRAMMAR}"
        if sample.key in seen:
            return ErrorReason.DUPLICATE, "the key appears again in the shard tar; only its first sample is labeled"
        if index is None:
            return None
        row = index.get(sample.key)
        if row is None:
            return ErrorReason.NOT_IN_INDEX, "the shard index does not list this member (tar changed after sharding)"
        digest = hashlib.sha1(sample.image_bytes() or b"").hexdigest()
        if row["sha1"] and digest != row["sha1"]:
            return ErrorReason.CHECKSUM_MISMATCH, f"image sha1 {digest} differs from the index's {row['sha1']}"
        return None

    def _flush(
        self, task: ShardTask, pending: list[_Pending], report: ShardReport
    ) -> Iterator[PersonTask | dict[str, Any]]:
        """Detects the waiting images (one batch), then emits every pending sample's persons in shard order."""
        if not pending:
            return
        detections: dict[str, ImageDetections] = {}
        waiting = [p for p in pending if p.detect]
        if waiting and self._shard_detector is not None:
            batch_id = f"{task.name}/{waiting[0].sample.key}"
            images = [p.image.pixels for p in waiting]
            found = self._shard_detector.detect(batch_id, [p.sample.key for p in waiting], images)
            detections = found.images
            report.detector_models.update(found.models)
        for item in pending:
            detected = detections.get(item.sample.key) if item.detect else None
            yield from self._persons(task, item, detected, report.counts)
        pending.clear()

    def _persons(
        self, task: ShardTask, item: _Pending, detected: ImageDetections | None, counts: Counter[str]
    ) -> Iterator[PersonTask | dict[str, Any]]:
        sample, meta = item.sample, item.meta
        where = {"key": sample.key, "source_uri": meta.get("source_uri")}
        if item.detect and (detected is None or detected.error is not None):
            counts["images_errored"] += 1  # detection failed: no persons are known for the image
            message = detected.error if detected is not None else "no detection result for the image"
            yield self._error(task, ErrorStage.LABEL_INFERENCE, ErrorReason.INFERENCE_FAILED, message, **where)
            return
        counts["images_ok"] += 1
        persons: list[tuple[int, AnnotatedPerson]] = []
        if detected is not None:
            persons = list(enumerate(detected.persons))
            counts["persons_in"] += len(persons)
        else:
            raw_persons = list(meta.get("persons") or [])
            counts["persons_in"] += len(raw_persons)
            for idx, raw in enumerate(raw_persons):
                try:
                    persons.append((idx, person_from_json(raw)))
                except (ValueError, TypeError) as exc:
                    reason = ErrorReason.INVALID_ANNOTATION
                    yield self._error(task, ErrorStage.LABEL_PREPROCESS, reason, str(exc), person_idx=idx, **where)
        source = (KeypointSource.VITPOSE if detected is not None else KeypointSource.ANNOTATIONS).value
        for idx, prepared in prepare_tasks(
            item.image, persons, shard=task.name, image_key=sample.key, source_uri=str(meta.get("source_uri", "")),
            source=source, geometry=self._geometry, shard_uri=task.uri,
            crop_mode=self._crop_mode,
        ):  # fmt: skip
            if isinstance(prepared, PersonTask):
                yield prepared
            else:
                reason = getattr(prepared, "reason", ErrorReason.INVALID_ANNOTATION.value)
                yield self._error(task, ErrorStage.LABEL_PREPROCESS, reason, str(prepared), person_idx=idx, **where)

    def _missing_samples(
        self, task: ShardTask, index: dict[str, dict[str, Any]] | None, seen: set[str], report: ShardReport
    ) -> Iterator[dict[str, Any]]:
        """Samples the index lists but the tar did not yield (a truncated shard): their persons become errors."""
        counts = report.counts
        for key in sorted(set(index or {}) - seen - task.retired):
            row = (index or {})[key]
            counts["images_in"] += 1
            counts["images_errored"] += 1
            counts["persons_in"] += row["n_persons"]
            reason, message = (
                ErrorReason.TRUNCATED_SHARD,
                (f"sample listed in the shard index but missing from {task.uri} (truncated shard?)"),
            )
            if not is_valid_key(key):  # a hand-made index row: no tar member can carry such a key
                reason, message = ErrorReason.INVALID_KEY, f"shard index key {key!r} is not {KEY_GRAMMAR}"
            where = {"key": key, "source_uri": row["source_uri"]}
            for idx in range(row["n_persons"]) or [None]:
                yield self._error(task, ErrorStage.LABEL_READ, reason, message, person_idx=idx, **where)

    def _check_identity(self, task: ShardTask, report: ShardReport) -> Iterator[dict[str, Any]]:
        """One shard-level row when the tar read differs from the manifest's record of it."""
        expected = task.identity.get("tar_sha1")
        if expected and expected != report.tar_sha1:
            message = (
                f"shard tar sha1 {report.tar_sha1} ({report.tar_bytes} bytes) differs from the manifest's "
                f"{expected} ({task.identity.get('tar_bytes')} bytes): it changed after sharding"
            )
            yield self._error(task, ErrorStage.LABEL_READ, ErrorReason.CHECKSUM_MISMATCH, message)

    @staticmethod
    def _error(task: ShardTask, stage: ErrorStage, reason: Any, message: str, **where: Any) -> dict[str, Any]:
        where.setdefault("source_uri", task.uri)
        return error_row(stage, reason, message, shard=task.name, **where)


def _ready(slot: Future[_Prepared] | _Prepared) -> bool:
    return not isinstance(slot, Future) or slot.done()


def _run(pool: ThreadPoolExecutor | None, work: Callable[[], _Prepared]) -> Future[_Prepared] | _Prepared:
    """``work`` submitted to ``pool``, or done here when there is none (``prep_threads=0``)."""
    return work() if pool is None else pool.submit(work)

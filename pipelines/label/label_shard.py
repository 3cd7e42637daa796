"""The one step of ``dpmesh-label`` that does the work: a whole shard, read to committed, per element.

``LabelShardFn`` takes a :class:`ShardTask` and, inside one ``process`` call, reads the shard, finds its persons
(annotations, or detection), cuts person batches in shard order, runs DPMesh on each, scores every label and
writes the shard's Parquet and then its marker. No GroupByKey stands between a shard's inference and its write,
so on every runner a shard is committed as soon as it is done, and decoded crops never cross a shuffle.

Overlap: a producer thread reads, detects and batches while the model runs on the current batch, and a bounded
pool of ``input.prep_threads`` threads under it decodes and crops the next samples (Pillow's decoders and OpenCV's
warp release the GIL); items leave in shard order whatever the pool's size. The queue holds at most
``prefetch_batches`` items and the pool a few samples per thread, which bounds the worker's memory.
The model (and the detector) come from their Beam model handlers through
:func:`pipelines.common.shared_model.acquire_model`, shared across the machine's processes on GPU workers.

A shard committed with the same identity and config but another live record (samples retired since, near-duplicate
groups changed) is not labeled again: its rows are brought up to date without the model (:mod:`pipelines.label
.update`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from dpmesh_core.calibration import ConfidenceCalibration
from dpmesh_core.confidence import FilterThresholds
from pipelines.common.commit_log import ALREADY_COMMITTED, committed_marker
from pipelines.common.label_set import index_entry
from pipelines.common.label_summary import CommittedShard, committed_shard
from pipelines.common.label_units import LIVE_UPDATE, ShardReport, ShardTask, follows_live_record
from pipelines.common.metrics import LABEL_METRICS
from pipelines.common.shared_model import acquire_model
from pipelines.config import DetectorConfig
from pipelines.config.label import CropMode
from pipelines.config.storage import StorageConfig
from pipelines.error_rows import error_row
from pipelines.label.detection.shard_detector import ShardDetector
from pipelines.label.persons import PersonBatch, PersonTask
from pipelines.label.read import ShardReader
from pipelines.label.score import ACCEPTED, score_labeled
from pipelines.label.update import update_shard
from pipelines.label.write import LabeledShardWriter
from pipelines.storage import Storage
from schemas import ErrorReason, ErrorStage


if TYPE_CHECKING:  # the handlers import torch and the model code; they arrive built, as constructor arguments
    from pipelines.label.detection.handlers import KeypointHandler, PersonDetectorHandler
    from pipelines.label.model_handler import DPMeshModelHandler

logger = logging.getLogger(__name__)

# A shared model's proxy raises these when its server process is gone: the worker is broken, not the input.
_MODEL_HOST_FAULTS = (ConnectionError, EOFError)  # BrokenPipeError is a ConnectionError


@dataclass(frozen=True)
class LabelSettings:
    """Everything the step needs besides its handlers: plain, picklable values resolved on the driver.

    Attributes:
        storage: Storage options; output: where labels go.
        run_info: Lineage recorded in every file and marker (pipeline version, config hash).
        thresholds: The filter's thresholds.
        max_image_pixels: Larger images are ``decompression_bomb`` errors (None: each shard set's own limit).
        batch_size: Persons per DPMesh forward pass, cut in shard order.
        prefetch_batches: Person batches prepared ahead of the model.
        detector: The detector config (its ``name`` says whether detection runs).
        calibration: The confidence calibration (``filter.calibration``), or None for the fixed confidence.
        crop_mode: How crops are cut (``input.crop_mode``).
        prep_threads: Threads decoding and cropping ahead of the model (``input.prep_threads``; None: auto).
        overwrite: ``overwrite=true``: every planned shard is relabeled, committed or not.
    """

    storage: StorageConfig
    output: str
    run_info: dict[str, str]
    thresholds: FilterThresholds
    max_image_pixels: int | None
    batch_size: int
    prefetch_batches: int
    detector: DetectorConfig
    calibration: ConfidenceCalibration | None = None
    crop_mode: CropMode = CropMode.reference
    prep_threads: int | None = None
    overwrite: bool = False


def batch_persons(shard: str, outputs: Any, batch_size: int) -> Iterator[Any]:
    """Passes ``outputs`` through, except :class:`PersonTask` s, which leave as :class:`PersonBatch` es of
    ``batch_size`` consecutive persons (the last one possibly smaller), ids ``<shard>/<index:06d>``."""
    pending: list[PersonTask] = []
    index = 0
    for out in outputs:
        if not isinstance(out, PersonTask):
            yield out
            continue
        pending.append(out)
        if len(pending) == batch_size:
            yield PersonBatch(f"{shard}/{index:06d}", tuple(pending))
            pending, index = [], index + 1
    if pending:
        yield PersonBatch(f"{shard}/{index:06d}", tuple(pending))


class _End:
    """The producer is done (``error`` holds what stopped it, if anything did)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class LabelShardFn(beam.DoFn):
    """Input: a :class:`ShardTask`. Labels and commits the shard (or updates its committed labels to the task's live
    record, marked :data:`LIVE_UPDATE`); outputs its :class:`~pipelines.common.label_summary.CommittedShard` (the
    marker's indexed fields and its statistics) for the summary step."""

    def __init__(
        self,
        settings: LabelSettings,
        handler: DPMeshModelHandler,
        detector_handler: PersonDetectorHandler | None = None,
        pose_handler: KeypointHandler | None = None,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._detector_handler = detector_handler
        self._pose_handler = pose_handler
        self._shards = Metrics.counter(LABEL_METRICS, "shards_done")
        self._images = Metrics.counter(LABEL_METRICS, "images_in")
        self._persons = Metrics.counter(LABEL_METRICS, "persons_in")
        self._accepted = Metrics.counter(LABEL_METRICS, "persons_accepted")
        self._rejected = Metrics.counter(LABEL_METRICS, "persons_rejected")
        self._errored = Metrics.counter(LABEL_METRICS, "persons_errored")
        self._batch_sizes = Metrics.distribution(LABEL_METRICS, "batch_size")
        self._already_committed = Metrics.counter(LABEL_METRICS, "shards_already_committed")
        self._updated = Metrics.counter(LABEL_METRICS, "shards_updated")

    def setup(self) -> None:
        settings = self._settings
        storage = Storage(settings.storage)
        self._model = acquire_model(self._handler, self._handler.model_tag())
        shard_detector: ShardDetector | None = None
        if self._detector_handler is not None and self._pose_handler is not None:
            shard_detector = ShardDetector(
                settings.detector,
                self._detector_handler,
                self._pose_handler,
                acquire_model(self._detector_handler, self._detector_handler.model_tag()),
                acquire_model(self._pose_handler, self._pose_handler.model_tag()),
            )
        # Crops are cut at the model's own size (a method call: the model may be a proxy to another process).
        geometry = self._model.crop_geometry()
        self._reader = ShardReader(
            storage,
            settings.max_image_pixels,
            settings.detector.name,
            shard_detector,
            geometry=geometry,
            crop_mode=settings.crop_mode,
            prep_threads=settings.prep_threads,
        )
        self._shard_detector = shard_detector
        self._writer = LabeledShardWriter(storage, settings.output, settings.run_info)
        self._storage = storage

    def process(self, task: ShardTask) -> Iterator[CommittedShard]:
        if not self._settings.overwrite:
            committed = committed_marker(self._storage, self._settings.output, task.name, self._expected(task))
            if committed is not None and follows_live_record(committed, task):
                # a retried or recomputed work item: its shard is done, keep its files
                self._already_committed.inc()
                yield committed_shard({**index_entry(committed), ALREADY_COMMITTED: True}, committed)
                return
            if committed is not None:  # labeled, and the shard set retired samples or regrouped since: no model
                marker = update_shard(self._storage, self._settings.output, task, committed, self._writer)
                self._updated.inc()
                # LIVE_UPDATE: the summary leaves it out of this run's throughput
                yield committed_shard({**index_entry(marker), LIVE_UPDATE: True}, marker)
                return
        started = time.monotonic()
        report = ShardReport()
        rows: dict[str, list[dict[str, Any]]] = {"accepted": [], "rejected": [], "errors": []}
        for item in self._prefetched(task, report):
            if isinstance(item, PersonBatch):
                self._label_batch(item, rows)
            else:
                rows["errors"].append(item)
        elapsed_s = time.monotonic() - started
        marker = self._writer.write(
            task, report, rows["accepted"], rows["rejected"], rows["errors"], elapsed_s, self._model_hosts()
        )
        counts = marker["counts"]
        self._shards.inc()
        self._images.inc(counts["images_in"])
        self._persons.inc(counts["persons_in"])
        self._errored.inc(counts["persons_errored"])
        yield committed_shard(index_entry(marker), marker)  # the summary step takes it, never reads the marker back

    def _expected(self, task: ShardTask) -> dict[str, Any]:
        """What a marker records when it commits this shard as this run would: its identity, config, calibration."""
        run_info = self._settings.run_info
        return {
            "shard_identity": task.identity,
            "config_hash": run_info["config_hash"],
            "calibration_sha256": run_info.get("calibration_sha256"),
        }

    def _model_hosts(self) -> dict[str, dict[str, Any]]:
        """How each model that labeled the shard is hosted (shared or not, its concurrency, callers seen so far)."""
        hosts = {self._handler.kind: self._model.host_stats().as_dict()}
        if self._shard_detector is not None:
            hosts.update(self._shard_detector.host_stats())
        return hosts

    def _prefetched(self, task: ShardTask, report: ShardReport) -> Iterator[Any]:
        """The reader's batches and error rows, produced by a thread that stays ``prefetch_batches`` ahead.

        Whatever stops the producer (a storage fault, a bug) is raised here, in the caller's thread, so it fails
        the work item instead of a thread dying quietly.
        """
        items: queue.Queue[Any] = queue.Queue(maxsize=self._settings.prefetch_batches)
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in batch_persons(task.name, self._reader.read(task, report), self._settings.batch_size):
                    while not stop.is_set():
                        try:
                            items.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                items.put(_End())
            except BaseException as exc:  # handed to the consumer, which raises it
                items.put(_End(exc))

        producer = threading.Thread(target=produce, name=f"read-{task.name}", daemon=True)
        producer.start()
        try:
            while not isinstance(item := items.get(), _End):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            stop.set()
            producer.join()

    def _label_batch(self, person_batch: PersonBatch, rows: dict[str, list[dict[str, Any]]]) -> None:
        """Runs the model on one batch and scores each person; a batch the model fails on becomes error rows."""
        self._batch_sizes.update(len(person_batch.tasks))
        try:
            (result,) = self._handler.run_inference([person_batch], self._model)
        except _MODEL_HOST_FAULTS:
            raise  # the shared model's process is gone: let the runner retry the shard on a healthy worker
        except Exception as exc:  # the model failed on this input (e.g. out of memory on this batch)
            message = f"{type(exc).__name__}: {exc}"
            for task in person_batch.tasks:
                rows["errors"].append(
                    error_row(
                        ErrorStage.LABEL_INFERENCE,
                        ErrorReason.INFERENCE_FAILED,
                        message,
                        key=task.image_key,
                        source_uri=task.source_uri,
                        shard=task.shard,
                        person_idx=task.person_idx,
                    )
                )
            return
        for labeled in result.inference:
            kind, row, reasons = score_labeled(
                labeled, result.model_id or "", self._settings.thresholds, self._settings.calibration
            )
            rows["accepted" if kind == ACCEPTED else "rejected"].append(row)
            (self._accepted if kind == ACCEPTED else self._rejected).inc()
            for reason in reasons:
                Metrics.counter(LABEL_METRICS, f"rejected_{reason}").inc()

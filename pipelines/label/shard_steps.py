"""Beam steps of ``dpmesh-label`` around the model: read shards into person tasks, score, write per shard.

Every element after the shard reader is keyed by its shard name, and everything a shard produced
(accepted and rejected rows, error rows, the reader's per-shard report) meets again in one group:
the shard is the unit of work and of resume, and its completion marker is written last.
"""

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from dpmesh_core.confidence import FilterThresholds, score_person
from pipelines.label.annotation_rows import annotation_row, annotation_sort_key
from pipelines.config import DetectorName
from pipelines.config.storage import StorageConfig
from pipelines.label.detection.records import ImageDetections, ShardDetections
from pipelines.label.detection.transforms import needs_detection
from pipelines.error_rows import error_row, error_sort_key
from pipelines.image_decode import ImageDecodeError, decode_rgb
from pipelines.label.inputs import (
    AnnotatedPerson,
    PersonBatch,
    PersonTask,
    ShardReadError,
    iter_shard_samples,
    person_from_json,
    prepare_tasks,
    sample_metadata,
)
from pipelines.label.model_handler import LabeledPerson
from pipelines.parquet_io import parquet_bytes, read_parquet_bytes
from pipelines.storage import Storage, join
from schemas import (
    ANNOTATION_SCHEMA,
    ERROR_SCHEMA,
    ErrorReason,
    ErrorStage,
    KeypointSource,
    table_from_rows,
    with_file_metadata,
)


logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "dpmesh"
ERRORS, REPORTS = "errors", "reports"
ACCEPTED, REJECTED, ERROR, REPORT = "accepted", "rejected", "error", "report"
# An image the detection stage should have seen but did not (it could not decode it there).
_NOT_DETECTED = ImageDetections("", (), "no detection result for the image")


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


def batch_persons(shard: str, outputs: Iterable[Any], batch_size: int) -> Iterator[Any]:
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


def shard_name_of(uri: str) -> str:
    """``shard-000003`` for ``.../shard-000003.tar``."""
    return uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar")


class ReadShardFn(beam.DoFn):
    """Input: a shard URI, or ``(shard URI, ShardDetections)`` with ``detector=vitpose|auto``. Streams the shard;
    outputs :class:`PersonBatch` es of ``batch_size`` persons in shard order, ``(shard, error row)`` s and one
    ``(shard, report)``.

    With detections, the persons of each image that needs detection (every image for ``vitpose``, those no
    annotation file covered for ``auto``) are the detected ones (``keypoint_source=vitpose``); the rest are read
    from the sample JSON as without a detector. Batches are cut the same way either way.
    """

    def __init__(
        self,
        storage_cfg: StorageConfig,
        max_image_pixels: int,
        keypoint_source: str,
        batch_size: int,
        detector: str = DetectorName.annotations.value,
    ):
        self._storage_cfg = storage_cfg
        self._max_pixels = max_image_pixels
        self._source = keypoint_source  # of persons read from the sample JSON
        self._batch_size = batch_size
        self._detector = DetectorName(detector)
        self._images = _counter("images_in")
        self._persons = _counter("persons_in")

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)

    def process(self, element: str | tuple[str, ShardDetections]) -> Iterator[Any]:
        shard_uri, detections = element if isinstance(element, tuple) else (element, None)
        shard = shard_name_of(shard_uri)
        report = Counter({"images_in": 0, "images_ok": 0, "images_errored": 0, "persons_in": 0})
        report_extra: dict[str, Any] = {"shard_uri": shard_uri, "read_error": None}
        if detections is not None:
            report_extra["detector_models"] = detections.models
        expected = self._index(shard_uri)
        seen: set[str] = set()
        samples = self._read(shard, shard_uri, report, report_extra, seen, detections)
        yield from batch_persons(shard, samples, self._batch_size)
        yield from self._missing_samples(shard, shard_uri, expected, seen, report)
        self._images.inc(report["images_in"])
        self._persons.inc(report["persons_in"])
        yield beam.pvalue.TaggedOutput(REPORTS, (shard, {**report, **report_extra}))

    def _read(
        self,
        shard: str,
        shard_uri: str,
        report: Counter[str],
        report_extra: dict[str, Any],
        seen: set[str],
        detections: ShardDetections | None,
    ) -> Iterator[Any]:
        """Every output of every sample in tar order; a read failure ends the stream with one error row."""
        try:
            with self._storage.open_read(shard_uri) as stream:
                for sample in iter_shard_samples(stream):
                    seen.add(sample.key)
                    yield from self._sample(shard, sample, report, detections)
        except (ShardReadError, OSError) as exc:
            report_extra["read_error"] = str(exc)
            row = error_row(
                ErrorStage.LABEL_READ, ErrorReason.READ_FAILED, str(exc), source_uri=shard_uri, shard=shard
            )
            yield beam.pvalue.TaggedOutput(ERRORS, (shard, row))

    def _index(self, shard_uri: str) -> dict[str, dict[str, Any]]:
        """The shard's index rows by key (written by dpmesh-shard next to the tar); empty if there is none."""
        try:
            data = self._storage.read_bytes(shard_uri.removesuffix(".tar") + ".parquet")
        except FileNotFoundError:
            return {}
        return {
            row["key"]: row for row in read_parquet_bytes(data).select(["key", "n_persons", "source_uri"]).to_pylist()
        }

    def _missing_samples(
        self, shard: str, shard_uri: str, expected: dict[str, dict[str, Any]], seen: set[str], report: Counter[str]
    ) -> Iterator[Any]:
        """Samples the index lists but the tar did not yield (a truncated shard): their persons become errors."""
        for key in sorted(set(expected) - seen):
            row = expected[key]
            report["images_in"] += 1
            report["images_errored"] += 1
            report["persons_in"] += row["n_persons"]
            message = f"sample listed in the shard index but missing from {shard_uri} (truncated shard?)"
            where = {"key": key, "source_uri": row["source_uri"], "shard": shard}
            for idx in range(row["n_persons"]) or [None]:
                error = error_row(ErrorStage.LABEL_READ, ErrorReason.READ_FAILED, message, person_idx=idx, **where)
                yield beam.pvalue.TaggedOutput(ERRORS, (shard, error))

    def _sample(
        self, shard: str, sample: Any, report: Counter[str], detections: ShardDetections | None = None
    ) -> Iterator[Any]:
        report["images_in"] += 1
        try:
            meta = sample_metadata(sample)
        except ValueError as exc:
            report["images_errored"] += 1
            row = error_row(
                ErrorStage.LABEL_DECODE, ErrorReason.INVALID_ANNOTATION, str(exc), key=sample.key, shard=shard
            )
            yield beam.pvalue.TaggedOutput(ERRORS, (shard, row))
            return
        detected = None
        if detections is not None and needs_detection(self._detector, meta):
            detected = detections.images.get(sample.key, _NOT_DETECTED)
        raw_persons = list(meta.get("persons") or []) if detected is None else list(detected.persons)
        report["persons_in"] += len(raw_persons)
        where = {"key": sample.key, "source_uri": meta.get("source_uri"), "shard": shard}
        try:
            image = decode_rgb(sample.image_bytes() or b"", max_image_pixels=self._max_pixels)
        except ImageDecodeError as exc:
            report["images_errored"] += 1
            for idx in range(len(raw_persons)) or [None]:
                row = error_row(ErrorStage.LABEL_DECODE, exc.reason, str(exc), person_idx=idx, **where)
                yield beam.pvalue.TaggedOutput(ERRORS, (shard, row))
            return
        if detected is not None and detected.error is not None:
            report["images_errored"] += 1  # detection failed: no persons are known for the image
            row = error_row(ErrorStage.LABEL_INFERENCE, ErrorReason.INFERENCE_FAILED, detected.error, **where)
            yield beam.pvalue.TaggedOutput(ERRORS, (shard, row))
            return
        report["images_ok"] += 1
        persons: list[tuple[int, AnnotatedPerson]] = []
        if detected is not None:
            persons = list(enumerate(detected.persons))
        for idx, raw in enumerate(raw_persons if detected is None else []):
            try:
                persons.append((idx, person_from_json(raw)))
            except (ValueError, TypeError) as exc:
                row = error_row(
                    ErrorStage.LABEL_PREPROCESS, ErrorReason.INVALID_ANNOTATION, str(exc), person_idx=idx, **where
                )
                yield beam.pvalue.TaggedOutput(ERRORS, (shard, row))
        source_uri = str(meta.get("source_uri", ""))
        source = self._source if detected is None else KeypointSource.VITPOSE.value
        for idx, task in prepare_tasks(
            image, persons, shard=shard, image_key=sample.key, source_uri=source_uri, source=source
        ):
            if isinstance(task, PersonTask):
                yield task
            else:
                reason = getattr(task, "reason", ErrorReason.INVALID_ANNOTATION.value)
                row = error_row(ErrorStage.LABEL_PREPROCESS, reason, str(task), person_idx=idx, **where)
                yield beam.pvalue.TaggedOutput(ERRORS, (shard, row))


class ScorePersonFn(beam.DoFn):
    """Input: ``(batch_id, PredictionResult)``. Scores each person's label and routes it to accepted or rejected."""

    def __init__(self, thresholds: FilterThresholds) -> None:
        self._thresholds = thresholds
        self._accepted = _counter("persons_accepted")
        self._rejected = _counter("persons_rejected")

    def process(self, element: tuple[str, Any]) -> Iterator[tuple[str, tuple[str, dict[str, Any]]]]:
        _, result = element
        for labeled in result.inference:
            yield self._score(labeled, result.model_id or "")

    def _score(self, labeled: LabeledPerson, model_id: str) -> tuple[str, tuple[str, dict[str, Any]]]:
        task, prediction = labeled.task, labeled.prediction
        scored = score_person(
            prediction,
            keypoints_2d=task.person.keypoints_2d,
            image_hw=(task.image_height, task.image_width),
            bbox_xyxy=task.person.bbox_xyxy,
            other_boxes=task.other_boxes,
            det_score=task.person.det_score,
            thresholds=self._thresholds,
            flip_pa_mpjpe_mm=labeled.flip_pa_mpjpe_mm,
        )
        row = annotation_row(
            task,
            prediction,
            scored.signals,
            confidence=scored.confidence,
            quality_tier=scored.quality_tier,
            reasons=list(scored.reasons),
            model_id=model_id,
        )
        kind = ACCEPTED if scored.accepted else REJECTED
        (self._accepted if scored.accepted else self._rejected).inc()
        for reason in scored.reasons:
            Metrics.counter(METRICS_NAMESPACE, f"rejected_{reason}").inc()
        return task.shard, (kind, row)


def failed_batch_to_errors(failure):  # type: ignore[no-untyped-def]  # Beam type-checks hinted callables
    """A batch that raised in the model (e.g. out of memory) becomes one error row per person in it.

    ``failure`` is Beam's dead-letter element: ``([(batch_id, PersonBatch)], (exception type, message, traceback))``.
    """
    elements, (exc_type, exc_message, _) = failure
    message = f"{getattr(exc_type, '__name__', exc_type)}: {exc_message}"
    for task in (task for _, person_batch in elements for task in person_batch.tasks):
        row = error_row(
            ErrorStage.LABEL_INFERENCE,
            ErrorReason.INFERENCE_FAILED,
            message,
            key=task.image_key,
            source_uri=task.source_uri,
            shard=task.shard,
            person_idx=task.person_idx,
        )
        yield task.shard, (ERROR, row)


class WriteShardLabelsFn(beam.DoFn):
    """Input: ``(shard, [(kind, payload), ...])``. Writes the shard's three Parquet files, then its marker."""

    def __init__(self, storage_cfg: StorageConfig, output: str, run_info: dict[str, str]) -> None:
        self._storage_cfg = storage_cfg
        self._output = output
        self._run_info = run_info
        self._shards = _counter("shards_done")
        self._errored = _counter("persons_errored")

    def setup(self) -> None:
        self._storage = Storage(self._storage_cfg)
        meta = {"pipeline_version": self._run_info["pipeline_version"], "config_hash": self._run_info["config_hash"]}
        self._annotation_schema = with_file_metadata(ANNOTATION_SCHEMA, **meta)
        self._error_schema = with_file_metadata(ERROR_SCHEMA, **meta)

    def process(self, element: tuple[str, Iterable[tuple[str, Any]]]) -> Iterator[dict[str, Any]]:
        shard, items = element
        grouped: dict[str, list[Any]] = {ACCEPTED: [], REJECTED: [], ERROR: [], REPORT: []}
        for kind, payload in items:
            grouped[kind].append(payload)
        accepted = sorted(grouped[ACCEPTED], key=annotation_sort_key)
        rejected = sorted(grouped[REJECTED], key=annotation_sort_key)
        errors = sorted(grouped[ERROR], key=error_sort_key)
        marker = shard_marker(shard, grouped[REPORT], accepted, rejected, errors, self._run_info)
        annotation_schema = self._annotation_schema
        if marker.get("detector_models"):  # detector=vitpose|auto: the weights that found the persons
            models = json.dumps(marker["detector_models"], sort_keys=True).encode()
            annotation_schema = annotation_schema.with_metadata(
                {**annotation_schema.metadata, b"detector_models": models}
            )
        for folder, rows, schema in (
            ("annotations", accepted, annotation_schema),
            ("rejected", rejected, annotation_schema),
            ("errors", errors, self._error_schema),
        ):
            data = parquet_bytes(table_from_rows(rows, schema))
            self._storage.write_bytes(join(self._output, folder, f"{shard}.parquet"), data)
        self._storage.write_bytes(join(self._output, "_done", f"{shard}.json"), json.dumps(marker, indent=1).encode())
        if not marker["reconciled"]:
            logger.error("shard %s does not reconcile: %s", shard, marker["counts"])
        self._errored.inc(marker["counts"]["persons_errored"])
        self._shards.inc()
        yield marker


def shard_marker(
    shard: str,
    reports: list[dict[str, Any]],
    accepted: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    run_info: dict[str, str],
) -> dict[str, Any]:
    """The ``_done/<shard>.json`` document: per-shard counts that reconcile, by reason, stage and tier."""
    report = reports[0] if reports else {"images_in": 0, "images_ok": 0, "images_errored": 0, "persons_in": 0}
    person_errors = [e for e in errors if e["person_idx"] is not None]
    counts = {
        "images_in": report["images_in"],
        "images_ok": report["images_ok"],
        "images_errored": report["images_errored"],
        "persons_in": report["persons_in"],
        "persons_accepted": len(accepted),
        "persons_rejected": len(rejected),
        "persons_errored": len(person_errors),
    }
    persons_ok = counts["persons_in"] == len(accepted) + len(rejected) + len(person_errors)
    images_ok = counts["images_in"] == counts["images_ok"] + counts["images_errored"]
    return {
        "shard": shard,
        "shard_uri": report.get("shard_uri"),
        "read_error": report.get("read_error"),
        **({"detector_models": report["detector_models"]} if report.get("detector_models") is not None else {}),
        **run_info,
        "counts": counts,
        "reconciled": persons_ok and images_ok,
        "rejected_by_reason": dict(sorted(Counter(r for row in rejected for r in row["reasons"]).items())),
        "errors_by_stage": dict(sorted(Counter(e["stage"] for e in errors).items())),
        "errors_by_reason": dict(sorted(Counter(e["reason"] for e in errors).items())),
        "tiers": dict(sorted(Counter(row["quality_tier"] for row in accepted + rejected).items())),
    }

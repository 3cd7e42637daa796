"""The end of ``dpmesh-eval``: merge the buckets' summaries, write the documents, fit the calibration.

The pipeline's own last step writes the results (the launching machine may not survive a long remote job):

* ``eval.json``: `pipelines.eval.result.EvaluationResult.to_dict`, plus ``outputs`` (where the per-person files
  are) and, with ``fit_confidence``, ``calibration``;
* ``eval.md``: the printed table (`pipelines.eval.result.format_markdown`);
* ``eval_persons.json``: every matched person's errors, written only while at most ``persons_json_max`` (every
  person is in ``persons/part-*.parquet`` whatever the count);
* the calibration file (``calibration.output``, default ``confidence_calibration.json``), fitted on a bounded,
  stratified sample (`pipelines.eval.summary.calibration_sample_of`; its ``fit.sample`` says how it was drawn);
* ``_eval_run.json``, last: this run's outcome (``ok``, or why there is no evaluation: no label rows, nothing
  matched, no metric, a calibration that cannot be fitted) with the message the driver raises. The work folder of
  the run is then removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np

from dpmesh_core.calibration import fit_calibration
from dpmesh_core.confidence import ConfidenceSignals
from pipelines.config.storage import StorageConfig
from pipelines.eval.eval_shard import PERSONS_FOLDER
from pipelines.eval.label_columns import SIGNALS
from pipelines.eval.quality import spearman
from pipelines.eval.result import EvaluationResult, format_markdown
from pipelines.eval.summary import CalibrationSample, EvalPartial, SummaryLimits, calibration_sample_of, finish
from pipelines.storage import Storage, join
from pipelines.storage.uri import parse_uri


EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
EVAL_PERSONS = "eval_persons.json"
RUN_RECORD = "_eval_run.json"
CALIBRATION_NAME = "confidence_calibration.json"


class MergeSummaries(beam.CombineFn):  # type: ignore[misc]
    """Merges `EvalPartial` summaries (any order, any grouping: each is bounded)."""

    def __init__(self, limits: SummaryLimits) -> None:
        self._limits = limits

    def create_accumulator(self) -> EvalPartial:
        return EvalPartial(self._limits)

    def add_input(self, accumulator: EvalPartial, partial: EvalPartial) -> EvalPartial:
        return accumulator.merge(partial)

    def merge_accumulators(self, accumulators: Iterable[EvalPartial]) -> EvalPartial:
        merged = EvalPartial(self._limits)
        for accumulator in accumulators:
            merged = merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator: EvalPartial) -> EvalPartial:
        return accumulator


@dataclass(frozen=True)
class FinishSettings:
    """What the last step needs, resolved on the driver.

    Attributes:
        run_id: this run's token, recorded in ``_eval_run.json`` (the driver reads back its own run's outcome).
        labels, ground_truth: the input URIs (recorded). ground_truth_persons, ground_truth_problems: from planning.
        error_metric, sparsification_steps: as the config. fit_confidence: fit and write a calibration;
        good_error_mm, calibration_output: its config (``calibration_output`` None: in ``output``).
    """

    storage: StorageConfig
    output: str
    work: str
    run_id: str
    labels: str
    ground_truth: str
    ground_truth_persons: int
    ground_truth_problems: dict[str, Any]
    error_metric: str
    sparsification_steps: int
    fit_confidence: bool
    good_error_mm: float
    calibration_output: str | None


class NoEvaluationError(ValueError):
    """No evaluation can be written (the message says why and what to check)."""


def _check(result: EvaluationResult, labels: str) -> None:
    if result.counts["label_rows"] == 0:
        raise NoEvaluationError(f"input.labels={labels!r} holds no label rows (annotations/, rejected/)")
    if result.counts["matched"] == 0:
        invalid = result.ground_truth_problems["counts"]
        left_out = f" ({sum(invalid.values())} ground-truth rows left out: {invalid})" if invalid else ""
        raise NoEvaluationError(
            "no label row matched the ground truth: check the join keys (sample_id, image_key + person_idx, or "
            f"image_path + person_idx; see README 'Auditing labels'){left_out}"
        )
    if not result.metrics:
        raise NoEvaluationError(
            "the ground truth gives SMPL parameters but no joints_3d: pass body_model=<SMPL neutral .npz> to build "
            "its meshes"
        )


def _signals(sample: CalibrationSample) -> list[ConfidenceSignals]:
    rows = []
    for values, nulls in zip(sample.signals, sample.signals_null, strict=True):
        fields = {name: None if null else float(v) for name, v, null in zip(SIGNALS, values, nulls, strict=True)}
        rows.append(ConfidenceSignals(**fields))  # type: ignore[arg-type]
    return rows


def fit_and_write_calibration(
    settings: FinishSettings, storage: Storage, partial: EvalPartial, metric: str
) -> dict[str, Any]:
    """Fits the calibration on the sample of persons with signals and a finite ``metric``; writes it; describes it.

    Raises:
        NoEvaluationError: the fit is not possible (e.g. only good or only bad labels).
    """
    sample = calibration_sample_of(partial, metric)
    signals = _signals(sample)
    joint_set = "lsp14" if metric.startswith("lsp14") else "vertices" if metric == "pve_mm" else "smpl24"
    try:
        calibration = fit_calibration(
            signals, sample.error, settings.good_error_mm, error_metric=metric, joint_set=joint_set
        )
    except ValueError as exc:
        raise NoEvaluationError(f"fit_confidence=true: {exc}") from exc
    before = spearman(sample.confidence, -sample.error)
    after = spearman(np.array([calibration.confidence(s) for s in signals]), -sample.error)
    fit = {
        **calibration.fit,
        "spearman_before": before,
        "spearman_after_in_sample": after,
        "sample": sample.description,
    }
    calibration = dataclasses.replace(calibration, fit=fit)
    uri = settings.calibration_output or join(settings.output, CALIBRATION_NAME)
    data = calibration.to_json_bytes()
    storage.write_bytes(uri, data)
    return {"uri": uri, "sha256": hashlib.sha256(data).hexdigest(), **calibration.to_dict()}


def _json(doc: Any, indent: int = 1) -> bytes:
    return (json.dumps(doc, indent=indent, sort_keys=True) + "\n").encode()


class WriteEvaluationFn(beam.DoFn):
    """In: the merged `EvalPartial` (once). Writes the documents (module docstring); out: the ``eval.json`` document,
    or nothing when there is no evaluation (its reason is in ``_eval_run.json``)."""

    def __init__(self, settings: FinishSettings) -> None:
        self._settings = settings

    def setup(self) -> None:
        self._storage = Storage(self._settings.storage)

    def process(self, partial: EvalPartial) -> Iterator[dict[str, Any]]:
        s = self._settings
        storage = self._storage
        result = finish(
            partial,
            ground_truth_persons=s.ground_truth_persons,
            ground_truth_problems=s.ground_truth_problems,
            error_metric=s.error_metric,
            sparsification_steps=s.sparsification_steps,
            labels=s.labels,
            ground_truth_uri=s.ground_truth,
        )
        try:
            _check(result, s.labels)
            doc = result.to_dict()
            doc["outputs"] = {
                "persons_parquet": f"{PERSONS_FOLDER}/",
                "persons_json": EVAL_PERSONS if partial.persons is not None else None,
            }
            if s.fit_confidence:
                doc["calibration"] = fit_and_write_calibration(s, storage, partial, result.error_metric)
        except NoEvaluationError as exc:
            record = {"run": s.run_id, "outcome": "failed", "message": str(exc), "counts": result.counts}
            storage.write_bytes(join(s.output, RUN_RECORD), _json(record))
            _remove_work(storage, s.work)
            return
        storage.write_bytes(join(s.output, EVAL_JSON), _json(doc))
        storage.write_bytes(join(s.output, EVAL_MD), (format_markdown(doc) + "\n").encode())
        if partial.persons is not None:
            persons = result.to_dict(include_persons=True)["persons"]
            storage.write_bytes(join(s.output, EVAL_PERSONS), _json({"persons": persons}, indent=0))
        else:  # an earlier, smaller run's list would be read as this run's
            storage.delete(join(s.output, EVAL_PERSONS))
        storage.write_bytes(
            join(s.output, RUN_RECORD), _json({"run": s.run_id, "outcome": "ok", "counts": result.counts})
        )
        _remove_work(storage, s.work)
        yield doc


def _remove_work(storage: Storage, work: str) -> None:
    """Deletes every file of the run's work folder; on local disk the emptied folders go too (``_work`` itself
    once no other run's folder is in it)."""
    for info in list(storage.list(work.rstrip("/") + "/")):
        storage.delete(info.uri)
    parsed = parse_uri(work)
    if parsed.scheme == "file":
        shutil.rmtree(parsed.key, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(parsed.key.rstrip("/")))


def read_run_record(storage: Storage, output: str, run_id: str) -> dict[str, Any]:
    """This run's ``_eval_run.json``.

    Raises:
        RuntimeError: absent, or another run's (the pipeline did not reach its last step).
    """
    try:
        record = json.loads(storage.read_bytes(join(output, RUN_RECORD)))
    except FileNotFoundError:
        record = None
    if not isinstance(record, dict) or record.get("run") != run_id:
        raise RuntimeError(f"{join(output, RUN_RECORD)}: the evaluation pipeline ended without recording its outcome")
    return record


def persons_of(storage: Storage, output: str) -> list[str]:
    """The per-person Parquet files of an evaluation output."""
    return sorted(i.uri for i in storage.list(join(output, PERSONS_FOLDER) + "/") if i.uri.endswith(".parquet"))

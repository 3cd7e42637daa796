"""The end of ``dpmesh-eval``: merge the buckets' summaries, write the documents, fit the calibration.

The pipeline's own last step writes the results (the launching machine may not survive a long remote job):

* ``eval.json`` (with ground truth): `pipelines.eval.result.EvaluationResult.to_dict`, plus ``outputs`` (where the
  per-person files are) and, with ``fit_confidence``, ``calibration``;
* ``eval_reviews.json`` (with ``review=``): the reviewed good-label rates (`pipelines.eval.review_rates`) and,
  with ``fit_confidence`` and no ground truth, ``calibration``;
* ``eval.md``: the printed tables (`pipelines.eval.result.format_markdown`, then
  `pipelines.eval.review_rates.format_reviews_markdown`);
* ``eval_persons.json``: every matched person's errors, written only while at most ``persons_json_max`` (every
  person is in ``persons/part-*.parquet`` whatever the count);
* the calibration file (``calibration.output``, default ``confidence_calibration.json``): with ground truth, fitted
  on a bounded, stratified sample (`pipelines.eval.summary.calibration_sample_of`; its ``fit.sample`` says how it
  was drawn); without, on the reviewed persons with signals (`dpmesh_core.calibration.fit_calibration_to_reviews`:
  accepted = good; at most ``calibration.max_persons``, the lowest hashes of ``sample_id`` beyond);
* ``_eval_run.json``, last: this run's outcome (``ok``, or why there is no evaluation: no label rows, nothing
  matched, no metric, no reviewed person found, a calibration that cannot be fitted) with the message the driver
  raises. The work folder of the run is then removed.

A document this run does not make (``eval.json`` without ground truth, ``eval_reviews.json`` without reviews) is
removed if an earlier run left one: it would be read as this run's.
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

from dpmesh_core.calibration import ConfidenceCalibration, fit_calibration, fit_calibration_to_reviews
from dpmesh_core.confidence import ConfidenceSignals
from pipelines.config.storage import StorageConfig
from pipelines.eval.eval_shard import PERSONS_FOLDER
from pipelines.eval.label_columns import SIGNALS
from pipelines.eval.quality import auc, spearman
from pipelines.eval.result import EvaluationResult, format_markdown
from pipelines.eval.review_join import ReviewedSet
from pipelines.eval.review_plan import ReviewPlan
from pipelines.eval.review_rates import format_reviews_markdown, measure_reviews
from pipelines.eval.samples import hashes_of
from pipelines.eval.summary import EvalPartial, SummaryLimits, calibration_sample_of, finish
from pipelines.storage import Storage, join
from pipelines.storage.uri import parse_uri


EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
EVAL_PERSONS = "eval_persons.json"
EVAL_REVIEWS = "eval_reviews.json"
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
        labels, ground_truth: the input URIs (recorded; ``ground_truth`` None without one).
        ground_truth_persons, ground_truth_problems: from planning.
        error_metric, sparsification_steps: as the config. fit_confidence: fit and write a calibration;
        good_error_mm, calibration_output, calibration_max_persons: its config (``calibration_output`` None: in
        ``output``).
        reviews: the review plan without its units (None without ``review=``).
    """

    storage: StorageConfig
    output: str
    work: str
    run_id: str
    labels: str
    ground_truth: str | None
    ground_truth_persons: int
    ground_truth_problems: dict[str, Any]
    error_metric: str
    sparsification_steps: int
    fit_confidence: bool
    good_error_mm: float
    calibration_output: str | None
    calibration_max_persons: int = 50_000
    reviews: ReviewPlan | None = None


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


def _check_reviews(doc: dict[str, Any], labels: str) -> None:
    c = doc["counts"]
    if c["measured"] == 0:
        raise NoEvaluationError(
            f"none of the {c['agreed']} persons the review files agree on was found in input.labels={labels!r} "
            f"({c['not_in_input']} in shards it lacks, {c['not_found']} not in their shard, {c['other_model']} "
            f"labeled by another model, {c['conflicts']} decided differently): measure a review on the labels it "
            "was made on"
        )


def _signals(values: np.ndarray, nulls: np.ndarray) -> list[ConfidenceSignals]:
    """`ConfidenceSignals` of `(N, 12)` `SIGNALS` values and their null mask."""
    rows = []
    for row, null_row in zip(values, nulls, strict=True):
        fields = {name: None if null else float(v) for name, v, null in zip(SIGNALS, row, null_row, strict=True)}
        rows.append(ConfidenceSignals(**fields))  # type: ignore[arg-type]
    return rows


def _write_calibration(
    settings: FinishSettings, storage: Storage, calibration: ConfidenceCalibration
) -> dict[str, Any]:
    """Writes ``calibration`` where the config says; what the documents record of it."""
    uri = settings.calibration_output or join(settings.output, CALIBRATION_NAME)
    data = calibration.to_json_bytes()
    storage.write_bytes(uri, data)
    return {"uri": uri, "sha256": hashlib.sha256(data).hexdigest(), **calibration.to_dict()}


def fit_and_write_calibration(
    settings: FinishSettings, storage: Storage, partial: EvalPartial, metric: str
) -> dict[str, Any]:
    """Fits the calibration on the sample of persons with signals and a finite ``metric``; writes it; describes it.

    Raises:
        NoEvaluationError: the fit is not possible (e.g. only good or only bad labels).
    """
    sample = calibration_sample_of(partial, metric)
    signals = _signals(sample.signals, sample.signals_null)
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
    return _write_calibration(settings, storage, dataclasses.replace(calibration, fit=fit))


def fit_and_write_review_calibration(
    settings: FinishSettings, storage: Storage, reviewed: ReviewedSet, files: list[dict[str, Any]]
) -> dict[str, Any]:
    """Fits the calibration on the reviewed persons with signals (accepted = good; the lowest
    ``calibration_max_persons`` hashes of ``sample_id`` when there are more), records in its ``fit`` the review
    ``files`` it came from, the sample and the AUC of the stored and the fitted confidence; writes it; describes it.

    The fit is not weighted by the draw: the page drew by confidence band (a function of the signals) and occlusion
    level, and a draw on what the model conditions on does not bias ``P(accept | signals)``.

    Raises:
        NoEvaluationError: the fit is not possible (only accepts or only rejects among persons with signals).
    """
    persons = [p for p in reviewed.in_order() if p.has_signals]
    cap = settings.calibration_max_persons
    if len(persons) > cap:
        keep = np.sort(np.argsort(hashes_of(p.sample_id for p in persons), kind="stable")[:cap])
        persons = [persons[i] for i in keep]
    accepted = np.array([p.accepted for p in persons], dtype=bool)
    signals = _signals(
        np.array([p.signals for p in persons]).reshape(-1, len(SIGNALS)),
        np.array([p.signals_null for p in persons]).reshape(-1, len(SIGNALS)),
    )
    try:
        calibration = fit_calibration_to_reviews(signals, accepted)
    except ValueError as exc:
        raise NoEvaluationError(f"fit_confidence=true on the reviews: {exc}") from exc
    fitted = np.array([calibration.confidence(s) for s in signals])
    fit = {
        **calibration.fit,
        "outcome": {**calibration.fit["outcome"], "files": [{"uri": f["uri"], "sha256": f["sha256"]} for f in files]},
        "auc_before": auc(np.array([p.confidence for p in persons]), accepted),
        "auc_after_in_sample": auc(fitted, accepted),
        "sample": {
            "persons": len(persons),
            "of": sum(p.has_signals for p in reviewed.persons),
            "method": "every reviewed person found with signals while at most calibration.max_persons; else the "
            "lowest 64-bit hashes of sample_id (uniform); not weighted by the review's draw",
        },
    }
    return _write_calibration(settings, storage, dataclasses.replace(calibration, fit=fit))


def _json(doc: Any, indent: int = 1) -> bytes:
    return (json.dumps(doc, indent=indent, sort_keys=True) + "\n").encode()


class _WriteFn(beam.DoFn):
    """The last step: settings resolved on the driver, storage made where it runs."""

    def __init__(self, settings: FinishSettings) -> None:
        self._settings = settings

    def setup(self) -> None:
        self._storage = Storage(self._settings.storage)


class WriteEvaluationFn(_WriteFn):
    """In: the merged `EvalPartial` (once) and, with reviews, the gathered `ReviewedSet` (a side input). Writes the
    documents (module docstring); out: the ``eval.json`` document, or nothing when there is no evaluation (its
    reason is in ``_eval_run.json``)."""

    def process(self, partial: EvalPartial, reviewed: ReviewedSet | None = None) -> Iterator[dict[str, Any]]:
        yield from write_results(self._settings, self._storage, partial, reviewed)


class WriteReviewsFn(_WriteFn):
    """In: the gathered `ReviewedSet` (once), without ground truth. Writes the documents; out: the
    ``eval_reviews.json`` document, or nothing when there is no evaluation."""

    def process(self, reviewed: ReviewedSet) -> Iterator[dict[str, Any]]:
        yield from write_results(self._settings, self._storage, None, reviewed)


def write_results(
    s: FinishSettings, storage: Storage, partial: EvalPartial | None, reviewed: ReviewedSet | None
) -> Iterator[dict[str, Any]]:
    """Writes what the ground-truth summary ``partial`` and the ``reviewed`` persons give (either may be None: not
    asked for); yields the ``eval.json`` document, else the ``eval_reviews.json`` one."""
    result = None
    doc = reviews_doc = None
    counts: dict[str, Any] = {}
    try:
        if partial is not None:
            result = finish(
                partial,
                ground_truth_persons=s.ground_truth_persons,
                ground_truth_problems=s.ground_truth_problems,
                error_metric=s.error_metric,
                sparsification_steps=s.sparsification_steps,
                labels=s.labels,
                ground_truth_uri=s.ground_truth or "",
            )
            counts = result.counts
            _check(result, s.labels)
            doc = result.to_dict()
            doc["outputs"] = {
                "persons_parquet": f"{PERSONS_FOLDER}/",
                "persons_json": EVAL_PERSONS if partial.persons is not None else None,
            }
        if reviewed is not None and s.reviews is not None:
            reviews_doc = measure_reviews(s.reviews, reviewed, s.labels)
            counts = {**counts, "reviews": reviews_doc["counts"]}
            _check_reviews(reviews_doc, s.labels)
        if s.fit_confidence and partial is not None and doc is not None and result is not None:
            # Ground truth, when given, is what is fitted: a measured error is stronger evidence than a judgement.
            doc["calibration"] = fit_and_write_calibration(s, storage, partial, result.error_metric)
        elif s.fit_confidence and reviews_doc is not None and reviewed is not None:
            reviews_doc["calibration"] = fit_and_write_review_calibration(s, storage, reviewed, reviews_doc["files"])
    except NoEvaluationError as exc:
        record = {"run": s.run_id, "outcome": "failed", "message": str(exc), "counts": counts}
        storage.write_bytes(join(s.output, RUN_RECORD), _json(record))
        _remove_work(storage, s.work)
        return
    markdown = []
    if doc is not None:
        storage.write_bytes(join(s.output, EVAL_JSON), _json(doc))
        markdown.append(format_markdown(doc))
    else:
        storage.delete(join(s.output, EVAL_JSON))
    if reviews_doc is not None:
        storage.write_bytes(join(s.output, EVAL_REVIEWS), _json(reviews_doc))
        markdown.append(format_reviews_markdown(reviews_doc))
    else:
        storage.delete(join(s.output, EVAL_REVIEWS))
    storage.write_bytes(join(s.output, EVAL_MD), ("\n\n".join(markdown) + "\n").encode())
    if partial is not None and partial.persons is not None and result is not None:
        persons = result.to_dict(include_persons=True)["persons"]
        storage.write_bytes(join(s.output, EVAL_PERSONS), _json({"persons": persons}, indent=0))
    else:  # an earlier, smaller run's list would be read as this run's
        storage.delete(join(s.output, EVAL_PERSONS))
    storage.write_bytes(join(s.output, RUN_RECORD), _json({"run": s.run_id, "outcome": "ok", "counts": counts}))
    _remove_work(storage, s.work)
    written = doc if doc is not None else reviews_doc
    if written is not None:
        yield written


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

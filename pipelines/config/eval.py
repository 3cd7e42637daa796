"""The ``dpmesh-eval`` app config: labels against ground truth and/or people's reviews, and optionally a confidence
calibration fit."""

from dataclasses import dataclass, field
from typing import Any

from pipelines.config.errors import ConfigError
from pipelines.config.runner import RunnerConfig
from pipelines.config.storage import StorageConfig


_ERROR_METRICS = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "lsp14_mpjpe_mm", "lsp14_pa_mpjpe_mm")


@dataclass
class EvalInputConfig:
    """Attributes:
    labels: The output folder of a ``dpmesh-label`` or ``dpmesh-refilter`` run.
    ground_truth: Ground-truth Parquet (file, folder or glob; layout in ``pipelines/eval/ground_truth.py`` and the
        README) and/or 3DPW ``sequenceFiles`` ``.pkl`` files (a file or a folder). None: no ground truth (then
        ``review=`` is what is measured).
    include_rejected: Evaluate ``rejected/`` rows too (their confidence should be low; the tier table shows them).
        Reviewed persons are looked up in both folders whatever this says: the review page drew from both.
    """

    labels: str = "???"
    ground_truth: str | None = None
    include_rejected: bool = True


@dataclass
class CalibrationFitConfig:
    """Attributes:
    good_error_mm: A label is good when its ``error_metric`` is below this (100 mm PA-MPJPE: about 2x DPMesh's
        PA-MPJPE on occluded 3DPW).
    output: Where the calibration file goes; default ``<output>/confidence_calibration.json``.
    max_persons: The fit uses every matched person with signals up to this many; beyond, a sample of this many,
        stratified by quality tier (each tier in proportion to its size, uniform within it). The calibration's
        ``fit.sample`` records which.
    """

    good_error_mm: float = 100.0
    output: str | None = None
    max_persons: int = 50_000

    def __post_init__(self) -> None:
        if not self.good_error_mm > 0:
            raise ConfigError(f"calibration.good_error_mm must be > 0, got {self.good_error_mm}")
        if self.max_persons < 2:
            raise ConfigError(f"calibration.max_persons must be >= 2, got {self.max_persons}")


@dataclass
class EvalJobConfig:
    """The ``dpmesh-eval`` app.

    Attributes:
        output: A folder for ``eval.json`` (`pipelines.eval.result.EvaluationResult.to_dict`), ``eval.md``,
            ``persons/*.parquet`` and ``eval_persons.json``.
        body_model: SMPL neutral ``.npz`` (``dpmesh-convert-smpl``) for meshes: PVE, LSP-14, and ground truth given
            as SMPL parameters (3DPW). Without it, only joints are compared (``joints_3d`` ground truth).
        body_model_male, body_model_female: gendered models for ground truth with a ``gender`` (3DPW's is
            gendered); the neutral model stands in when absent.
        h36m_regressor: H36M joint regressor ``.npy`` `(17, 6890)` for the 14 LSP joints (needs ``body_model``).
        error_metric: The error the confidence quality headline and the calibration use.
        sparsification_steps: Points of the sparsification curve (fractions 0, 1/steps, ...).
        fit_confidence: Fit a confidence calibration and write it (see README): on the persons matched to ground
            truth; without ground truth, on the reviewed persons (accepted = good).
        review: ``review.json`` files saved from a ``dpmesh-report review=<n>`` page (one: ``review=r.json``; several:
            ``review=[a.json,b.json]``): the reviewed good-label rate per tier, confidence band and review stratum,
            with 95% intervals, in ``eval_reviews.json`` (`pipelines.eval.review_rates`). A review of another label
            run is refused unless every person it decided is in ``input.labels`` as reviewed.
        bucket_persons: Ground-truth persons per bucket of the join: the ground truth is partitioned by key into
            ``ceil(persons / bucket_persons)`` buckets and each is joined on one worker, which holds its persons
            (about 1.2 kB each with SMPL parameters) and one batch of label rows.
        quality_sample: Persons sampled per metric for Spearman and the sparsification curve (AUSE): exact up to this
            many, else a uniform sample with the error bound stated in ``eval.json`` (``sample``).
        persons_json_max: ``eval_persons.json`` lists every matched person up to this many (every person's errors
            are in ``persons/*.parquet`` in any case).
        runner: Where the Beam pipeline runs (as for labeling: ``direct``, ``dask``, ``dataflow``, ...).
    """

    input: EvalInputConfig = field(default_factory=EvalInputConfig)
    output: str = "???"
    body_model: str | None = None
    body_model_male: str | None = None
    body_model_female: str | None = None
    h36m_regressor: str | None = None
    error_metric: str = "pa_mpjpe_mm"
    sparsification_steps: int = 20
    fit_confidence: bool = False
    calibration: CalibrationFitConfig = field(default_factory=CalibrationFitConfig)
    bucket_persons: int = 50_000
    quality_sample: int = 100_000
    persons_json_max: int = 10_000
    # Typed Any so that one file is ``review=r.json`` and several ``review=[a.json,b.json]`` (a list field would
    # refuse the former); __post_init__ makes it a list of strings either way, as dpmesh-refilter's ``review``.
    review: Any = field(default_factory=list)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        files = [self.review] if isinstance(self.review, str) else self.review
        if not isinstance(files, list | tuple) or not all(isinstance(f, str) and f for f in files):
            raise ConfigError(f"review={self.review!r}: give a review file (review=r.json) or a list (review=[a,b])")
        if len(set(files)) != len(files):
            raise ConfigError(f"review={list(files)!r} names a file twice")
        self.review = list(files)
        if not self.input.ground_truth and not self.review:
            raise ConfigError(
                "nothing to measure the labels against: give input.ground_truth=<ground truth> and/or "
                "review=<review.json from a dpmesh-report review page>"
            )
        if self.error_metric not in _ERROR_METRICS:
            raise ConfigError(f"error_metric must be one of {', '.join(_ERROR_METRICS)}, got {self.error_metric!r}")
        if self.sparsification_steps < 1:
            raise ConfigError(f"sparsification_steps must be >= 1, got {self.sparsification_steps}")
        for name in ("bucket_persons", "quality_sample"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.persons_json_max < 0:
            raise ConfigError(f"persons_json_max must be >= 0, got {self.persons_json_max}")
        if self.h36m_regressor is not None and self.body_model is None:
            raise ConfigError("h36m_regressor needs body_model=<SMPL .npz>: the LSP joints are regressed from meshes")

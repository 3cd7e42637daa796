"""Confidence calibration from ground truth: a monotone logistic model of the stored signals (pure numpy).

The fixed confidence (`dpmesh_core.confidence.combine`) is ``prod_i s_i`` over the per-signal scores ``s_i`` of
`SCORE_SCALES`, i.e. ``exp(sum_i log s_i)`` with every weight 1. A calibration keeps the same features, the
log-scores ``f_i = log s_i = -max(0, excess_i) / scale_i`` (<= 0; 0 while the signal is good), and fits

    confidence = P(error < good_error_mm | signals) = sigmoid(b + sum_i w_i f_i),  w_i >= 0,

by maximum likelihood (plus a small ridge on ``w``) on persons whose true error is known (``dpmesh-eval
fit_confidence=true``). Why logistic and not isotonic: an isotonic map of the existing confidence can only relabel
its values, never re-weight the signals for a user's domain; a multi-signal isotonic fit needs far more than the
few hundred ground-truth persons a user has. Logistic regression with ``w >= 0`` re-weights the signals, stays
monotone in every signal (the property the fixed confidence documents), and its output is a probability, so the
tier cut-offs (``gold_min`` ...) read as "at least this chance of a good label".

**From review decisions** (`fit_calibration_to_reviews`, ``dpmesh-eval review=<file...> fit_confidence=true`` without
ground truth): the same features, the same model and the same file, fitted to the binary outcome a reviewer gave
(accept = good). The file stays a calibration of ``P(error < good_error_mm)``: its ``error_metric`` is
:data:`REVIEW_OUTCOME`, the 0/1 indicator of a reviewed reject, cut at ``good_error_mm`` = :data:`REVIEW_CUT` (a
number on that indicator, not mm), so the formula reads ``P(reject indicator < 0.5)`` = P(accepted); its ``target``
says so in words and its ``fit.outcome`` names the review files. Readers (``filter.calibration=``) need nothing new.

Edge cases: a signal that was not measured (None) has ``f_i = 0``, as it scores 1 in the fixed product; an
undefined reprojection error (no valid keypoint, NaN) has ``s_i = 0``, so the confidence is 0 when its weight is
positive. The file is JSON (`CALIBRATION_FORMAT`, `CALIBRATION_VERSION`) and carries each term's signal name,
soft point, scale, direction and weight, so it stays valid if `SCORE_SCALES` changes later. Reading it checks it
against a declared schema (`FILE_FIELDS`, `TERM_FIELDS`): a file changes every confidence it scores, so a value of
the wrong JSON type (``"no"`` for a boolean, ``true`` for a number) is refused, never coerced.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpmesh_core.confidence import SCORE_SCALES, ConfidenceSignals
from dpmesh_core.json_values import EXPECTED, json_type, refusing_repeated_keys, show_value


CALIBRATION_FORMAT = "dpmesh-confidence-calibration"
CALIBRATION_VERSION = 1
MODEL = "logistic"
REVIEW_OUTCOME = "reviewed_reject"
"""``error_metric`` of a calibration fitted on review decisions: 1 for a person a reviewer rejected, 0 if accepted."""
REVIEW_CUT = 0.5
"""``good_error_mm`` of a calibration fitted on review decisions: the cut between the indicator's 0 and 1 (no unit)."""
REVIEW_JOINT_SET = "review"
"""``joint_set`` of a calibration fitted on review decisions: the reviewer judged the whole label, not a joint set."""
REVIEW_TARGET = "P(a reviewer accepts the label)"


class CalibrationError(ValueError):
    """A calibration file that does not follow its schema (one line naming the field); pipelines turn it into a
    configuration error."""


@dataclass(frozen=True)
class CalibrationTerm:
    """One feature: ``weight * log s`` with ``s = exp(-max(0, excess) / scale)`` (see `SCORE_SCALES`)."""

    signal: str
    soft: float
    scale: float
    higher_is_better: bool
    weight: float

    def log_score(self, value: float | None) -> float:
        """``log s`` (<= 0): 0 for None (not measured), -inf for NaN (undefined: no evidence)."""
        if value is None:
            return 0.0
        if math.isnan(value):
            return -math.inf
        excess = self.soft - value if self.higher_is_better else value - self.soft
        return -max(0.0, excess) / self.scale


@dataclass(frozen=True)
class ConfidenceCalibration:
    """A fitted calibration (module docstring).

    Attributes:
        terms: the features and their weights, >= 0.
        intercept: ``b``.
        good_error_mm: the cut that defines a good label, mm of ``error_metric``.
        error_metric: which error was cut (e.g. ``pa_mpjpe_mm``), joint_set: on which joints (e.g. ``smpl24``).
        fit: what it was fitted on (counts, log loss, Spearman before/after), for the record.
        sha256: hex digest of the file it was read from ("" when built in memory); recorded in output lineage.
        target: the file's ``target`` in words ("" : ``P(<error_metric> < <good_error_mm> mm on <joint_set>)``);
            a calibration fitted on reviews says :data:`REVIEW_TARGET`.
    """

    terms: tuple[CalibrationTerm, ...]
    intercept: float
    good_error_mm: float
    error_metric: str = "pa_mpjpe_mm"
    joint_set: str = "smpl24"
    fit: dict[str, Any] = field(default_factory=dict, compare=False)
    sha256: str = field(default="", compare=False)
    target: str = field(default="", compare=False)

    @property
    def signal_names(self) -> tuple[str, ...]:
        return tuple(t.signal for t in self.terms)

    def logit(self, signals: ConfidenceSignals) -> float:
        """``b + sum_i w_i f_i``; -inf when a positively weighted signal is undefined."""
        total = self.intercept
        for term in self.terms:
            f = term.log_score(getattr(signals, term.signal))
            if term.weight > 0:
                total += term.weight * f
        return total

    def confidence(self, signals: ConfidenceSignals) -> float:
        """The calibrated confidence in [0, 1] (a probability of a good label)."""
        z = self.logit(signals)
        if z == -math.inf:
            return 0.0
        return float(_sigmoid(np.array([z]))[0])

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (without ``sha256``, which is a property of the written bytes)."""
        return {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "model": MODEL,
            "target": self.target or f"P({self.error_metric} < {self.good_error_mm:g} mm on {self.joint_set})",
            "good_error_mm": self.good_error_mm,
            "error_metric": self.error_metric,
            "joint_set": self.joint_set,
            "intercept": self.intercept,
            "terms": [
                {
                    "signal": t.signal,
                    "soft": t.soft,
                    "scale": t.scale,
                    "higher_is_better": t.higher_is_better,
                    "weight": t.weight,
                }
                for t in self.terms
            ],
            "fit": self.fit,
        }

    def to_json_bytes(self) -> bytes:
        """Canonical JSON (sorted keys), so the same fit gives the same bytes and the same sha256."""
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> ConfidenceCalibration:
        """Parse and check a calibration file against its declared schema (`FILE_FIELDS`, `TERM_FIELDS`).

        Raises:
            CalibrationError: not JSON, a repeated key, a missing or unknown field, a value of the wrong JSON type
                (booleans are not numbers, numbers are not booleans) or out of its range or enum; one line naming the
                field and what was expected.
        """
        try:
            doc = json.loads(data, object_pairs_hook=_REPEATED_KEYS_REFUSED)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"calibration file is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise CalibrationError(f"calibration file: expected a JSON object, got {json_type(doc)}")
        _check_object(doc, FILE_FIELDS, "")
        terms = doc["terms"]
        if not terms:
            raise CalibrationError("calibration terms=[]: expected at least one term")
        seen: dict[str, int] = {}
        for i, term in enumerate(terms):
            where = f"terms[{i}]"
            if not isinstance(term, dict):
                raise CalibrationError(f"calibration {where}={show_value(term)}: expected an object ({_term_keys()})")
            _check_object(term, TERM_FIELDS, f"{where}.")
            if term["signal"] in seen:  # two weights for one signal would count it twice
                raise CalibrationError(
                    f"calibration {where}.signal={show_value(term['signal'])}: repeats terms[{seen[term['signal']]}]"
                )
            seen[term["signal"]] = i
        return cls(
            terms=tuple(
                CalibrationTerm(
                    t["signal"], float(t["soft"]), float(t["scale"]), t["higher_is_better"], float(t["weight"])
                )
                for t in terms
            ),
            intercept=float(doc["intercept"]),
            good_error_mm=float(doc["good_error_mm"]),
            error_metric=doc.get("error_metric", "pa_mpjpe_mm"),
            joint_set=doc.get("joint_set", "smpl24"),
            fit=dict(doc.get("fit") or {}),
            sha256=hashlib.sha256(data).hexdigest(),
            target=doc.get("target", ""),
        )


@dataclass(frozen=True)
class _Field:
    """What one JSON field must hold.

    ``kind``: ``number`` (finite, never a boolean), ``integer`` (never a boolean), ``boolean`` (a JSON ``true`` or
    ``false``), ``string``, ``object``, ``array``. ``choices``: the allowed values (an enum); ``minimum`` /
    ``above``: inclusive / exclusive lower bounds for numbers.
    """

    kind: str
    required: bool = True
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    above: float | None = None


_SIGNAL_NAMES = tuple(ConfidenceSignals.__dataclass_fields__)
# The declared schema of the file (`ConfidenceCalibration.to_dict` writes exactly these fields).
FILE_FIELDS: dict[str, _Field] = {
    "format": _Field("string", choices=(CALIBRATION_FORMAT,)),
    "version": _Field("integer", choices=(CALIBRATION_VERSION,)),
    "model": _Field("string", choices=(MODEL,)),
    "target": _Field("string", required=False),
    "good_error_mm": _Field("number", above=0.0),
    "error_metric": _Field("string", required=False),
    "joint_set": _Field("string", required=False),
    "intercept": _Field("number"),
    "terms": _Field("array"),
    "fit": _Field("object", required=False),
}
TERM_FIELDS: dict[str, _Field] = {
    "signal": _Field("string", choices=_SIGNAL_NAMES),
    "soft": _Field("number"),
    "scale": _Field("number", above=0.0),
    "higher_is_better": _Field("boolean"),
    "weight": _Field("number", minimum=0.0),
}


def _term_keys() -> str:
    return ", ".join(TERM_FIELDS)


def _check_value(value: Any, spec: _Field, where: str) -> None:
    kind = json_type(value)
    ok = kind == spec.kind or (spec.kind == "number" and kind == "integer")
    if ok and spec.kind == "number":
        ok = math.isfinite(value)
    if not ok:
        raise CalibrationError(f"calibration {where}={show_value(value)}: expected {EXPECTED[spec.kind]}")
    if spec.choices and value not in spec.choices:
        allowed = " or ".join(json.dumps(c) for c in spec.choices[:20])
        raise CalibrationError(f"calibration {where}={show_value(value)}: expected {allowed}")
    if spec.minimum is not None and value < spec.minimum:
        raise CalibrationError(f"calibration {where}={show_value(value)}: expected a number >= {spec.minimum:g}")
    if spec.above is not None and not value > spec.above:
        raise CalibrationError(f"calibration {where}={show_value(value)}: expected a number > {spec.above:g}")


def _check_object(doc: dict[str, Any], fields: dict[str, _Field], prefix: str) -> None:
    """Every field of ``fields`` present when required and of its kind; no field outside ``fields``."""
    for name, spec in fields.items():
        if name not in doc:
            if spec.required:
                raise CalibrationError(f"calibration {prefix}{name}: missing (expected {EXPECTED[spec.kind]})")
            continue
        _check_value(doc[name], spec, prefix + name)
    unknown = sorted(set(doc) - set(fields))
    if unknown:  # a misspelt field would otherwise be ignored while its intended value is not applied
        raise CalibrationError(
            f"calibration {prefix}{unknown[0]}: not a field of this format (expected {', '.join(fields)})"
        )


_REPEATED_KEYS_REFUSED = refusing_repeated_keys(
    lambda key: CalibrationError(f"calibration field {key!r} is given twice")
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    return out


def default_terms() -> tuple[CalibrationTerm, ...]:
    """The fixed confidence's terms (`SCORE_SCALES`) with weight 1: the starting point of a fit."""
    return tuple(CalibrationTerm(name, soft, scale, hib, 1.0) for name, soft, scale, hib in SCORE_SCALES)


def feature_matrix(signals: Sequence[ConfidenceSignals], terms: Sequence[CalibrationTerm]) -> np.ndarray:
    """`(N, K)` log-scores ``f_i`` (<= 0; -inf where a signal is undefined)."""
    return np.array([[t.log_score(getattr(s, t.signal)) for t in terms] for s in signals], dtype=np.float64).reshape(
        len(signals), len(terms)
    )


def fit_calibration(
    signals: Sequence[ConfidenceSignals],
    errors_mm: np.ndarray,
    good_error_mm: float,
    *,
    error_metric: str = "pa_mpjpe_mm",
    joint_set: str = "smpl24",
    ridge: float = 1e-3,
    max_iter: int = 200,
) -> ConfidenceCalibration:
    """Fit ``P(error < good_error_mm)`` by logistic regression with non-negative weights (projected Newton).

    Args:
        signals: `N` persons' stored signals.
        errors_mm: `(N,)` their true errors, mm (NaN rows are left out).
        good_error_mm: a label is good when its error is below this.
        ridge: L2 penalty on the weights (keeps the fit finite on separable or tiny sets).

    Returns:
        The calibration; ``fit`` records n, n_good, the mean log loss and the rows left out.

    Raises:
        ValueError: fewer than 2 usable rows, or only good or only bad labels (nothing to separate).
    """
    err = np.asarray(errors_mm, dtype=np.float64).reshape(-1)
    good = np.where(np.isfinite(err), (err < good_error_mm).astype(np.float64), np.nan)
    terms, intercept, fit = _fit_outcomes(
        signals, good, ridge, max_iter, f"good and bad labels (error < {good_error_mm:g} mm and not)"
    )
    return ConfidenceCalibration(
        terms=terms,
        intercept=intercept,
        good_error_mm=float(good_error_mm),
        error_metric=error_metric,
        joint_set=joint_set,
        fit=fit,
    )


def fit_calibration_to_reviews(
    signals: Sequence[ConfidenceSignals],
    accepted: np.ndarray,
    *,
    ridge: float = 1e-3,
    max_iter: int = 200,
) -> ConfidenceCalibration:
    """Fit ``P(a reviewer accepts the label)`` from review decisions: the model, features and fit of
    `fit_calibration`, on the binary outcome instead of a cut error (module docstring: how the file says so).

    Args:
        signals: `N` reviewed persons' stored signals.
        accepted: `(N,)` True where the reviewer accepted the person, False where they rejected it.

    Returns:
        The calibration (``error_metric`` :data:`REVIEW_OUTCOME`, ``good_error_mm`` :data:`REVIEW_CUT`, ``target``
        :data:`REVIEW_TARGET`); ``fit`` records n, n_good (accepted), the mean log loss, the rows left out and
        ``outcome`` (what was fitted: review decisions, accept good, reject bad).

    Raises:
        ValueError: fewer than 2 usable rows, or only accepts or only rejects (nothing to separate).
    """
    good = np.asarray(accepted, dtype=bool).reshape(-1).astype(np.float64)
    terms, intercept, fit = _fit_outcomes(signals, good, ridge, max_iter, "accepted and rejected persons")
    fit["outcome"] = {"source": "review decisions", "good": "accept", "bad": "reject"}
    return ConfidenceCalibration(
        terms=terms,
        intercept=intercept,
        good_error_mm=REVIEW_CUT,
        error_metric=REVIEW_OUTCOME,
        joint_set=REVIEW_JOINT_SET,
        fit=fit,
        target=REVIEW_TARGET,
    )


def _fit_outcomes(
    signals: Sequence[ConfidenceSignals], good: np.ndarray, ridge: float, max_iter: int, both: str
) -> tuple[tuple[CalibrationTerm, ...], float, dict[str, Any]]:
    """``(terms, intercept, fit record)`` of the monotone logistic model of ``good`` (`(N,)`: 1 good, 0 bad, NaN
    unknown: left out) on the log-scores of ``signals``; ``both`` names the two outcomes in the refusal."""
    terms = default_terms()
    x = feature_matrix(signals, terms)
    if good.shape[0] != x.shape[0]:
        raise ValueError(f"fit_calibration: {x.shape[0]} signal rows but {good.shape[0]} outcomes")
    usable = np.isfinite(x).all(axis=1) & np.isfinite(good)  # undefined signals score 0 whatever the fit
    x, y = x[usable], good[usable]
    if len(y) < 2 or y.min() == y.max():
        raise ValueError(f"fit_calibration: need {both} among the usable rows; got {int(y.sum())} good of {len(y)}")
    n, k = x.shape
    design = np.concatenate([np.ones((n, 1)), x], axis=1)  # column 0: intercept (unbounded)
    # A signal that is perfect (feature 0) for every person carries no information here: its weight is 0, fixed.
    informative = (x != 0).any(axis=0)
    theta = np.concatenate([[math.log(y.mean() / (1 - y.mean()))], informative.astype(np.float64)])
    penalty = np.full(k + 1, ridge)
    penalty[0] = 0.0

    def loss(th: np.ndarray) -> float:
        z = design @ th
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * (penalty * th * th).sum())

    current = loss(theta)
    for _ in range(max_iter):
        p = _sigmoid(design @ theta)
        grad = design.T @ (p - y) / n + penalty * theta
        hess = (design * (p * (1 - p))[:, None]).T @ design / n + np.diag(penalty) + 1e-9 * np.eye(k + 1)
        # Active set: a weight at its bound 0 whose gradient pushes it below 0 stays fixed.
        free = np.ones(k + 1, dtype=bool)
        free[1:] = informative & ((theta[1:] > 0) | (grad[1:] < 0))
        step = np.zeros(k + 1)
        step[free] = np.linalg.solve(hess[np.ix_(free, free)], grad[free])
        t = 1.0
        while True:
            candidate = theta - t * step
            candidate[1:] = np.maximum(candidate[1:], 0.0)
            new = loss(candidate)
            if new <= current + 1e-12 or t < 1e-8:
                break
            t *= 0.5
        done = np.abs(candidate - theta).max() < 1e-10
        theta, current = candidate, new
        if done:
            break
    fitted = tuple(
        CalibrationTerm(t.signal, t.soft, t.scale, t.higher_is_better, float(w))
        for t, w in zip(terms, theta[1:], strict=True)
    )
    fit = {"n": int(n), "n_good": int(y.sum()), "n_left_out": int((~usable).sum()), "log_loss": round(current, 6)}
    return fitted, float(theta[0]), fit

"""How well a confidence ranks error: Spearman, the sparsification curve and its area against the oracle (AUSE).

* ``spearman``: the rank correlation of confidence with *minus* the error (ties share their average rank), so 1
  means the most confident labels are exactly the most accurate ones, 0 no relation, -1 inverted.
* Sparsification curve: for each fraction ``f`` in ``0, 1/steps, ..., (steps-1)/steps``, remove the ``f`` least
  confident persons and take the mean error of the rest. The oracle curve removes the ``f`` largest errors instead
  (the best any confidence could do). Ties in confidence are removed in input order (stable sort), so the curve is
  deterministic.
* AUSE (area under the sparsification error): the trapezoid area between the two curves over ``f`` in
  ``[0, (steps-1)/steps]``, in mm (0 = ranks like the oracle). ``ause_relative`` divides it by the mean error at
  ``f = 0``, so sets with different error levels compare.

**From a sample** (`sampled_confidence_quality`): past a bound, ``dpmesh-eval`` computes these figures on a uniform
random sample of ``m`` of the ``N`` persons (`pipelines.eval.samples.BottomK`) and states, in ``sample``, an
approximate 3-sigma bound on the difference to the figure on all ``N`` (both 0 when ``m = N``: the figures are
then exact):

* Spearman: ``3 * sqrt(1.06 / (m - 3)) * sqrt(1 - m/N)``, the standard error of Spearman's rho on Fisher's z scale
  (Fieller, Hartley and Pearson 1957; rho moves less than z) with the finite-population correction;
  0.0098 at ``m = 100,000``.
* AUSE: ``3 * sqrt(1 - m/N)`` times the trapezoid integral over the curve's fractions of the two curves' standard
  errors at each fraction (the standard deviation of the errors kept there over the square root of how many are
  kept): the area between the curves moves by at most the sum of the curves' moves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def rank_average(x: np.ndarray) -> np.ndarray:
    """`(N,)` → `(N,)` ranks 1..N, ties sharing their average rank."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    ranks: np.ndarray = (upper - (counts - 1) / 2.0)[inverse]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two `(N,)` arrays (Pearson of tie-averaged ranks); NaN if N < 2 or constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[0] < 2:
        return float("nan")
    ra, rb = rank_average(a), rank_average(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """The area under the ROC curve of ``scores`` for the `(N,)` bool ``positive``: the chance that a random
    positive scores above a random negative (ties count half; Mann-Whitney U over both counts). 1: the scores
    separate them, 0.5: no better than chance. None without both kinds or with a non-finite score."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg or not np.isfinite(scores).all():
        return None
    u = rank_average(scores)[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class SparsificationPoint:
    """One point of the curves: the fraction removed, the mean error left (mm) by confidence and by the oracle."""

    fraction_removed: float
    mean_error_mm: float
    oracle_mean_error_mm: float


@dataclass(frozen=True)
class ConfidenceQuality:
    """Confidence against one error metric (module docstring)."""

    error_metric: str
    n: int
    spearman: float
    sparsification: tuple[SparsificationPoint, ...]
    ause_mm: float
    ause_relative: float
    sample: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready; the curves are columns of equal length (``fraction_removed``, ``mean_error_mm``,
        ``oracle_mean_error_mm``), which plot directly; ``sample`` when the figures come from a sample."""
        out = asdict(self)
        if self.sample is None:
            del out["sample"]
        out["sparsification"] = {
            name: [getattr(p, name) for p in self.sparsification]
            for name in ("fraction_removed", "mean_error_mm", "oracle_mean_error_mm")
        }
        return out


def sparsification(confidence: np.ndarray, error: np.ndarray, steps: int = 20) -> tuple[SparsificationPoint, ...]:
    """The sparsification and oracle curves (module docstring).

    Args:
        confidence, error: `(N,)`, N >= 1; error in mm.
        steps: number of fractions (``steps >= 1``).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    err = np.asarray(error, dtype=np.float64)
    n = err.shape[0]
    by_conf = err[np.argsort(-conf, kind="stable")]  # most confident first
    by_err = np.sort(err)  # smallest error first
    points = []
    for i in range(steps):
        keep = max(n - round(n * i / steps), 1)
        points.append(SparsificationPoint(i / steps, float(by_conf[:keep].mean()), float(by_err[:keep].mean())))
    return tuple(points)


def confidence_quality(
    confidence: np.ndarray, error: np.ndarray, error_metric: str, steps: int = 20
) -> ConfidenceQuality | None:
    """Spearman, sparsification and AUSE over the persons whose confidence and error are finite; None if none."""
    conf = np.asarray(confidence, dtype=np.float64)
    err = np.asarray(error, dtype=np.float64)
    ok = np.isfinite(conf) & np.isfinite(err)
    conf, err = conf[ok], err[ok]
    if err.size == 0:
        return None
    points = sparsification(conf, err, steps)
    fractions = np.array([p.fraction_removed for p in points])
    gap = np.array([p.mean_error_mm - p.oracle_mean_error_mm for p in points])
    ause = float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(fractions))) if len(points) > 1 else 0.0
    base = points[0].mean_error_mm
    return ConfidenceQuality(
        error_metric=error_metric,
        n=int(err.size),
        spearman=spearman(conf, -err),
        sparsification=points,
        ause_mm=ause,
        ause_relative=ause / base if base > 0 else float("nan"),
    )


def _kept_counts(n: int, steps: int) -> np.ndarray:
    """How many persons each point of the curves keeps (as `sparsification` counts them)."""
    return np.array([max(n - round(n * i / steps), 1) for i in range(steps)])


def _curve_standard_errors(ordered: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Standard error of the mean of the first ``kept[i]`` of ``ordered`` (errors), for each point."""
    total, squares = np.cumsum(ordered), np.cumsum(ordered**2)
    mean = total[kept - 1] / kept
    variance = np.maximum(squares[kept - 1] / kept - mean**2, 0.0)
    result: np.ndarray = np.sqrt(variance / kept)
    return result


def sampled_confidence_quality(
    confidence: np.ndarray, error: np.ndarray, error_metric: str, steps: int, population: int
) -> ConfidenceQuality | None:
    """`confidence_quality` of a uniform sample of ``population`` persons, with ``sample``: its size, whether it is
    the whole population, and the bounds of the module docstring (0 when it is).

    Args:
        confidence, error: `(m,)` of the sampled persons, in the population's order (ties in confidence are then
            removed as the whole population's would be).
        population: ``N``, the persons the sample was drawn from (each with a finite confidence and error).
    """
    quality = confidence_quality(confidence, error, error_metric, steps)
    if quality is None:
        return None
    m = quality.n
    exact = m >= population
    fpc = 0.0 if exact else math.sqrt(1.0 - m / population)
    spearman_bound = 3.0 * math.sqrt(1.06 / (m - 3)) * fpc if m > 3 else (0.0 if exact else math.inf)
    conf = np.asarray(confidence, np.float64)
    err = np.asarray(error, np.float64)
    ok = np.isfinite(conf) & np.isfinite(err)
    conf, err = conf[ok], err[ok]
    kept = _kept_counts(m, steps)
    spread = _curve_standard_errors(err[np.argsort(-conf, kind="stable")], kept) + _curve_standard_errors(
        np.sort(err), kept
    )
    fractions = np.arange(steps) / steps
    area = float(np.sum((spread[1:] + spread[:-1]) / 2 * np.diff(fractions))) if steps > 1 else 0.0
    sample = {
        "persons": m,
        "of": int(max(population, m)),
        "exact": exact,
        "spearman_bound": spearman_bound if math.isfinite(spearman_bound) else None,
        "ause_bound_mm": 3.0 * area * fpc,
    }
    return ConfidenceQuality(**{**asdict(quality), "sparsification": quality.sparsification, "sample": sample})

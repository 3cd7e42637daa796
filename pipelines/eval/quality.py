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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def to_dict(self) -> dict[str, object]:
        """JSON-ready; the curves are columns of equal length (``fraction_removed``, ``mean_error_mm``,
        ``oracle_mean_error_mm``), which plot directly."""
        out = asdict(self)
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

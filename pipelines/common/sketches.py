"""A mergeable summary of a stream of numbers: exact count, mean, min and max; quantiles exact while small, from a
KLL sketch beyond.

Statistics are made where the rows are (DESIGN.md, Beam shape): each worker summarises its own rows into a
:class:`ValueSketch`, sketches merge in any order, and the merged one answers for every row while holding a bounded
amount of memory (at most :data:`EXACT_CAP` values, or one KLL sketch of a few kB).

* **Exact while small.** Up to :data:`EXACT_CAP` values the sketch keeps them all: ``quantile`` is
  ``numpy.quantile`` (linear interpolation: the median of an even count is the mean of the two middle values), so
  small evaluations match a plain numpy computation exactly.
* **Estimated beyond.** Past the cap the values go into an Apache DataSketches KLL sketch (``k`` =
  :data:`KLL_K`); ``quantile(q)`` then returns a stored value whose normalised rank is within
  :attr:`ValueSketch.rank_error` of ``q`` with 99% confidence (about 0.0133 for ``k = 200``: a reported median lies
  between the 48.7th and 51.3rd percentiles). KLL compaction is randomised, so two runs over the same values may
  differ within that bound.
* **Mean is exact in either mode**: the sum is kept with a compensation term (each added batch is summed exactly
  rounded with ``math.fsum``), so merging order does not drift it.
* **Non-finite values** (NaN, inf) are not summarised: they are counted in ``non_finite`` and left out.

Serialised form (:meth:`ValueSketch.to_json`, a JSON object; :data:`SKETCH_FORMAT` version :data:`SKETCH_VERSION`)::

    {"format": "dpmesh-value-sketch", "version": 1, "count": <int finite values>, "non_finite": <int>,
     "sum": <float>, "sum_compensation": <float>, "min": <float|null>, "max": <float|null>,
     "values": [<float>, ...] | null,           # the values while count <= exact_cap, else null
     "exact_cap": 2048, "kll_k": 200,
     "kll": "<base64 of datasketches kll_doubles_sketch.serialize()>" | null}   # once count > exact_cap

Pickling goes through the same form (Beam moves sketches between workers as accumulators).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch


SKETCH_FORMAT = "dpmesh-value-sketch"
SKETCH_VERSION = 1
EXACT_CAP = 2048
"""Values kept exactly: up to this count every quantile equals ``numpy.quantile`` of all values."""
KLL_K = 200
"""KLL accuracy parameter: normalised rank error about 1.33% (single quantile, 99% confidence), a few kB."""


class SketchFormatError(ValueError):
    """A serialised sketch that is not of this format and version (the message names the field)."""


class ValueSketch:
    """Count, exact mean / min / max, and quantiles of a stream of floats (module docstring).

    Build with :meth:`empty`, feed with :meth:`add`, combine with :meth:`merge` (inputs are left unchanged).
    """

    __slots__ = ("_comp", "_count", "_kll", "_max", "_min", "_non_finite", "_sum", "_values")

    def __init__(self) -> None:
        self._count = 0
        self._non_finite = 0
        self._sum = 0.0
        self._comp = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._values: np.ndarray | None = np.empty(0, dtype=np.float64)
        self._kll: kll_doubles_sketch | None = None

    @classmethod
    def empty(cls) -> ValueSketch:
        """A sketch of no values."""
        return cls()

    @classmethod
    def of(cls, values: np.ndarray | Sequence[float]) -> ValueSketch:
        """A sketch of ``values``."""
        sketch = cls()
        sketch.add(np.asarray(values, dtype=np.float64))
        return sketch

    # ---------------------------------------------------------------------------------------------- feeding

    def add(self, values: np.ndarray) -> ValueSketch:
        """Adds ``values`` (any shape, flattened; non-finite ones counted and left out); returns ``self``."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        finite = flat[np.isfinite(flat)]
        self._non_finite += int(flat.size - finite.size)
        if finite.size == 0:
            return self
        self._count += int(finite.size)
        self._add_sum(math.fsum(finite.tolist()), 0.0)
        self._min = min(self._min, float(finite.min()))
        self._max = max(self._max, float(finite.max()))
        if self._values is not None:
            self._values = np.concatenate([self._values, finite])
            self._spill_if_large()
        else:
            assert self._kll is not None
            self._kll.update(finite)
        return self

    def merge(self, other: ValueSketch) -> ValueSketch:
        """A new sketch of both sketches' values."""
        out = ValueSketch()
        out._count = self._count + other._count
        out._non_finite = self._non_finite + other._non_finite
        out._sum, out._comp = self._sum, self._comp
        out._add_sum(other._sum, other._comp)
        out._min, out._max = min(self._min, other._min), max(self._max, other._max)
        if self._values is not None and other._values is not None:
            out._values = np.concatenate([self._values, other._values])
            out._spill_if_large()
            return out
        out._values = None
        out._kll = kll_doubles_sketch(KLL_K)
        for part in (self, other):
            if part._kll is not None:
                out._kll.merge(part._kll)
            elif part._values is not None and part._values.size:
                out._kll.update(part._values)
        return out

    def _add_sum(self, value: float, compensation: float) -> None:
        # Neumaier summation: the running sum's rounding error is carried, so the mean of merged sketches does not
        # depend on the order they merged in (to within one rounding of the final division).
        for term in (value, compensation):
            total = self._sum + term
            if abs(self._sum) >= abs(term):
                self._comp += (self._sum - total) + term
            else:
                self._comp += (term - total) + self._sum
            self._sum = total

    def _spill_if_large(self) -> None:
        if self._values is not None and self._values.size > EXACT_CAP:
            self._kll = kll_doubles_sketch(KLL_K)
            self._kll.update(self._values)
            self._values = None

    # ---------------------------------------------------------------------------------------------- answers

    @property
    def count(self) -> int:
        """Finite values summarised."""
        return self._count

    @property
    def non_finite(self) -> int:
        """NaN / inf values seen and left out."""
        return self._non_finite

    @property
    def mean(self) -> float:
        """Exact mean of the finite values (NaN when there are none)."""
        return (self._sum + self._comp) / self._count if self._count else math.nan

    @property
    def minimum(self) -> float:
        return self._min if self._count else math.nan

    @property
    def maximum(self) -> float:
        return self._max if self._count else math.nan

    @property
    def exact(self) -> bool:
        """True while every value is kept (quantiles are exact)."""
        return self._values is not None

    @property
    def rank_error(self) -> float:
        """Normalised rank error of :meth:`quantile` (99% confidence): 0 while exact."""
        return 0.0 if self._kll is None else float(self._kll.normalized_rank_error(False))

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (``0 <= q <= 1``) of the finite values; NaN when there are none."""
        return self.quantiles([q])[0]

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """:meth:`quantile` of each of ``qs``.

        Raises:
            ValueError: a ``q`` outside ``[0, 1]``.
        """
        if any(not 0.0 <= q <= 1.0 for q in qs):
            raise ValueError(f"quantiles must lie in [0, 1], got {list(qs)}")
        if not self._count:
            return [math.nan] * len(qs)
        if self._values is not None:
            return [float(v) for v in np.quantile(self._values, list(qs))]
        assert self._kll is not None
        # The extremes are known exactly; in between, KLL's inclusive rank convention.
        return [
            self._min if q == 0.0 else self._max if q == 1.0 else float(self._kll.get_quantile(q, True)) for q in qs
        ]

    # ---------------------------------------------------------------------------------------------- storage

    def to_json(self) -> dict[str, Any]:
        """The serialised form (module docstring); JSON-ready."""
        kll = None if self._kll is None else base64.b64encode(self._kll.serialize()).decode("ascii")
        return {
            "format": SKETCH_FORMAT,
            "version": SKETCH_VERSION,
            "count": self._count,
            "non_finite": self._non_finite,
            "sum": self._sum,
            "sum_compensation": self._comp,
            "min": self._min if self._count else None,
            "max": self._max if self._count else None,
            "values": None if self._values is None else self._values.tolist(),
            "exact_cap": EXACT_CAP,
            "kll_k": KLL_K,
            "kll": kll,
        }

    @classmethod
    def from_json(cls, doc: Any) -> ValueSketch:
        """A sketch from :meth:`to_json`'s form.

        Raises:
            SketchFormatError: another format or version, or a field of the wrong type.
        """
        if not isinstance(doc, dict) or doc.get("format") != SKETCH_FORMAT:
            raise SketchFormatError(f"not a {SKETCH_FORMAT} object")
        if doc.get("version") != SKETCH_VERSION:
            raise SketchFormatError(f"{SKETCH_FORMAT} version {doc.get('version')!r}: expected {SKETCH_VERSION}")
        sketch = cls()
        try:
            sketch._count, sketch._non_finite = _count(doc["count"]), _count(doc["non_finite"])
            sketch._sum, sketch._comp = float(doc["sum"]), float(doc["sum_compensation"])
            if sketch._count:
                sketch._min, sketch._max = float(doc["min"]), float(doc["max"])
            if doc["values"] is not None:
                sketch._values = np.asarray(doc["values"], dtype=np.float64).reshape(-1)
                if sketch._values.size != sketch._count:
                    raise SketchFormatError(f"{SKETCH_FORMAT}: {sketch._values.size} values for count {sketch._count}")
            else:
                sketch._values = None
                sketch._kll = kll_doubles_sketch.deserialize(base64.b64decode(doc["kll"], validate=True))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, SketchFormatError):
                raise
            raise SketchFormatError(f"{SKETCH_FORMAT}: {type(exc).__name__}: {exc}") from exc
        return sketch

    def __reduce__(self) -> tuple[Any, ...]:
        return (ValueSketch.from_json, (self.to_json(),))

    def __repr__(self) -> str:
        mode = "exact" if self.exact else f"kll k={KLL_K}"
        return f"ValueSketch(count={self._count}, mean={self.mean:.6g}, {mode})"


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SketchFormatError(f"{SKETCH_FORMAT}: expected a count >= 0, got {value!r}")
    return value

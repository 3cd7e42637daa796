"""The mergeable summaries dpmesh-eval (and the report) build where the rows are: `ValueSketch` (exact while small,
KLL beyond, within its stated rank error) and `BottomK` (a uniform sample, the same whatever the merge order)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from pipelines.common.sketches import EXACT_CAP, SketchFormatError, ValueSketch
from pipelines.eval.samples import BottomK, hashes_of


def _merged(parts: list[np.ndarray], order: list[int]) -> ValueSketch:
    sketch = ValueSketch.empty()
    for i in order:
        sketch = sketch.merge(ValueSketch.of(parts[i]))
    return sketch


def test_small_sketches_equal_numpy_whatever_the_merge_order() -> None:
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 30.0, 1001)  # odd and even counts below: numpy's median convention
    for n in (1, 2, 1000, 1001):
        parts = np.array_split(values[:n], 7)
        for order in ([0, 1, 2, 3, 4, 5, 6], [6, 2, 4, 0, 5, 1, 3]):
            sketch = _merged(parts, order)
            assert sketch.exact
            assert sketch.count == n
            assert sketch.mean == pytest.approx(np.mean(values[:n]), rel=1e-14)
            assert sketch.quantile(0.5) == np.median(values[:n])
            assert sketch.quantiles([0.1, 0.9]) == list(np.quantile(values[:n], [0.1, 0.9]))
            assert sketch.rank_error == 0.0


def test_large_sketches_are_within_the_stated_rank_error_and_keep_an_exact_mean() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(3.0, 1.0, 200_000)
    sketch = _merged(np.array_split(values, 40), list(range(40)))
    assert not sketch.exact
    assert sketch.count == values.size
    assert sketch.mean == pytest.approx(values.mean(), rel=1e-12)
    assert (sketch.minimum, sketch.maximum) == (values.min(), values.max())
    ordered = np.sort(values)
    for q in (0.1, 0.5, 0.9):
        rank = np.searchsorted(ordered, sketch.quantile(q), side="right") / values.size
        assert abs(rank - q) <= sketch.rank_error, (q, rank, sketch.rank_error)
    assert 0.0 < sketch.rank_error < 0.02


def test_the_serialised_form_round_trips_and_is_checked() -> None:
    for values in (np.arange(10.0), np.arange(EXACT_CAP * 2, dtype=np.float64)):
        sketch = ValueSketch.of(np.concatenate([values, [np.nan, np.inf]]))
        assert sketch.non_finite == 2
        doc = json.loads(json.dumps(sketch.to_json()))
        back = ValueSketch.from_json(doc)
        assert (back.count, back.mean, back.quantile(0.5), back.exact) == (
            sketch.count, sketch.mean, sketch.quantile(0.5), sketch.exact,
        )  # fmt: skip
        again = pickle.loads(pickle.dumps(sketch))
        assert again.quantile(0.25) == sketch.quantile(0.25)
    with pytest.raises(SketchFormatError, match="version"):
        ValueSketch.from_json({**ValueSketch.empty().to_json(), "version": 9})
    with pytest.raises(SketchFormatError, match="count"):
        ValueSketch.from_json({**ValueSketch.empty().to_json(), "count": True})
    assert math.isnan(ValueSketch.empty().quantile(0.5))
    assert math.isnan(ValueSketch.empty().mean)


def test_bottom_k_is_the_same_sample_whatever_the_merge_order() -> None:
    ids = [f"img{i:05d}_p0" for i in range(5000)]
    hashes = hashes_of(ids)
    order = np.arange(5000)

    def sample(chunks: list[np.ndarray]) -> BottomK:
        merged = BottomK(300)
        for chunk in chunks:
            part = BottomK(300)
            part.add(hashes[chunk], order[chunk], value=order[chunk].astype(float))
            merged = merged.merge(part)
        return merged

    forward = sample(np.array_split(order, 9))
    backward = sample(np.array_split(order[::-1], 4))
    assert forward.seen == backward.seen == 5000
    assert not forward.exact
    assert list(forward.order) == list(backward.order)
    assert list(forward.order) == list(np.argsort(hashes, kind="stable")[:300])
    small = BottomK(10_000)
    small.add(hashes, order, value=order.astype(float))
    assert small.exact
    assert list(small.in_order()[0]) == list(range(5000))

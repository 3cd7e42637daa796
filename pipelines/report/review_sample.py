"""The review page's sample: ``n`` persons stratified by confidence band and occlusion level, seeded and
reproducible, drawn from the label output's merged statistics (never from its rows).

Each shard's statistics keep, per review stratum (`pipelines.common.label_stats.review_stratum`: a confidence band of
:data:`~pipelines.common.label_stats.CONFIDENCE_BANDS` x an occlusion level), the rows of lowest hash priority, and
the merge keeps the :data:`~pipelines.common.label_stats.REVIEW_POOL` lowest over every shard: a uniform sample of
each stratum. The draw:

1. **Allocation.** ``n`` is shared out equally over the strata that have persons (water-filling: a stratum with
   fewer candidates than its share gives all it has and the rest is shared again among the others); units that do
   not divide evenly go to strata chosen with the seed. Rare strata (heavily occluded but confident persons) are
   seen as often as common ones: the page is for finding where labels fail, and the population of each stratum
   is recorded with the sample so rates can be weighted back.
2. **Within a stratum**, the allocated number is drawn with the seed from its candidates sorted by sample id (so
   the draw does not depend on the order shards were merged in).
3. **Order.** The page shows the persons in a seeded shuffle, so strata are interleaved and a reviewer cannot
   guess a person's confidence from its place.

Bounds: at most ``REVIEW_POOL`` persons per stratum and ``len(REVIEW_STRATA) * REVIEW_POOL`` in all (fewer when the
output has fewer); the same statistics and seed give the same persons in the same order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.common.label_stats import REVIEW_STRATA
from pipelines.report.gallery import usable_pool


UNKNOWN_STRATUM = "the stratum of a review sample entry is not a known stratum"

_REVIEW_STREAM = 1
"""Seeds the review draw apart from the gallery's (same ``report.seed``, independent streams)."""


@dataclasses.dataclass(frozen=True)
class ReviewPick:
    """A person drawn for review: where its row lives (``row``: its position in ``<folder>/<shard>.parquet``) and its
    stratum."""

    sample_id: str
    shard: str
    folder: str
    row: int
    stratum: str


def usable_review_pool(
    pool: dict[str, list[tuple[int, str, str, int, str]]],
) -> tuple[dict[str, list[tuple[int, str, str, int, str]]], dict[str, int]]:
    """The pool's entries that can be drawn, and the others counted by problem: an entry (from markers, which are
    data) whose stratum is unknown, or whose sample id, shard or folder cannot name a file, is never drawn."""
    known = {s: entries for s, entries in pool.items() if s in REVIEW_STRATA}
    usable, refused = usable_pool(known)
    unknown = sum(len(entries) for s, entries in pool.items() if s not in REVIEW_STRATA)
    if unknown:
        refused[UNKNOWN_STRATUM] = refused.get(UNKNOWN_STRATUM, 0) + unknown
    return usable, refused


def allocate(capacity: dict[str, int], n: int, rng: np.random.Generator) -> dict[str, int]:
    """How many persons each stratum gives: ``n`` shared equally among the strata with candidates (``capacity``:
    candidates per stratum), never more than a stratum has; ``min(n, sum(capacity))`` in all."""
    given = {s: 0 for s in REVIEW_STRATA if capacity.get(s, 0) > 0}
    remaining = min(n, sum(capacity.get(s, 0) for s in given))
    open_strata = list(given)
    while remaining > 0:
        share = remaining // len(open_strata)
        if share == 0:  # fewer persons left than strata open: one each to strata the seed picks
            for i in sorted(rng.choice(len(open_strata), size=remaining, replace=False)):
                given[open_strata[i]] += 1
            break
        for stratum in open_strata:
            take = min(share, capacity[stratum] - given[stratum])
            given[stratum] += take
            remaining -= take
        open_strata = [s for s in open_strata if given[s] < capacity[s]]
    return given


def draw_review(pool: dict[str, list[tuple[int, str, str, int, str]]], n: int, seed: int) -> list[ReviewPick]:
    """``n`` persons (fewer when the pool holds fewer) from ``pool`` (`MergedStats.review_pool` after
    :func:`usable_review_pool`), stratified and ordered as the module docstring says."""
    rng = np.random.default_rng([seed, _REVIEW_STREAM])
    candidates = {
        stratum: sorted(
            (ReviewPick(sid, shard, folder, row, stratum) for _, shard, folder, row, sid in entries),
            key=lambda p: p.sample_id,
        )
        for stratum, entries in pool.items()
    }
    counts = allocate({s: len(c) for s, c in candidates.items()}, n, rng)
    picks: list[ReviewPick] = []
    for stratum in REVIEW_STRATA:
        if counts.get(stratum):
            chosen = rng.choice(len(candidates[stratum]), size=counts[stratum], replace=False)
            picks.extend(candidates[stratum][i] for i in sorted(chosen))
    return [picks[i] for i in rng.permutation(len(picks))]

"""What reviews measure (``dpmesh-eval review=<file...>``): the reviewed good-label rate of groups of persons with a
95% interval, and the same weighted back to the label output through the review page's stratified draw.

* **Good-label rate** of a group: ``accepts / (accepts + rejects)`` among its reviewed persons found in the labels.
  A skipped person has no decision (a review file lists decisions only) and counts nowhere; a person the files
  decide differently is left out (`pipelines.eval.review_plan`).
* **95% interval**: the Wilson score interval at ``z`` = :data:`Z95` (the 97.5th percentile of the normal)::

      centre = (p + z^2 / 2n) / (1 + z^2 / n),   half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

  Not the normal approximation ``p +- z sqrt(p (1 - p) / n)``, which is ``[p, p]`` at ``p`` = 0 or 1 and leaves
  [0, 1] near them: groups here hold a few dozen persons, where that matters.
* **Groups**: all reviewed persons; per quality tier (the row's ``quality_tier`` in ``input.labels``); per confidence
  band (the row's ``confidence`` on the review strata's bands, `pipelines.common.label_stats.confidence_band`); per
  review stratum (band x occlusion level, as the page drew the person: the decision's ``stratum``).
* **Weighted** (population-weighted; when the files carry their draw, ``sample``): the page draws every stratum
  equally, so rare strata are over-represented among the reviewed. Each reviewed person of stratum ``h`` stands for
  ``w_h = N_h / n_h`` rows of the output (``N_h``: the stratum's rows, from the file's ``sample``; ``n_h``: its
  reviewed persons found). A group's weighted rate is ``sum(w y) / sum(w)`` (``y`` = 1 for an accept; for all
  persons this is ``sum_h (N_h / N) p_h`` over the strata reviewed: the stratified estimate), its ``rows`` the
  output rows it stands for, ``sum(w)``. Its interval is the Wilson interval at Kish's effective sample size
  ``n_eff = (sum w)^2 / sum(w^2)``: for one stratum ``n_eff = n`` and it is the plain Wilson interval. There is no
  finite-population correction (the interval is a little wide where a stratum was reviewed whole, never narrow);
  within a stratum the decided persons are taken as a uniform sample of those drawn (skips at random). It covers
  the strata with a reviewed person only: ``population.covered`` of ``population.rows``. A person whose stratum the
  draw does not give (a hand-made file) is in the plain figures, not the weighted ones (``counts.unweighted``).

The document, ``eval_reviews.json`` (`measure_reviews`; format :data:`REVIEWS_FORMAT`): the label run and the files,
``counts`` (``decisions`` in the files; of the ``persons`` they decide, ``conflicts`` and ``agreed``; of the agreed,
``not_in_input``, ``not_found``, ``other_model`` and ``measured`` = ``accept`` + ``reject``; ``reconciled`` says
these add up), ``population``, ``overall``, ``by_tier``, ``by_band``, ``by_stratum`` (each group: ``n``, ``accept``,
``reject``, ``rate``, ``interval`` [low, high], ``weighted`` {``n``, ``rate``, ``interval``, ``n_effective``,
``rows``} or null; strata also ``population`` and ``drawn``), and ``definitions`` (these rules in words).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from pipelines.common.label_stats import CONFIDENCE_BANDS, REVIEW_STRATA, UNSCORED, confidence_band
from pipelines.eval.review_join import JOIN_COUNTS, ReviewedPerson, ReviewedSet
from pipelines.eval.review_plan import ReviewPlan
from schemas.annotations import QualityTier


REVIEWS_FORMAT = "dpmesh-eval-reviews"
REVIEWS_VERSION = 1
Z95 = 1.959963984540054
"""``z`` of a two-sided 95% interval: the normal distribution's 97.5th percentile."""
BANDS: tuple[str, ...] = (
    *(confidence_band((lo + hi) / 2) for lo, hi in itertools.pairwise(CONFIDENCE_BANDS)),
    UNSCORED,
)
"""The confidence bands in display order (low to high, then unscored)."""
TIERS = tuple(t.value for t in QualityTier)
"""The quality tiers in display order (best first)."""
DEFINITIONS = {
    "rate": "accepts / (accepts + rejects) among the group's reviewed persons found in the labels; a skip is no "
    "decision; persons the files decide differently are left out",
    "interval": f"95% Wilson score interval (z = {Z95:.4f})",
    "weighted": "each reviewed person of review stratum h weighs N_h / n_h (N_h: the stratum's rows in the label "
    "output, from the review file's sample; n_h: its reviewed persons found); rate = sum(w y) / sum(w); interval: "
    "Wilson at Kish's effective size (sum w)^2 / sum(w^2); no finite-population correction",
    "band": "the row's confidence in input.labels on the review bands 0, 0.25, 0.5, 0.75, 1 (unscored: not a number)",
    "stratum": "the review stratum (confidence band | occlusion level) the page drew the person from",
}


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``successes / n`` (``n`` may be an effective, non-integer size);
    None when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(max(p * (1.0 - p), 0.0) / n + z * z / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def group_figures(accepted: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """One group's figures (module docstring) from its persons' decisions (`(n,)` bool, True = accept) and design
    weights (`(n,)`, NaN where the person has none)."""
    n = int(accepted.size)
    accepts = int(accepted.sum())
    interval = wilson_interval(accepts, n)
    weighted = None
    has_weight = np.isfinite(weights)
    w = weights[has_weight]
    if w.size and w.sum() > 0:
        rate = float((w * accepted[has_weight]).sum() / w.sum())
        n_effective = float(w.sum() ** 2 / (w * w).sum())
        low_high = wilson_interval(rate * n_effective, n_effective)
        weighted = {
            "n": int(w.size),
            "rate": rate,
            "interval": None if low_high is None else list(low_high),
            "n_effective": n_effective,
            "rows": float(w.sum()),
        }
    return {
        "n": n,
        "accept": accepts,
        "reject": n - accepts,
        "rate": accepts / n if n else None,
        "interval": None if interval is None else list(interval),
        "weighted": weighted,
    }


def design_weights(persons: list[ReviewedPerson], populations: dict[str, int]) -> np.ndarray:
    """`(N,)` ``N_h / n_h`` for each person (stratum ``h``), NaN for a stratum the draw does not give."""
    found: dict[str, int] = {}
    for p in persons:
        found[p.stratum] = found.get(p.stratum, 0) + 1
    return np.array(
        [populations[p.stratum] / found[p.stratum] if p.stratum in populations else math.nan for p in persons],
        dtype=np.float64,
    ).reshape(len(persons))


def _groups(names: list[str], of: list[str], accepted: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    members = np.asarray(of, dtype=object)
    return {name: group_figures(accepted[members == name], weights[members == name]) for name in names}


def _ordered(values: set[str], order: tuple[str, ...]) -> list[str]:
    """``values`` in ``order``, then any other in name order."""
    return [v for v in order if v in values] + sorted(values - set(order))


def measure_reviews(plan: ReviewPlan, reviewed: ReviewedSet, labels: str) -> dict[str, Any]:
    """The ``eval_reviews.json`` document (module docstring) of the persons ``reviewed`` found for ``plan``."""
    persons = reviewed.in_order()
    accepted = np.array([p.accepted for p in persons], dtype=bool)
    weights = design_weights(persons, plan.populations)
    tiers = [p.quality_tier for p in persons]
    bands = [confidence_band(p.confidence) for p in persons]
    strata = [p.stratum for p in persons]
    planned = plan.record["counts"]
    joined = {name: int(reviewed.counts.get(name, 0)) for name in JOIN_COUNTS}
    counts = {
        **planned,
        "not_found": joined["not_found"],
        "other_model": joined["other_model"],
        "measured": len(persons),
        "accept": int(accepted.sum()),
        "reject": int((~accepted).sum()),
        "weighted": int(np.isfinite(weights).sum()),
        "unweighted": int((~np.isfinite(weights)).sum()),
    }
    reconciled = (
        planned["persons"] == planned["agreed"] + planned["conflicts"]
        and planned["agreed"] == planned["not_in_input"] + joined["decided"]
        and joined["decided"] == len(persons) + joined["not_found"] + joined["other_model"]
    )
    by_stratum = _groups(_ordered(set(strata) | set(plan.populations), REVIEW_STRATA), strata, accepted, weights)
    for stratum, figures in by_stratum.items():
        figures["population"] = plan.populations.get(stratum)
        figures["drawn"] = None if plan.drawn is None else plan.drawn.get(stratum, 0)
    covered = sum(plan.populations.get(s, 0) for s in set(strata))
    return {
        "format": REVIEWS_FORMAT,
        "version": REVIEWS_VERSION,
        "labels": labels,
        "label_run": plan.record["label_run"],
        "files": plan.record["files"],
        "counts": counts,
        "reconciled": reconciled,
        "conflicts": plan.record["conflicts"],
        "population": {
            "rows": sum(plan.populations.values()),
            "covered": covered,
            "strata": sum(1 for n in plan.populations.values() if n),
            "strata_reviewed": len(set(strata) & set(plan.populations)),
        },
        "overall": group_figures(accepted, weights),
        "by_tier": _groups(_ordered(set(tiers), TIERS), tiers, accepted, weights),
        "by_band": _groups(_ordered(set(bands), BANDS), bands, accepted, weights),
        "by_stratum": by_stratum,
        "definitions": DEFINITIONS,
    }


def _rate(value: float | None, interval: list[float] | None) -> str:
    if value is None or interval is None:
        return "- | -"
    return f"{value:.3f} | {interval[0]:.3f}-{interval[1]:.3f}"


def format_reviews_markdown(doc: dict[str, Any]) -> str:
    """The review figures as Markdown: a line of counts, then one table of every group."""
    c = doc["counts"]
    lines = [
        f"Reviews: {c['persons']} persons decided in {len(doc['files'])} file(s); {c['measured']} found in the labels "
        f"({c['accept']} accepted, {c['reject']} rejected); left out: {c['conflicts']} decided differently by the "
        f"files, {c['not_in_input']} in shards the labels lack, {c['not_found']} not found, {c['other_model']} "
        "labeled by another model.",
        "Good-label rate = accepts / (accepts + rejects), with its 95% Wilson interval; weighted: each reviewed "
        "person weighs its stratum's rows over its reviewed persons (the review's draw), interval at Kish's "
        f"effective n. The weighted figures cover {doc['population']['covered']} of the output's "
        f"{doc['population']['rows']} rows (the strata reviewed).",
        "",
        "| group | reviewed | accepted | rate | 95% interval | weighted rate | 95% interval | rows |",
        "|---|---:|---:|---:|---|---:|---|---:|",
    ]
    # In display order whatever the document's key order (it is written with sorted keys).
    groups = [("all", doc["overall"])]
    for kind, key, order in (
        ("tier", "by_tier", TIERS),
        ("band", "by_band", BANDS),
        ("stratum", "by_stratum", REVIEW_STRATA),
    ):
        groups += [(f"{kind} {name}", doc[key][name]) for name in _ordered(set(doc[key]), order)]
    for name, g in groups:
        w = g["weighted"] or {}
        rows = w.get("rows", g.get("population"))
        shown = "-" if rows is None else f"{rows:.0f}"
        lines.append(
            f"| {name.replace('|', chr(92) + '|')} | {g['n']} | {g['accept']} | {_rate(g['rate'], g['interval'])} | "
            f"{_rate(w.get('rate'), w.get('interval'))} | {shown} |"
        )
    return "\n".join(lines)

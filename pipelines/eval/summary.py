"""The evaluation's mergeable summary (`EvalPartial`): made from one batch of matched persons where they were
computed, merged in any order, and turned into the `EvaluationResult` at the end (`finish`). It holds a bounded
amount whatever the number of persons:

* **counts** (label rows, matched, non-finite, ...): integers.
* **groups** (overall, by tier, by occlusion level): per metric a `pipelines.common.sketches.ValueSketch`: the mean
  is exact; medians are exact up to `EXACT_CAP` persons per group and metric, and within the KLL rank error
  beyond (``estimates.medians`` in ``eval.json`` says which).
* **confidence quality**: per metric a `BottomK` uniform sample of ``quality_sample`` ``(confidence, error)``
  pairs; the figures are exact while the persons fit in it, else come with the bounds of
  `pipelines.eval.quality.sampled_confidence_quality`.
* **calibration sample**: per quality tier a `BottomK` of ``calibration_sample`` persons (signals, errors); the fit
  takes from each tier in proportion to its size (`calibration_sample_of`).
* **persons** for ``eval_persons.json``: kept while at most ``persons_json_max`` (then dropped: every person's
  errors are in ``persons/*.parquet`` anyway).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.common.sketches import EXACT_CAP, KLL_K, ValueSketch
from pipelines.eval.label_columns import SIGNALS, LabelColumns
from pipelines.eval.person_errors import METRICS, MatchedErrors
from pipelines.eval.quality import ConfidenceQuality, sampled_confidence_quality
from pipelines.eval.result import EvaluationResult, GroupMetrics, PersonError
from pipelines.eval.samples import BottomK, hashes_of
from schemas.annotations import QualityTier


ALL = ("all", "")
COUNTS = ("label_rows", "matched", "matched_ground_truth", "non_finite", "no_metric", "evaluated")


@dataclass(frozen=True)
class SummaryLimits:
    """The bounds of a summary (``dpmesh-eval`` config keys of the same names).

    Attributes:
        quality_sample: persons sampled per metric for Spearman and the sparsification curve.
        calibration_sample: persons sampled per quality tier for ``fit_confidence`` (0: no calibration sample, when
            nothing is fitted).
        persons_json_max: most persons listed in ``eval_persons.json``.
    """

    quality_sample: int = 100_000
    calibration_sample: int = 50_000
    persons_json_max: int = 10_000


@dataclass
class GroupSketch:
    """One group's evaluated persons: how many, and a sketch of each metric's values over those it covers."""

    n: int = 0
    metrics: dict[str, ValueSketch] = field(default_factory=dict)

    def merge(self, other: GroupSketch) -> GroupSketch:
        names = set(self.metrics) | set(other.metrics)
        empty = ValueSketch.empty()
        return GroupSketch(
            self.n + other.n, {k: self.metrics.get(k, empty).merge(other.metrics.get(k, empty)) for k in names}
        )


@dataclass
class EvalPartial:
    """The summary of some label rows (module docstring). ``groups`` keys: `ALL`, ``("tier", t)``,
    ``("occlusion", level)``; ``calibration_finite[(tier, metric)]``: persons with signals and a finite metric."""

    limits: SummaryLimits
    counts: Counter[str] = field(default_factory=Counter)
    metrics: set[str] = field(default_factory=set)
    has_occlusion: bool = False
    groups: dict[tuple[str, str], GroupSketch] = field(default_factory=dict)
    quality: dict[str, BottomK] = field(default_factory=dict)
    calibration: dict[str, BottomK] = field(default_factory=dict)
    calibration_finite: Counter[tuple[str, str]] = field(default_factory=Counter)
    persons: list[tuple[int, PersonError]] | None = field(default_factory=list)

    def merge(self, other: EvalPartial) -> EvalPartial:
        """A new summary of both (neither is changed)."""
        persons = None
        if self.persons is not None and other.persons is not None:
            persons = self.persons + other.persons
            if len(persons) > self.limits.persons_json_max:
                persons = None
        return EvalPartial(
            limits=self.limits,
            counts=self.counts + other.counts,
            metrics=self.metrics | other.metrics,
            has_occlusion=self.has_occlusion or other.has_occlusion,
            groups=_merge_maps(self.groups, other.groups, GroupSketch),
            quality=_merge_maps(self.quality, other.quality, lambda: BottomK(self.limits.quality_sample)),
            calibration=_merge_maps(
                self.calibration, other.calibration, lambda: BottomK(self.limits.calibration_sample)
            ),
            calibration_finite=self.calibration_finite + other.calibration_finite,
            persons=persons,
        )

    def add_rows(self, rows: int, has_occlusion: bool) -> None:
        """Counts label rows read (matched or not) and whether their file had an ``occlusion_level`` column."""
        self.counts["label_rows"] += rows
        self.has_occlusion |= has_occlusion

    def add_matched(self, labels: LabelColumns, errors: MatchedErrors, ground_truth_matched: int) -> None:
        """Adds ``N`` matched label rows and their errors.

        Args:
            labels: the matched rows. errors: theirs, row for row.
            ground_truth_matched: distinct ground-truth persons these rows matched (each ground-truth person is
                summarised in one partial only: the bucket that holds it).
        """
        n = len(labels)
        if n == 0:
            return
        evaluated = errors.any_metric & errors.all_finite
        self.counts["matched"] += n
        self.counts["matched_ground_truth"] += ground_truth_matched
        self.counts["non_finite"] += int((~errors.all_finite).sum())
        self.counts["no_metric"] += int((~errors.any_metric).sum())
        self.counts["evaluated"] += int(evaluated.sum())
        self.metrics |= {name for name in METRICS if errors.applies[name].any()}
        tiers = np.asarray(labels.quality_tier, dtype=object)
        levels = np.asarray(labels.occlusion_level or ["unknown"] * n, dtype=object)
        keys = [ALL] + [("tier", t) for t in sorted(set(tiers[evaluated]))]
        keys += [("occlusion", lv) for lv in sorted(set(levels[evaluated]))]
        for key in keys:
            members = evaluated & (True if key == ALL else (tiers if key[0] == "tier" else levels) == key[1])
            if not members.any():
                continue
            group = self.groups.setdefault(key, GroupSketch())
            group.n += int(members.sum())
            for name in METRICS:
                covered = members & errors.applies[name]
                if covered.any():
                    group.metrics.setdefault(name, ValueSketch.empty()).add(errors.values[name][covered])
        hashes = hashes_of(labels.sample_id)
        finite_conf = np.isfinite(labels.confidence)
        for name in METRICS:
            rows = evaluated & errors.applies[name] & finite_conf
            if rows.any():
                sample = self.quality.setdefault(name, BottomK(self.limits.quality_sample))
                sample.add(hashes[rows], labels.order[rows], confidence=labels.confidence[rows],
                           error=errors.values[name][rows])  # fmt: skip
        if self.limits.calibration_sample:
            self._add_calibration(labels, errors, hashes, tiers)
        if self.persons is not None and len(self.persons) + n > self.limits.persons_json_max:
            self.persons = None  # too many for eval_persons.json: the persons Parquet has them
        if self.persons is not None:
            self.persons += [(int(labels.order[i]), _person(labels, errors, i)) for i in range(n)]

    def _add_calibration(
        self, labels: LabelColumns, errors: MatchedErrors, hashes: np.ndarray, tiers: np.ndarray
    ) -> None:
        """Persons with signals, by tier, with every metric (NaN where it does not apply): the fit's metric is
        decided at the end."""
        table = np.stack([errors.values[name] for name in METRICS], axis=1)
        for tier in sorted(set(tiers[labels.has_signals])):
            rows = labels.has_signals & (tiers == tier)
            for j, name in enumerate(METRICS):
                self.calibration_finite[(tier, name)] += int(np.isfinite(table[rows, j]).sum())
            sample = self.calibration.setdefault(tier, BottomK(self.limits.calibration_sample))
            sample.add(hashes[rows], labels.order[rows], signals=labels.signals[rows],
                       signals_null=labels.signals_null[rows], errors=table[rows],
                       confidence=labels.confidence[rows])  # fmt: skip


def _merge_maps(a: dict[Any, Any], b: dict[Any, Any], empty: Any) -> dict[Any, Any]:
    return {k: (a.get(k) or empty()).merge(b.get(k) or empty()) for k in a.keys() | b.keys()}


def _person(labels: LabelColumns, errors: MatchedErrors, i: int) -> PersonError:
    return PersonError(
        sample_id=str(labels.sample_id[i]),
        quality_tier=labels.quality_tier[i],
        confidence=float(labels.confidence[i]),
        occlusion_level=None if labels.occlusion_level is None else labels.occlusion_level[i],
        errors={name: float(errors.values[name][i]) for name in METRICS if errors.applies[name][i]},
    )


# --------------------------------------------------------------------------------------------------------- finish


def _group(sketch: GroupSketch, names: tuple[str, ...]) -> GroupMetrics:
    empty = ValueSketch.empty()
    values = {name: sketch.metrics.get(name, empty) for name in names}
    return GroupMetrics(
        n=sketch.n,
        mean={k: v.mean for k, v in values.items()},
        median={k: v.quantile(0.5) for k, v in values.items()},
        count={k: v.count for k, v in values.items()},
    )


def resolve_metric(error_metric: str, names: tuple[str, ...]) -> str:
    """The metric the confidence quality headline and the calibration use: ``error_metric`` when computed, else
    ``mpjpe_mm`` when computed, else the first computed one."""
    if error_metric in names:
        return error_metric
    return "mpjpe_mm" if "mpjpe_mm" in names else (names[0] if names else error_metric)


def finish(
    partial: EvalPartial,
    *,
    ground_truth_persons: int,
    ground_truth_problems: dict[str, Any],
    error_metric: str,
    sparsification_steps: int,
    labels: str = "",
    ground_truth_uri: str = "",
) -> EvaluationResult:
    """The `EvaluationResult` of a merged summary (``persons`` empty when there were too many to keep)."""
    names = tuple(n for n in METRICS if n in partial.metrics)
    tier_names = {k[1] for k in partial.groups if k[0] == "tier"}
    tiers: list[str] = [
        t.value for t in QualityTier if t.value in tier_names
    ]  # best first, then any other in name order
    tiers += sorted(tier_names - set(tiers))
    levels = sorted(k[1] for k in partial.groups if k[0] == "occlusion")
    quality: dict[str, ConfidenceQuality | None] = {}
    for name in names:
        sample = partial.quality.get(name)
        if sample is None:
            quality[name] = None
            continue
        _, columns = sample.in_order()
        quality[name] = sampled_confidence_quality(
            columns["confidence"], columns["error"], name, sparsification_steps, sample.seen
        )
    c = partial.counts
    counts = {
        "label_rows": c["label_rows"],
        "ground_truth_persons": ground_truth_persons,
        "ground_truth_invalid": sum(ground_truth_problems.get("counts", {}).values()),
        "matched": c["matched"],
        "unmatched_labels": c["label_rows"] - c["matched"],
        "unmatched_ground_truth": ground_truth_persons - c["matched_ground_truth"],
        "non_finite": c["non_finite"],
        "no_metric": c["no_metric"],
        "evaluated": c["evaluated"],
    }
    persons = sorted(partial.persons or [], key=lambda item: item[0])
    if partial.has_occlusion:  # rows of a file without the column are "unknown" once any file has it
        persons = [(o, dataclasses.replace(p, occlusion_level=p.occlusion_level or "unknown")) for o, p in persons]
    return EvaluationResult(
        labels=labels,
        ground_truth=ground_truth_uri,
        counts=counts,
        metrics=names,
        error_metric=resolve_metric(error_metric, names),
        overall=_group(partial.groups.get(ALL, GroupSketch()), names),
        by_tier={t: _group(partial.groups[("tier", t)], names) for t in tiers},
        by_occlusion_level={lv: _group(partial.groups[("occlusion", lv)], names) for lv in levels}
        if partial.has_occlusion
        else None,
        confidence_quality=quality,
        persons=tuple(p for _, p in persons),
        ground_truth_problems=ground_truth_problems,
        estimates=_estimates(partial, names),
    )


def _estimates(partial: EvalPartial, names: tuple[str, ...]) -> dict[str, Any]:
    """What ``eval.json`` says about figures that are estimates (``estimates``)."""
    sketches = [s for g in partial.groups.values() for k, s in g.metrics.items() if k in names]
    estimated = [s for s in sketches if not s.exact]
    samples = [partial.quality[n] for n in names if n in partial.quality]
    return {
        "medians": {
            "exact_up_to": EXACT_CAP,
            "kll_k": KLL_K,
            "estimated": len(estimated),
            "rank_error": max((s.rank_error for s in estimated), default=0.0),
        },
        "confidence_quality": {
            "sample_cap": partial.limits.quality_sample,
            "sampled": any(not s.exact for s in samples),
        },
        "persons_listed": partial.persons is not None,
    }


@dataclass(frozen=True)
class CalibrationSample:
    """What ``fit_confidence`` fits on: ``N`` persons' signals and ``error`` (the resolved metric), in label order.

    Attributes:
        signals: `(N, 12)` `SIGNALS` values; signals_null: `(N, 12)` True where null.
        error: `(N,)` mm, finite. confidence: `(N,)` their stored confidence.
        description: ``{"persons": N, "of": population, "exact": bool, "by_tier": {tier: [taken, of]}, "method"}``.
    """

    signals: np.ndarray
    signals_null: np.ndarray
    error: np.ndarray
    confidence: np.ndarray
    description: dict[str, Any]


def calibration_sample_of(partial: EvalPartial, metric: str) -> CalibrationSample:
    """The persons ``fit_confidence`` fits on: all those with signals and a finite ``metric`` while at most
    ``calibration_sample``; else a stratified sample: each tier contributes in proportion to its size (largest
    remainders), uniformly within the tier (its lowest hashes)."""
    j = METRICS.index(metric)
    cap = partial.limits.calibration_sample
    population = {tier: partial.calibration_finite[(tier, metric)] for tier in sorted(partial.calibration)}
    total = sum(population.values())
    if total <= cap:
        quota = dict(population)
    else:
        shares = {t: cap * n / total for t, n in population.items()}
        quota = {t: math.floor(s) for t, s in shares.items()}
        for t in sorted(shares, key=lambda t: (quota[t] - shares[t], t))[: cap - sum(quota.values())]:
            quota[t] += 1
    parts, taken_by_tier = [], {}
    for tier, sample in sorted(partial.calibration.items()):
        finite = np.isfinite(sample.columns["errors"][:, j])  # sample is in hash order: the first are uniform
        taken = np.flatnonzero(finite)[: quota.get(tier, 0)]
        taken_by_tier[tier] = int(taken.size)
        parts.append((sample.order[taken], {k: v[taken] for k, v in sample.columns.items()}))
    order = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    by_order = np.argsort(order, kind="stable")

    def column(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if not parts:
            return np.empty((0, *shape))
        return np.concatenate([p[1][name] for p in parts])[by_order]

    taken_total = int(order.shape[0])
    return CalibrationSample(
        signals=column("signals", (len(SIGNALS),)),
        signals_null=column("signals_null", (len(SIGNALS),)).astype(bool),
        error=column("errors", (len(METRICS),))[:, j],
        confidence=column("confidence", ()),
        description={
            "persons": taken_total,
            "of": total,
            "exact": taken_total == total,
            "by_tier": {t: [taken_by_tier.get(t, 0), population[t]] for t in population},
            "method": "every person with signals and a finite error while at most calibration.max_persons; else "
            "stratified by quality_tier in proportion to each tier's size, uniform within a tier (lowest 64-bit "
            "hash of sample_id)",
        },
    )

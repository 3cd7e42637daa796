"""The join of reviewed persons to their label rows (``dpmesh-eval review=``): one `ReviewUnit` (a label shard and
its decided persons) in, the persons found with what the figures and the fit need out.

A shard's ``annotations/`` and ``rejected/`` files are read for their ``sample_id``, ``model_id``, ``confidence``,
``quality_tier``, ``occlusion_level`` and signal columns only, and only their decided rows are kept. A decision
that names a model other than the row's is counted (``other_model``) and left out, as is one whose person the shard
does not hold (``not_found``): ``decided = measured + not_found + other_model`` per shard. Values are read as the
ground-truth evaluation reads them (`pipelines.eval.label_columns`): a malformed confidence is NaN (band
``unscored``), a file without the signal columns gives persons without signals (measured, but not fitted on).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from pipelines.common.label_stats import review_stratum
from pipelines.config.storage import StorageConfig
from pipelines.eval.eval_shard import EVAL_METRICS
from pipelines.eval.ground_truth_files import parquet_file
from pipelines.eval.label_columns import SIGNALS, read_label_table
from pipelines.eval.review_plan import ReviewUnit
from pipelines.storage import Storage
from schemas.annotations import REVIEW_ACCEPT


_COLUMNS = ("sample_id", "model_id", "confidence", "quality_tier", "occlusion_level", *SIGNALS)
JOIN_COUNTS = ("decided", "measured", "not_found", "other_model")
"""Per-unit counts of the join (summed over units: ``decided = measured + not_found + other_model``)."""


@dataclass(frozen=True)
class ReviewedPerson:
    """A reviewed person found in the labels.

    Attributes:
        sample_id, shard: who. accepted: the reviewer's decision (True: accept).
        stratum: the review stratum the page drew the person from (the decision's; the row's own when the decision
            does not say). quality_tier: the row's. confidence: the row's (NaN when not a number).
        signals: `(12,)` float64 `SIGNALS` values, NaN where null; signals_null: `(12,)` True where null;
            has_signals: whether the row's file has every signal column.
    """

    sample_id: str
    shard: str
    accepted: bool
    stratum: str
    quality_tier: str
    confidence: float
    signals: np.ndarray
    signals_null: np.ndarray
    has_signals: bool


@dataclass
class ReviewedSet:
    """Reviewed persons found so far and the join's counts (`JOIN_COUNTS`); gathered in any order."""

    persons: list[ReviewedPerson] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def in_order(self) -> list[ReviewedPerson]:
        """The persons by shard then sample id: the same order whatever order units were joined in."""
        return sorted(self.persons, key=lambda p: (p.shard, p.sample_id))


def join_unit(storage: Storage, unit: ReviewUnit) -> ReviewedSet:
    """The reviewed persons of one shard (module docstring)."""
    wanted = {d.sample_id: d for d in unit.decisions}
    out = ReviewedSet()
    found: set[str] = set()
    for uri in unit.files:
        with parquet_file(storage, uri) as parquet:
            columns = [c for c in _COLUMNS if c in parquet.schema_arrow.names]
            table = parquet.read(columns=columns)
        # Matched in Python, not by an Arrow kernel: a hand-edited file may type sample_id otherwise (no match then).
        keep = [isinstance(v, str) and v in wanted for v in table["sample_id"].to_pylist()]
        table = pa.Table.from_arrays(table.columns, names=table.column_names).filter(pa.array(keep, pa.bool_()))
        if not table.num_rows:
            continue
        rows = read_label_table(table, np.zeros(table.num_rows, np.int64), [unit.shard] * table.num_rows)
        models = table["model_id"].to_pylist() if "model_id" in table.column_names else [None] * table.num_rows
        levels = table["occlusion_level"].to_pylist() if "occlusion_level" in table.column_names else None
        for i, sample_id in enumerate(rows.sample_id):
            decision = wanted[sample_id]
            if sample_id in found:  # a person in both folders (a hand-edited output): the first is the row
                continue
            found.add(sample_id)
            if decision.model_id is not None and models[i] != decision.model_id:
                out.counts["other_model"] += 1
                continue
            confidence = float(rows.confidence[i])
            out.persons.append(
                ReviewedPerson(
                    sample_id=sample_id,
                    shard=unit.shard,
                    accepted=decision.decision == REVIEW_ACCEPT,
                    stratum=decision.stratum or review_stratum(confidence, None if levels is None else levels[i]),
                    quality_tier=rows.quality_tier[i],
                    confidence=confidence,
                    signals=rows.signals[i],
                    signals_null=rows.signals_null[i],
                    has_signals=bool(rows.has_signals[i]),
                )
            )
    out.counts["decided"] += len(wanted)
    out.counts["measured"] += len(out.persons)
    out.counts["not_found"] += len(wanted) - len(found)
    return out


class JoinReviewedFn(beam.DoFn):
    """In: a `ReviewUnit`. Out: its `ReviewedSet`."""

    def __init__(self, storage: StorageConfig) -> None:
        self._storage_config = storage

    def setup(self) -> None:
        self._storage = Storage(self._storage_config)

    def process(self, unit: ReviewUnit) -> Iterator[ReviewedSet]:
        joined = join_unit(self._storage, unit)
        Metrics.counter(EVAL_METRICS, "reviewed_persons_found").inc(joined.counts["measured"])
        yield joined


class GatherReviewed(beam.CombineFn):  # type: ignore[misc]
    """All units' `ReviewedSet` in one (bounded by the review files' decisions: a page holds a few hundred)."""

    def create_accumulator(self) -> ReviewedSet:
        return ReviewedSet()

    # In place (Beam lets a CombineFn change its accumulators): a new list per shard would copy every person found
    # so far once per shard.
    def add_input(self, accumulator: ReviewedSet, joined: ReviewedSet) -> ReviewedSet:
        accumulator.persons.extend(joined.persons)
        accumulator.counts.update(joined.counts)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[ReviewedSet]) -> ReviewedSet:
        merged = ReviewedSet()
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator: ReviewedSet) -> ReviewedSet:
        return accumulator

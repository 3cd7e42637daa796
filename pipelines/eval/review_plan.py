"""Planning the measurement of reviews on the driver (``dpmesh-eval review=<file...>``): the files read, checked and
combined, their label run checked against ``input.labels``, the draw's populations merged, and the units of the
join: one per label shard a decision names.

* **Files** (`pipelines.common.reviews`): each is parsed and checked (a file that is not a review is a one-line
  configuration error); the files' decisions are combined; a person two files decide differently is a conflict,
  left out of every figure and counted (a measurement never picks one reviewer's word over another's).
* **Label run**: a review of another label run is refused unless every person it decided is in ``input.labels``
  with the same sample id, shard and model (`pipelines.common.reviews.check_label_runs`, which reads the
  ``sample_id`` and ``model_id`` columns of those shards only).
* **Populations**: each file's ``sample`` gives per review stratum the rows of the label output in it; files that
  give one stratum two populations sampled different outputs and are refused together.
* **Units** (`ReviewUnit`): one per shard named by an agreed decision, holding that shard's label files and its
  decided persons; a decision naming a shard the labels do not have is counted (``not_in_input``), not read.
  Only the shards decisions name are ever read (`pipelines.eval.review_join`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipelines.common.label_set import read_summary
from pipelines.common.reviews import (
    CONFLICT_EXAMPLES,
    ReviewFile,
    check_label_runs,
    combine_reviews,
    label_run_of,
    read_reviews,
)
from pipelines.config import ConfigError
from pipelines.eval.plan import LabelFile
from pipelines.storage import Storage
from schemas.annotations import REVIEW_DECISIONS


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewedDecision:
    """One agreed decision as the join needs it: who, by which model (None: the file does not say), ``accept`` or
    ``reject``, and the review stratum the page drew the person from (None when the file does not say)."""

    sample_id: str
    model_id: str | None
    decision: str
    stratum: str | None


@dataclass(frozen=True)
class ReviewUnit:
    """One label shard's reviewed persons: the shard, its label files (``annotations/``, ``rejected/``: those that
    exist) and the decisions naming it."""

    shard: str
    files: tuple[str, ...]
    decisions: tuple[ReviewedDecision, ...]


@dataclass(frozen=True)
class ReviewPlan:
    """What the review measurement is built from.

    Attributes:
        units: the join's units, in shard order.
        populations: review stratum -> rows of the label output in it (from the files' ``sample``; empty when no
            file has one: then no figure is weighted).
        drawn: review stratum -> persons the page drew from it, when every file with a draw has the same one
            (several reviewers of one page); else None.
        record: what ``eval_reviews.json`` records of the files and the plan's counts (`plan_reviews`).
    """

    units: tuple[ReviewUnit, ...]
    populations: dict[str, int]
    drawn: dict[str, int] | None
    record: dict[str, Any]


def _populations(files: list[ReviewFile]) -> tuple[dict[str, int], dict[str, int] | None]:
    """The files' strata populations merged, and the common draw (module docstring).

    Raises:
        ConfigError: two files giving one stratum different populations.
    """
    populations: dict[str, tuple[int, str]] = {}
    for f in files:
        for stratum, (rows, _) in f.sample.strata.items():
            if stratum in populations and populations[stratum][0] != rows:
                earlier, where = populations[stratum]
                raise ConfigError(
                    f"review: {where!r} and {f.uri!r} give the stratum {stratum} {earlier} and {rows} rows: they "
                    "sampled different label outputs; measure each review on the labels it was made on"
                )
            populations.setdefault(stratum, (rows, f.uri))
    draws = {tuple(sorted((s, d) for s, (_, d) in f.sample.strata.items())) for f in files if f.sample.strata}
    drawn = {s: d for s, d in next(iter(draws))} if len(draws) == 1 else None
    return {s: rows for s, (rows, _) in populations.items()}, drawn


def plan_reviews(storage: Storage, labels: str, uris: list[str], label_files: list[LabelFile]) -> ReviewPlan:
    """Plans the measurement of the reviews at ``uris`` on the label output ``labels`` (whose ``annotations/`` and
    ``rejected/`` files are ``label_files``): module docstring.

    Raises:
        ConfigError: a missing file or one that is not a review (naming it and the field), a review of another label
            run whose persons are not in ``labels`` as reviewed, or files sampled from different outputs.
    """
    files = read_reviews(storage, uris)
    review_set = combine_reviews(files)
    shards: dict[str, list[str]] = {}
    for f in label_files:
        shards.setdefault(f.name, []).append(f.uri)
    run = label_run_of(labels, read_summary(storage, labels))
    verdicts = check_label_runs(storage, labels, run, set(shards), files)
    populations, drawn = _populations(files)
    units = []
    not_in_input = 0
    for shard, by_id in sorted(review_set.decisions.items()):
        if shard not in shards:
            not_in_input += len(by_id)
            continue
        decided = tuple(
            ReviewedDecision(d.sample_id, d.model_id, d.decision, d.stratum) for _, d in sorted(by_id.items())
        )
        units.append(ReviewUnit(shard, tuple(shards[shard]), decided))
    agreed = Counter(d.decision for by_id in review_set.decisions.values() for d in by_id.values())
    record = {
        "label_run": run.to_json(),
        "files": [
            {
                **f.record(verdicts[f.uri]),
                "sample": {"seed": f.sample.seed, "size": f.sample.size, "strata": len(f.sample.strata)},
            }
            for f in files
        ],
        "counts": {
            "decisions": sum(len(f.decisions) for f in files),
            "persons": review_set.size + len(review_set.conflicts),
            "conflicts": len(review_set.conflicts),
            "agreed": review_set.size,
            "agreed_accept": agreed.get(REVIEW_DECISIONS[0], 0),
            "agreed_reject": agreed.get(REVIEW_DECISIONS[1], 0),
            "not_in_input": not_in_input,
        },
        "conflicts": [c.to_json() for c in review_set.conflicts[:CONFLICT_EXAMPLES]],
    }
    if review_set.conflicts:
        logger.warning("%d persons decided differently by the review files: left out of the review figures",
                       len(review_set.conflicts))  # fmt: skip
    logger.info("%d reviewed persons in %d label shards (%d in shards the labels lack)",
                review_set.size - not_in_input, len(units), not_in_input)  # fmt: skip
    return ReviewPlan(tuple(units), populations, drawn, record)

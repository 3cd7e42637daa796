"""The ``dpmesh-refilter`` app config: re-split labels by a new filter, and apply people's reviews."""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pipelines.config.errors import ConfigError
from pipelines.config.label import FilterConfig
from pipelines.config.runner import RunnerConfig
from pipelines.config.storage import StorageConfig


class ReviewConflicts(str, Enum):
    """What ``dpmesh-refilter`` does when review files disagree about a person (one accepts, another rejects)."""

    refuse = "refuse"  # stop at launch, naming the conflicts: nothing is written
    skip = "skip"  # apply the other decisions; those persons keep the filter's verdict, listed in the summary


@dataclass
class RefilterJobConfig:
    """The ``dpmesh-refilter`` app.

    Attributes:
        input: The output folder of a ``dpmesh-label`` run (its ``annotations/``, ``rejected/``, ``errors/``,
            ``_done/``), or of an earlier ``dpmesh-refilter``.
        output: Where the re-split labels go (a new folder; the input is never modified).
        review: ``review.json`` files saved from a ``dpmesh-report review=<n>`` page (local, ``s3://`` or ``gs://``;
            format in `pipelines.common.reviews`): a reviewed reject is rejected (reason ``reviewed_reject``), a
            reviewed accept kept whatever its score. A review of another label run is refused unless every person
            it decided is still in ``input`` (same sample id, shard and model).
        review_conflicts: When the files disagree about a person: ``refuse`` (default) or ``skip`` those persons
            (each listed in ``_summary.json``); never resolved silently.
    """

    input: str = "???"
    output: str = "???"
    overwrite: bool = False
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    # Typed Any so that one file is ``review=r.json`` and several ``review=[r1.json,r2.json]`` (a list field would
    # refuse the former); __post_init__ makes it a list of strings either way.
    review: Any = field(default_factory=list)
    review_conflicts: ReviewConflicts = ReviewConflicts.refuse
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self.review = review_files(self.review)


def review_files(review: Any) -> list[str]:
    """``review=`` as a list of files: one file (``review=r.json``) or a list (``review=[a,b]``), each named once.

    Raises:
        ConfigError: anything else, or a file named twice.
    """
    files = [review] if isinstance(review, str) else review
    if not isinstance(files, list | tuple) or not all(isinstance(f, str) and f for f in files):
        raise ConfigError(f"review={review!r}: give a review file (review=r.json) or a list (review=[a,b])")
    if len(set(files)) != len(files):
        raise ConfigError(f"review={list(files)!r} names a file twice")
    return list(files)

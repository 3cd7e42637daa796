"""Planning an evaluation on the driver: the label files (the units, in groups), and the ground truth, checked and
partitioned by key into the join's buckets.

* **Label files.** ``<labels>/annotations/*.parquet`` then (unless excluded) ``<labels>/rejected/*.parquet``, in
  name order; consecutive files form a `LabelGroup` (at most `GROUP_BYTES` of Parquet and `GROUP_FILES` files):
  the unit the pipeline splits by bucket, so small shards do not each make a file per bucket.
* **Ground truth, pass 1** (`scan_ground_truth`, nothing written): every row is checked (problems counted, a few
  quoted), and two persons with one join key are refused at launch, naming both rows. Memory: one batch of rows,
  plus a 64-bit hash and a position per usable person (20 bytes) for the duplicate check.
* **Buckets.** ``ceil(persons / bucket_persons)`` (`pipelines.eval.buckets` says what is hashed); one bucket holds
  at most about ``bucket_persons`` ground-truth persons, which bounds a join worker's memory.
* **Ground truth, pass 2** (`partition_ground_truth`, only with more than one bucket): each batch's persons are
  written to ``<output>/_work/<run>/ground_truth/b<bucket>/s<file>-<k>.parquet`` in the documented layout. With
  one bucket the join reads the ground-truth files themselves.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.common.label_set import ROW_FOLDERS
from pipelines.config import ConfigError
from pipelines.eval.buckets import ONE_BUCKET, bucket_of, ground_truth_identity, identity_rule
from pipelines.eval.ground_truth import GroundTruthPerson, duplicate_error
from pipelines.eval.ground_truth_files import list_sources, read_batches
from pipelines.eval.label_columns import order_key
from pipelines.eval.samples import stable_hash64
from pipelines.eval.work_files import BucketWriters
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)

WORK_FOLDER = "_work"
GROUP_BYTES = 32 << 20  # label Parquet per group: its rows are held while split by bucket
GROUP_FILES = 1000
LABEL_BATCH_ROWS = 8192  # label rows read and joined at once (with the bucket, what bounds a join worker's memory)
PROBLEM_EXAMPLES = 5  # messages of left-out ground-truth rows kept for eval.json (the counts cover every row)


@dataclass(frozen=True)
class LabelFile:
    """One label Parquet file: where, its name (the shard), and its place in the output (`order_key`)."""

    uri: str
    name: str
    folder_rank: int
    file_rank: int
    size: int = 0

    @property
    def order_base(self) -> int:
        """`order_key` of the file's first row."""
        return int(order_key(self.folder_rank, self.file_rank, 0))


@dataclass(frozen=True)
class LabelGroup:
    """Consecutive label files: one unit of the split step."""

    index: int
    files: tuple[LabelFile, ...]


@dataclass(frozen=True)
class GroundTruthPlan:
    """The checked ground truth and how the join finds it.

    Attributes:
        uri: ``input.ground_truth``. sources: its files.
        persons: usable persons. problems: ``{"counts": {reason: n}, "examples": [message, ...]}`` of the others.
        rule: the bucket identity rule (`pipelines.eval.buckets`). buckets: how many.
        parts: bucket -> the files holding its persons (the sources themselves with one bucket).
    """

    uri: str
    sources: tuple[str, ...]
    persons: int
    problems: dict[str, Any]
    rule: str
    buckets: int
    parts: dict[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalPlan:
    """Everything the pipeline is built from: the label groups, the ground truth, the run's work folder."""

    groups: tuple[LabelGroup, ...]
    ground_truth: GroundTruthPlan
    work: str

    @property
    def label_files(self) -> int:
        return sum(len(g.files) for g in self.groups)


def list_label_files(storage: Storage, labels: str, include_rejected: bool) -> list[LabelFile]:
    """The label Parquet files of a ``dpmesh-label`` / ``dpmesh-refilter`` output, in reading order."""
    files = []
    for folder_rank, folder in enumerate(ROW_FOLDERS if include_rejected else ROW_FOLDERS[:1]):
        listed = [info for info in storage.list_top(join(labels, folder)) if info.uri.endswith(".parquet")]
        for file_rank, info in enumerate(listed):
            name = info.uri.rsplit("/", 1)[-1].removesuffix(".parquet")
            files.append(LabelFile(info.uri, name, folder_rank, file_rank, info.size))
    return files


def group_label_files(files: list[LabelFile]) -> list[LabelGroup]:
    """Consecutive files, at most `GROUP_BYTES` and `GROUP_FILES` per group (a larger file is a group alone)."""
    groups: list[list[LabelFile]] = []
    size = 0
    for f in files:
        if not groups or len(groups[-1]) >= GROUP_FILES or size + f.size > GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += f.size
    return [LabelGroup(i, tuple(g)) for i, g in enumerate(groups)]


@dataclass
class _Scan:
    persons: int = 0
    kinds: set[int] = field(default_factory=set)
    problem_counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)
    sources: list[np.ndarray] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)


def scan_ground_truth(storage: Storage, sources: list[str]) -> tuple[int, set[int], dict[str, Any]]:
    """Pass 1: ``(usable persons, join kinds used, problems)`` of the ground-truth ``sources``.

    Raises:
        ValueError: a file that cannot be read as its format, or two persons with one join key
            (`pipelines.eval.ground_truth.DuplicateGroundTruthError`, naming both rows).
    """
    scan = _Scan()
    for s, uri in enumerate(sources):
        for batch in read_batches(storage, uri):
            table = batch.persons
            scan.persons += len(table)
            scan.kinds |= set(np.unique(table.kind).tolist())
            scan.problem_counts.update(p.reason for p in batch.problems)
            room = PROBLEM_EXAMPLES - len(scan.examples)
            scan.examples += [str(p) for p in batch.problems[:room]]
            scan.hashes.append(np.fromiter((stable_hash64(f"{k}\0{key}\0{i}") for k, key, i in table.join_keys()),
                                           dtype=np.uint64, count=len(table)))  # fmt: skip
            scan.sources.append(np.full(len(table), s, dtype=np.int32))
            scan.rows.append(table.row)
    _refuse_duplicates(storage, sources, scan)
    problems = {"counts": dict(scan.problem_counts), "examples": scan.examples}
    return scan.persons, scan.kinds, problems


def _refuse_duplicates(storage: Storage, sources: list[str], scan: _Scan) -> None:
    """Raises the duplicate refusal for the first person (in reading order) whose key an earlier one has."""
    if not scan.hashes:
        return
    hashes = np.concatenate(scan.hashes)
    position = np.arange(hashes.size)
    by_hash = np.lexsort((position, hashes))
    repeats = np.flatnonzero(hashes[by_hash][1:] == hashes[by_hash][:-1]) + 1
    if repeats.size == 0:
        return
    source, row = np.concatenate(scan.sources), np.concatenate(scan.rows)
    # For each repeated hash, its first occurrence; then the repeat read first. A 64-bit hash collision between two
    # different keys is told apart by comparing the keys themselves.
    first_of: dict[int, int] = {}
    for i in range(by_hash.size):
        first_of.setdefault(int(hashes[by_hash[i]]), int(by_hash[i]))
    for second in sorted(int(by_hash[r]) for r in repeats):
        first = first_of[int(hashes[second])]
        a, b = (_person_at(storage, sources, int(source[p]), int(row[p])) for p in (first, second))
        if a[0] == b[0]:
            kind, key, idx = a[0]
            raise duplicate_error(kind, key, idx, a[1], b[1])


def _person_at(storage: Storage, sources: list[str], source: int, row: int) -> tuple[tuple[int, str, int], str]:
    """``((kind, key, person_idx), origin)`` of the person read at ``row`` of source ``source``."""
    uri = sources[source]
    for batch in read_batches(storage, uri):
        found = np.flatnonzero(batch.persons.row == row)
        if found.size:
            one = batch.persons.take(found[:1])
            origin = f"{uri} row {row}"
            if uri.endswith(".pkl"):
                from pipelines.eval.pw3d import sequence_file_persons

                read = sequence_file_persons(uri, storage.read_bytes(uri))
                origin = [p for p in read if isinstance(p, GroundTruthPerson)][row].origin
            return next(one.join_keys()), origin
    raise AssertionError(f"{uri}: no person at row {row}")


def partition_ground_truth(
    storage: Storage, sources: list[str], rule: str, buckets: int, work: str
) -> dict[int, tuple[str, ...]]:
    """Pass 2: the usable persons of ``sources`` written by bucket under ``<work>/ground_truth/``; returns each
    bucket's files."""
    parts: dict[int, list[str]] = {}
    for s, uri in enumerate(sources):
        with BucketWriters(storage, join(work, "ground_truth"), f"s{s:05d}") as writers:
            for batch in read_batches(storage, uri):
                table = batch.persons
                of = np.fromiter(
                    (bucket_of(ground_truth_identity(rule, k, key), buckets) for k, key, _ in table.join_keys()),
                    dtype=np.int64,
                    count=len(table),
                )
                for b in np.unique(of).tolist():
                    writers.write(b, table.take(np.flatnonzero(of == b)).to_arrow())
            for b, uris in writers.finish().items():
                parts.setdefault(b, []).extend(uris)
    return {b: tuple(uris) for b, uris in sorted(parts.items())}


def plan_evaluation(
    storage: Storage, labels: str, ground_truth: str, include_rejected: bool, bucket_persons: int, work: str
) -> EvalPlan:
    """Plans a run (module docstring): ground truth checked first (its refusals come before anything else is read),
    then the label files listed, then, with more than one bucket, the ground truth partitioned under ``work``.

    Raises:
        ConfigError: no ground-truth file, one that cannot be read, a repeated join key (naming both rows); no
            label file. Each names the key and the value.
    """
    try:
        sources = list_sources(storage, ground_truth)
        persons, kinds, problems = scan_ground_truth(storage, sources)
    except ValueError as exc:  # a pickle refused by the restricted loader, a repeated join key, a damaged file
        raise ConfigError(f"input.ground_truth={ground_truth!r}: {exc}") from exc
    files = list_label_files(storage, labels, include_rejected)
    if not files:
        raise ConfigError(f"input.labels={labels!r} holds no label rows (annotations/, rejected/)")
    rule = identity_rule(kinds)
    buckets = 1 if rule == ONE_BUCKET else max(1, math.ceil(persons / bucket_persons))
    if rule == ONE_BUCKET and persons > bucket_persons:
        logger.warning(
            "the ground truth mixes image_path keys with sample_id / image_key keys: its %d persons are joined in one "
            "bucket (memory grows with them); evaluate each kind in its own run to bound it",
            persons,
        )
    parts = {0: tuple(sources)} if buckets == 1 else partition_ground_truth(storage, sources, rule, buckets, work)
    plan = GroundTruthPlan(ground_truth, tuple(sources), persons, problems, rule, buckets, parts)
    logger.info(
        "%d label files in %d groups; %d ground-truth persons (%d left out) in %d buckets",
        len(files), len(group_label_files(files)), persons, sum(problems["counts"].values()), buckets,
    )  # fmt: skip
    return EvalPlan(tuple(group_label_files(files)), plan, work)

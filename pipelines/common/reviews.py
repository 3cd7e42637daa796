"""People's reviews of labels: the ``review.json`` format, reading and checking it, conflicts between files, the
label run a review belongs to, and applying decisions to rows.

A ``dpmesh-report review=<n>`` page lets a reviewer accept or reject persons and saves their decisions as
``review.json``; ``dpmesh-refilter review=<file...>`` honours them (and, later, ``dpmesh-export``: everything here
takes plain values, no job's config).

**The format** (``format`` :data:`REVIEW_FORMAT`, ``version`` :data:`REVIEW_VERSION`), one JSON object::

    {"format": "dpmesh-review", "version": 1,
     "label_run": {"labels": <label output URI>, "config_hash": <its summary's> | null,
                   "pipeline_version": <its summary's> | null},      # what was reviewed (:class:`LabelRun`)
     "reviewer": <name, may be "">, "saved_at": <ISO 8601 UTC time>,
     "sample": {"seed": int, "size": int, "strata": {stratum: {"rows": int, "drawn": int}}},   # optional: the draw
     "decisions": [{"sample_id": "<key>_p<n>", "shard": "shard-NNNNNN", "model_id": <the row's> | null,
                    "decision": "accept" | "reject", "reason": <one of REJECT_REASONS, rejects only> | null,
                    "time": <ISO 8601 UTC> | null, "stratum": <the row's review stratum> | null}, ...]}

A person is decided at most once per file. Unknown keys, repeated keys, another format or version, a sample id
outside the key grammar, a shard that is not one path segment, an unknown decision or reason, a ``sample`` whose
stratum is not a review stratum (`pipelines.common.label_stats.REVIEW_STRATA`) or whose counts are not integers
>= 0: the file is refused with one line naming it and the field (:class:`ReviewError`; the jobs raise it as a
``ConfigError``). ``sample`` is the draw (:class:`ReviewSample`): each stratum's population (``rows``, every
accepted and rejected row of the label output in it) and how many persons the page drew from it, so a rate found
on the sample can be weighted back to the output (``dpmesh-eval review=``).

**Decisions on rows** (:func:`apply_decisions`): a reviewed reject goes to ``rejected/`` with the reason
:data:`REVIEWED_REJECT` added; a reviewed accept is kept whatever its score, in the tier its confidence earns
(`dpmesh_core.confidence.graded_tier`), with no reasons; either is written in the row's ``review`` column, so a
later refilter of those rows carries it (a new file's decision replaces a carried one, and is counted). One
exception: a label whose signals are not finite (reason ``non_finite_output``) is never kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dpmesh_core.confidence import NON_FINITE_OUTPUT, FilterThresholds, graded_tier
from dpmesh_core.json_values import refusing_repeated_keys, show_value
from pipelines.common.label_set import ROW_FOLDERS
from pipelines.common.label_stats import REVIEW_STRATA
from pipelines.common.safe_paths import UnsafeName, check_segment, is_valid_key, safe_join, validate_sample_id
from pipelines.config import ConfigError
from pipelines.storage import ObjectNotFoundError, Storage
from pipelines.storage.uri import parse_uri
from schemas import ANNOTATION_SCHEMA
from schemas.annotations import REVIEW_DECISIONS, REVIEW_REJECT, REVIEWED_REJECT, QualityTier


logger = logging.getLogger(__name__)

REVIEW_FORMAT = "dpmesh-review"
REVIEW_VERSION = 1
REJECT_REASONS: dict[str, str] = {
    "misaligned": "the mesh does not lie over the person",
    "wrong_pose": "limbs or body orientation are wrong",
    "wrong_shape": "the body shape is wrong",
    "wrong_person": "fitted to another person, or to several",
    "not_a_person": "not a person, or too little of one to label",
    "other": "something else",
}
"""The reasons a reviewer may give a reject (optional), in the order the page numbers them (keys 1-6)."""
MAX_DECISIONS = 100_000
"""The most decisions one file may hold (a page holds at most a few hundred persons; this bounds a hand-made file)."""
_MAX_TEXT = 200  # characters of a reviewer name, time or stratum: a bound on what a file can put in a summary
_TOP_KEYS = {"format", "version", "label_run", "reviewer", "saved_at", "sample", "decisions"}
_REQUIRED_TOP = _TOP_KEYS - {"sample"}
_DECISION_KEYS = {"sample_id", "shard", "model_id", "decision", "reason", "time", "stratum"}
_REQUIRED_DECISION = {"sample_id", "shard", "decision"}
_RUN_KEYS = {"labels", "config_hash", "pipeline_version"}
_SAMPLE_KEYS = {"seed", "size", "strata"}
_STRATUM_KEYS = {"rows", "drawn"}
SAME_RUN = "same label run"
PERSONS_MATCH = "another label run whose reviewed persons are all in the input"
CONFLICT_EXAMPLES = 100
"""Conflicting persons listed in a summary (the count is always whole)."""


class ReviewError(ValueError):
    """A review file this code does not read: one line naming the file and the field."""


@dataclasses.dataclass(frozen=True)
class LabelRun:
    """The label output a review was made on: its location and its summary's config hash and pipeline version.

    Two label runs with the same config over different corpora share a config hash, so the location is part of the
    identity; an output that moved keeps its hash but not its location, which is why a review of "another" run is
    still applied when every person it decided is found in the input (`check_label_runs`).
    """

    labels: str
    config_hash: str | None
    pipeline_version: str | None

    def to_json(self) -> dict[str, str | None]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """16 hex digits naming this run (the review page keeps its decisions in the browser under it)."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _location(uri: str) -> str:
    """``uri`` as an identity compares it: no trailing ``/``; a local path absolute, links resolved."""
    stripped = uri.rstrip("/") or uri
    try:
        parsed = parse_uri(stripped)
    except ValueError:
        return stripped
    return os.path.realpath(parsed.key or ".") if parsed.scheme == "file" else stripped


def label_run_of(labels: str, summary: Mapping[str, Any] | None) -> LabelRun:
    """The identity of the label output at ``labels`` from its ``_summary.json`` (None for a run that died before
    writing one: then only its location is known)."""
    summary = summary or {}

    def text(name: str) -> str | None:
        value = summary.get(name)
        return value if isinstance(value, str) else None

    return LabelRun(_location(labels), text("config_hash"), text("pipeline_version"))


def browser_storage_key(run: LabelRun) -> str:
    """Where a review page keeps its decisions in the browser (``localStorage``): one key per label run, so a page
    made again for the same labels (another seed, another size) finds the decisions made so far."""
    return f"{REVIEW_FORMAT}/v{REVIEW_VERSION}/{run.key()}"


def review_header(run: LabelRun, sample: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a ``review.json`` a review page knows when it is made (its script adds ``reviewer``,
    ``saved_at`` and ``decisions``): one home for the format's name, version and identity fields."""
    return {"format": REVIEW_FORMAT, "version": REVIEW_VERSION, "label_run": run.to_json(), "sample": dict(sample)}


@dataclasses.dataclass(frozen=True)
class Decision:
    """One person's review: ``decision`` is ``accept`` or ``reject``; ``reason`` (a key of :data:`REJECT_REASONS`)
    only for a reject; ``model_id`` the reviewed row's (None when the file does not say)."""

    sample_id: str
    shard: str
    model_id: str | None
    decision: str
    reason: str | None = None
    time: str | None = None
    stratum: str | None = None


@dataclasses.dataclass(frozen=True)
class ReviewSample:
    """How a review page drew its persons: the seed, how many it shows (``size``), and per review stratum
    ``(rows, drawn)``: the stratum's population in the label output (accepted and rejected rows) and the persons
    drawn from it. Empty ``strata`` when the file does not say (a hand-made file)."""

    seed: int | None = None
    size: int | None = None
    strata: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ReviewFile:
    """A parsed ``review.json``: ``uri`` and ``sha256`` of its bytes, what it reviewed, its decisions and the draw
    they were made on (``sample``; empty when the file has none)."""

    uri: str
    sha256: str
    label_run: LabelRun
    reviewer: str
    saved_at: str
    decisions: tuple[Decision, ...]
    sample: ReviewSample = dataclasses.field(default_factory=ReviewSample, compare=False)

    def record(self, matched: str | None) -> dict[str, Any]:
        """What a job's record says of the file: where it is, who saved it when, what it reviewed, how it matched
        the labels (``matched``: the verdict of :func:`check_label_runs`), its decisions by kind and reject reasons."""
        return {
            "uri": self.uri,
            "sha256": self.sha256,
            "reviewer": self.reviewer,
            "saved_at": self.saved_at,
            "label_run": self.label_run.to_json(),
            "matched": matched,
            "decisions": {kind: sum(d.decision == kind for d in self.decisions) for kind in REVIEW_DECISIONS},
            "reject_reasons": dict(sorted(Counter(d.reason for d in self.decisions if d.reason).items())),
        }


def _fail(uri: str, message: str) -> ReviewError:
    return ReviewError(f"{uri}: {message}")


def _text(uri: str, where: str, value: Any, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _fail(uri, f"{where} is {show_value(value)}, not a string")
    if len(value) > _MAX_TEXT:
        raise _fail(uri, f"{where} is longer than {_MAX_TEXT} characters")
    return value


def _keys(uri: str, where: str, document: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise _fail(uri, f"{where} is {show_value(document)}, not a JSON object")
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise _fail(uri, f"{where} has unknown key {unknown[0]!r} (a {REVIEW_FORMAT} v{REVIEW_VERSION} file has "
                         f"{', '.join(sorted(allowed))})")  # fmt: skip
    missing = sorted(required - set(document))
    if missing:
        raise _fail(uri, f"{where} lacks {missing[0]!r}")
    return document


def _decision(uri: str, index: int, entry: Any) -> Decision:
    where = f"decisions[{index}]"
    entry = _keys(uri, where, entry, _DECISION_KEYS, _REQUIRED_DECISION)
    try:  # both checks: the grammar, and one path segment (the grammar alone admits a trailing newline)
        sample_id = check_segment(validate_sample_id(entry["sample_id"]), "sample_id")
    except UnsafeName as exc:
        raise _fail(uri, f"{where}.sample_id: {exc}") from exc
    shard = entry["shard"]
    if not is_valid_key(shard):  # it names a file of the label output: one segment of the key grammar
        raise _fail(uri, f"{where}.shard {show_value(shard)} is not a shard name (such as 'shard-000001')")
    decision = entry["decision"]
    if decision not in REVIEW_DECISIONS:
        raise _fail(uri, f"{where}.decision is {show_value(decision)}, not one of {', '.join(REVIEW_DECISIONS)}")
    reason = entry.get("reason")
    if reason is not None and (decision != REVIEW_REJECT or reason not in REJECT_REASONS):
        expected = f"null or one of {', '.join(REJECT_REASONS)}" if decision == REVIEW_REJECT else "null for accept"
        raise _fail(uri, f"{where}.reason is {show_value(reason)}: expected {expected}")
    return Decision(
        sample_id=sample_id,
        shard=shard,
        model_id=_text(uri, f"{where}.model_id", entry.get("model_id"), nullable=True),
        decision=decision,
        reason=reason,
        time=_text(uri, f"{where}.time", entry.get("time"), nullable=True),
        stratum=_text(uri, f"{where}.stratum", entry.get("stratum"), nullable=True),
    )


def _count(uri: str, where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(uri, f"{where} is {show_value(value)}, not an integer >= 0")
    return value


def _sample(uri: str, document: Any) -> ReviewSample:
    """The ``sample`` block (the page's draw): known keys, integer counts, known strata."""
    document = _keys(uri, "sample", document, _SAMPLE_KEYS, set())
    seed = document.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _fail(uri, f"sample.seed is {show_value(seed)}, not an integer")
    size = None if document.get("size") is None else _count(uri, "sample.size", document["size"])
    strata = document.get("strata", {})
    if not isinstance(strata, dict):
        raise _fail(uri, f"sample.strata is {show_value(strata)}, not a JSON object")
    counts: dict[str, tuple[int, int]] = {}
    for stratum, entry in strata.items():
        if stratum not in REVIEW_STRATA:
            raise _fail(
                uri, f"sample.strata has {show_value(stratum)}, not a review stratum (such as '0.75-1.00|none')"
            )
        where = f"sample.strata[{stratum!r}]"
        entry = _keys(uri, where, entry, _STRATUM_KEYS, _STRATUM_KEYS)
        counts[stratum] = (_count(uri, f"{where}.rows", entry["rows"]), _count(uri, f"{where}.drawn", entry["drawn"]))
    return ReviewSample(seed, size, counts)


def parse_review(data: bytes, uri: str) -> ReviewFile:
    """The review file ``uri`` from its bytes, checked against the format (module docstring).

    Raises:
        ReviewError: one line naming ``uri`` and the field.
    """
    repeated = refusing_repeated_keys(lambda key: _fail(uri, f"key {key!r} given twice"))
    try:
        document = json.loads(data, object_pairs_hook=repeated)
    except ReviewError:
        raise
    except ValueError as exc:  # not UTF-8 or not JSON
        raise _fail(uri, f"not a JSON document ({str(exc).splitlines()[0]})") from exc
    if not isinstance(document, dict):
        raise _fail(uri, f"the document is {show_value(document)}, not a JSON object")
    if document.get("format") != REVIEW_FORMAT:  # first: another tool's file is named as such, not by its keys
        raise _fail(uri, f"format is {show_value(document.get('format'))}, not {REVIEW_FORMAT!r}: not a review file")
    version = document.get("version")
    if version != REVIEW_VERSION or isinstance(version, bool):
        raise _fail(uri, f"version {show_value(version)}: this code reads version {REVIEW_VERSION}")
    document = _keys(uri, "the document", document, _TOP_KEYS, _REQUIRED_TOP)
    run = _keys(uri, "label_run", document["label_run"], _RUN_KEYS, _RUN_KEYS)
    if not isinstance(run["labels"], str) or not run["labels"]:
        raise _fail(uri, f"label_run.labels is {show_value(run['labels'])}, not a location")
    label_run = LabelRun(
        run["labels"],
        _text(uri, "label_run.config_hash", run["config_hash"], nullable=True),
        _text(uri, "label_run.pipeline_version", run["pipeline_version"], nullable=True),
    )
    sample = _sample(uri, document["sample"]) if "sample" in document else ReviewSample()
    entries = document["decisions"]
    if not isinstance(entries, list):
        raise _fail(uri, f"decisions is {show_value(entries)}, not a JSON array")
    if len(entries) > MAX_DECISIONS:
        raise _fail(uri, f"{len(entries)} decisions: at most {MAX_DECISIONS} per file")
    decisions = tuple(_decision(uri, i, entry) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for i, d in enumerate(decisions):
        if d.sample_id in seen:
            raise _fail(uri, f"decisions[{i}]: {d.sample_id} is decided twice in one file")
        seen.add(d.sample_id)
    return ReviewFile(
        uri=uri,
        sha256=hashlib.sha256(data).hexdigest(),
        label_run=label_run,
        reviewer=str(_text(uri, "reviewer", document["reviewer"])),
        saved_at=str(_text(uri, "saved_at", document["saved_at"])),
        decisions=decisions,
        sample=sample,
    )


def read_reviews(storage: Storage, uris: Iterable[str], key: str = "review") -> list[ReviewFile]:
    """The review files at ``uris`` (local, ``s3://`` or ``gs://``), parsed and checked.

    Raises:
        ConfigError: one line naming ``key=<uri>`` and what is wrong (missing, or not a review file).
    """
    files = []
    for uri in uris:
        try:
            data = storage.read_bytes(uri)
        except (ObjectNotFoundError, FileNotFoundError) as exc:
            raise ConfigError(f"{key}={uri!r}: no such file (a review.json saved from a dpmesh-report page)") from exc
        try:
            files.append(parse_review(data, uri))
        except ReviewError as exc:
            raise ConfigError(f"{key}={exc}") from exc
    return files


@dataclasses.dataclass(frozen=True)
class Conflict:
    """A person the files decided differently: ``entries`` are ``(file uri, shard, decision)`` in file order."""

    sample_id: str
    entries: tuple[tuple[str, str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "decisions": [{"file": u, "shard": s, "decision": d}
                                                           for u, s, d in self.entries]}  # fmt: skip


@dataclasses.dataclass
class ReviewSet:
    """The decisions of several review files taken together.

    Attributes:
        files: The files, in the order given.
        decisions: ``{shard: {sample_id: Decision}}``: every person the files agree on (same decision, shard and
            model; the first file's reason and time are kept).
        conflicts: Persons the files decided differently (or placed in different shards or models): in no
            ``decisions``.
    """

    files: list[ReviewFile]
    decisions: dict[str, dict[str, Decision]]
    conflicts: list[Conflict]

    @property
    def size(self) -> int:
        """Agreed decisions."""
        return sum(len(by_id) for by_id in self.decisions.values())

    def digest(self) -> str | None:
        """16 hex digits of what the decisions do to rows (persons, shards, models, decisions; not reasons, names or
        times), or None when there is none: a job's config hash takes it, so another review is another config."""
        if not self.size:
            return None
        content = sorted(
            (d.shard, d.sample_id, d.model_id or "", d.decision) for by_id in self.decisions.values()
            for d in by_id.values()
        )  # fmt: skip
        return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()[:16]


def combine_reviews(files: list[ReviewFile]) -> ReviewSet:
    """The files' decisions taken together; a person decided differently by two files is a conflict, never
    resolved here (the caller refuses the run or leaves those persons to the filter, and says so)."""
    by_person: dict[str, list[tuple[ReviewFile, Decision]]] = {}
    for review in files:
        for decision in review.decisions:
            by_person.setdefault(decision.sample_id, []).append((review, decision))
    decisions: dict[str, dict[str, Decision]] = {}
    conflicts = []
    for sample_id, found in sorted(by_person.items()):
        if len({(d.decision, d.shard, d.model_id) for _, d in found}) > 1:
            conflicts.append(Conflict(sample_id, tuple((r.uri, d.shard, d.decision) for r, d in found)))
            continue
        first = found[0][1]
        decisions.setdefault(first.shard, {})[sample_id] = first
    return ReviewSet(files, decisions, conflicts)


def refuse_conflicts(review_set: ReviewSet, key: str = "review") -> ConfigError:
    """The one-line refusal of files that disagree, naming the first conflict and the ways out."""
    first = review_set.conflicts[0]
    said = "; ".join(f"{d} in {u}" for u, _, d in first.entries)
    return ConfigError(
        f"{key}: {len(review_set.conflicts)} person(s) decided differently by the review files (e.g. "
        f"{first.sample_id}: {said}); make the files agree, or pass review_conflicts=skip to leave those persons to "
        "the filter (each listed in _summary.json)"
    )


def _persons_of(storage: Storage, labels: str, shard: str) -> dict[str, str | None]:
    """``{sample_id: model_id}`` of one shard of a label output (its ``sample_id`` and ``model_id`` columns only)."""
    persons: dict[str, str | None] = {}
    for folder in ROW_FOLDERS:
        uri = safe_join(labels, folder, f"{shard}.parquet", what="shard name")
        try:
            data = storage.read_bytes(uri)
        except (ObjectNotFoundError, FileNotFoundError):  # a shard whose persons all errored has no rows there
            continue
        table = pq.read_table(io.BytesIO(data), columns=["sample_id", "model_id"])
        persons.update(zip(table["sample_id"].to_pylist(), table["model_id"].to_pylist(), strict=True))
    return persons


def check_label_runs(
    storage: Storage, labels: str, run: LabelRun, shards: set[str], files: list[ReviewFile], key: str = "review"
) -> dict[str, str]:
    """How each file relates to the label output ``labels`` (identity ``run``, ``shards`` its labeled shards):
    :data:`SAME_RUN`, or :data:`PERSONS_MATCH` for a review of another run whose every decided person is in
    ``labels`` with the same sample id, shard and model. Only those files' shards are read, and only their
    ``sample_id`` and ``model_id`` columns: at most one shard per decision, never the whole output.

    Raises:
        ConfigError: a review of another run with a person ``labels`` does not hold as reviewed.
    """
    verdicts: dict[str, str] = {}
    persons: dict[str, dict[str, str | None]] = {}
    for review in files:
        if review.label_run == run:
            verdicts[review.uri] = SAME_RUN
            continue
        missing: list[tuple[Decision, str]] = []
        for d in review.decisions:
            if d.shard not in shards:
                missing.append((d, f"the input has no shard {d.shard}"))
                continue
            if d.shard not in persons:
                persons[d.shard] = _persons_of(storage, labels, d.shard)
            if d.sample_id not in persons[d.shard]:
                missing.append((d, f"no such person in {d.shard}"))
            elif d.model_id is not None and persons[d.shard][d.sample_id] != d.model_id:
                missing.append((d, f"labeled by {persons[d.shard][d.sample_id]}, reviewed as {d.model_id}"))
        if missing:
            d, why = missing[0]
            raise ConfigError(
                f"{key}={review.uri!r} reviewed the labels {review.label_run.labels!r} (config hash "
                f"{review.label_run.config_hash}), not these ({run.labels!r}, config hash {run.config_hash}), and "
                f"{len(missing)} of its {len(review.decisions)} persons are not here as reviewed (e.g. {d.sample_id}: "
                f"{why}): review these labels on their own page"
            )
        verdicts[review.uri] = PERSONS_MATCH
    if persons:
        logger.info("checked the reviewed persons of another label run against %d shards", len(persons))
    return verdicts


def review_record(
    review_set: ReviewSet, verdicts: Mapping[str, str], shards: set[str], conflicts_mode: str
) -> dict[str, Any]:
    """What a job's ``_summary.json`` records of the reviews it applied (before its shards' counts are added by
    :func:`with_applied`): each file, the conflicts, and the agreed decisions by kind."""
    outside = sum(len(by_id) for shard, by_id in review_set.decisions.items() if shard not in shards)
    agreed = Counter(d.decision for by_id in review_set.decisions.values() for d in by_id.values())
    return {
        "files": [f.record(verdicts.get(f.uri)) for f in review_set.files],
        "decisions": {kind: agreed.get(kind, 0) for kind in REVIEW_DECISIONS},
        "conflicts": {
            "mode": conflicts_mode,
            "count": len(review_set.conflicts),
            "persons": [c.to_json() for c in review_set.conflicts[:CONFLICT_EXAMPLES]],
        },
        "not_in_input_shards": outside,
    }


APPLIED_COUNTS = (
    "applied_accept",  # a file's accept: the row is kept
    "applied_reject",  # a file's reject: the row is rejected (reviewed_reject)
    "applied_accept_not_kept",  # a file's accept of a label with non-finite signals: it stays rejected
    "not_found",  # a file's decision whose person (sample id and model) the shard does not hold
    "carried_accept",  # an earlier review in the rows, no file deciding the person again
    "carried_reject",
    "carried_accept_not_kept",
    "accept_over_filter",  # accepts (applied or carried) of a row the filter rejects
    "replaced_earlier",  # a file's decision unlike the one the row carried
)
"""Per-shard counts of :func:`apply_decisions` (kept in the shard's marker under ``review``)."""


def with_applied(record: Mapping[str, Any], applied: Mapping[str, int]) -> dict[str, Any]:
    """``record`` (:func:`review_record`) with the shards' summed counts (:data:`APPLIED_COUNTS`) and whether they
    reconcile: every agreed decision for the input's shards was applied, not kept (non-finite) or not found."""
    counts = {name: int(applied.get(name, 0)) for name in APPLIED_COUNTS}
    decided = sum(record["decisions"].values()) - record["not_in_input_shards"]
    outcomes = counts["applied_accept"] + counts["applied_reject"] + counts["applied_accept_not_kept"]
    return {**record, "applied": counts, "reconciled": decided == outcomes + counts["not_found"]}


def apply_decisions(
    table: pa.Table, decisions: Mapping[str, Decision], thresholds: FilterThresholds
) -> tuple[pa.Table, dict[str, int]]:
    """``table`` (one shard's rows after scoring, with ``quality_tier``, ``reasons``, ``confidence``, ``model_id``
    and ``review``) with ``decisions`` (by sample id) and the reviews its rows carry applied; and the counts of
    :data:`APPLIED_COUNTS`. A decision applies to the row of its sample id when it names no model or the row's."""
    carried = table["review"].to_pylist() if "review" in table.column_names else [None] * table.num_rows
    if not decisions and not any(carried):
        return table, {}
    ids = table["sample_id"].to_pylist()
    models = table["model_id"].to_pylist()
    confidence = table["confidence"].to_pylist()
    tiers = table["quality_tier"].to_pylist()
    reasons = [list(r or []) for r in table["reasons"].to_pylist()]
    counts: Counter[str] = Counter()
    found: set[str] = set()
    review: list[str | None] = []
    for i, sample_id in enumerate(ids):
        decision = decisions.get(sample_id)
        earlier = carried[i] if carried[i] in REVIEW_DECISIONS else None
        if decision is not None and decision.model_id in (None, models[i]):
            found.add(sample_id)
            verdict, source = decision.decision, "applied"
            counts["replaced_earlier"] += earlier is not None and earlier != verdict
        elif earlier is not None:
            verdict, source = earlier, "carried"
        else:
            review.append(None)
            continue
        review.append(verdict)
        if verdict == REVIEW_REJECT:
            tiers[i] = QualityTier.REJECT.value
            reasons[i] = reasons[i] if REVIEWED_REJECT in reasons[i] else [*reasons[i], REVIEWED_REJECT]
            counts[f"{source}_reject"] += 1
        elif NON_FINITE_OUTPUT in reasons[i]:  # never a label, whoever looked at it
            counts[f"{source}_accept_not_kept"] += 1
        else:
            counts["accept_over_filter"] += tiers[i] == QualityTier.REJECT.value
            tiers[i] = graded_tier(float(confidence[i]), thresholds)
            reasons[i] = []
            counts[f"{source}_accept"] += 1
    counts["not_found"] = len(set(decisions) - found)
    replaced = {
        "quality_tier": pa.array(tiers, ANNOTATION_SCHEMA.field("quality_tier").type),
        "reasons": pa.array(reasons, ANNOTATION_SCHEMA.field("reasons").type),
        "review": pa.array(review, ANNOTATION_SCHEMA.field("review").type),
    }
    for name, column in replaced.items():
        table = table.set_column(table.schema.get_field_index(name), ANNOTATION_SCHEMA.field(name), column)
    return table, {name: int(n) for name, n in sorted(counts.items()) if n}


def load_reviews(
    storage: Storage,
    uris: Iterable[str],
    conflicts_mode: str,
    labels: str,
    summary: Mapping[str, Any] | None,
    shards: set[str],
    key: str = "review",
) -> tuple[ReviewSet, dict[str, Any]]:
    """The review files ``uris``, read, combined and checked against the label output ``labels`` (identity
    ``summary``, labeled ``shards``) on the driver; and their record (:func:`review_record`) for the job's summary.
    ``conflicts_mode`` is ``refuse`` (files in conflict stop the run) or ``skip`` (those persons are left to the
    filter, listed in the record). One home for every job that applies reviews (``dpmesh-refilter``,
    ``dpmesh-export``).

    Raises:
        ConfigError: a file that is missing or not a review, files in conflict (``refuse``), or a review of another
            label run whose persons ``labels`` does not hold.
    """
    files = read_reviews(storage, uris, key)
    review_set = combine_reviews(files)
    if review_set.conflicts and conflicts_mode == "refuse":
        raise refuse_conflicts(review_set, key)
    if review_set.conflicts:
        logger.warning("%d persons decided differently by the review files: left to the filter (listed in the "
                       "summary)", len(review_set.conflicts))  # fmt: skip
    verdicts = check_label_runs(storage, labels, label_run_of(labels, summary), shards, files, key)
    # Recorded without files too: the input's rows may carry reviews, which the shards count.
    return review_set, review_record(review_set, verdicts, shards, conflicts_mode)

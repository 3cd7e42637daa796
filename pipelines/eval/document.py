"""The ``eval.json`` document's declared schema, and its check: what ``dpmesh-report report.eval=`` accepts.

``dpmesh-eval`` writes the document (`pipelines.eval.result.EvaluationResult.to_dict`); the report reads it back
from a path the user gives, so it is checked like any input: every field the report reads must be of its JSON type
(a boolean is not a number, a number is not a boolean, numbers are finite), counts are integers >= 0, and metric names,
which the report turns into file names, must be plain path segments (`pipelines.common.safe_paths.check_segment`).
A failure is one `EvalDocumentError` line naming the field and what was expected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpmesh_core.json_values import EXPECTED, json_type, refusing_repeated_keys, show_value
from pipelines.common.safe_paths import UnsafeName, check_segment


EVAL_FORMAT = "dpmesh-eval"
EVAL_VERSION = 1


class EvalDocumentError(ValueError):
    """An evaluation document that does not follow the schema (the message names the field)."""


@dataclass(frozen=True)
class Spec:
    """What one JSON value must be.

    ``kind``: ``number`` (finite; integers count, booleans do not), ``integer`` (not a boolean), ``string``,
    ``array``, ``object``, ``any``. ``nullable``: null allowed. ``choices``: an enum. ``minimum``: for numbers.
    ``fields``: an object's fixed fields (name -> (spec, required)); others are refused. ``values``: an object with
    free keys, each value of this spec. ``items``: each element of an array.
    ``check``: a last check of the whole value given its path (raises `EvalDocumentError`).
    """

    kind: str
    nullable: bool = False
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    fields: dict[str, tuple[Spec, bool]] = field(default_factory=dict)
    values: Spec | None = None
    items: Spec | None = None
    check: Callable[[Any, str, dict[str, Any]], None] | None = None


def _fail(path: str, value: Any, expected: str) -> EvalDocumentError:
    return EvalDocumentError(f"eval document {path}={show_value(value)}: expected {expected}")


def check_value(value: Any, spec: Spec, path: str, doc: dict[str, Any]) -> None:
    """``value`` (at ``path`` of ``doc``) against ``spec``; raises `EvalDocumentError` at the first mismatch."""
    kind = json_type(value)
    if value is None and spec.nullable:
        return
    if spec.kind != "any":
        ok = kind == spec.kind or (spec.kind == "number" and kind == "integer")
        if ok and spec.kind == "number":
            ok = math.isfinite(value)
        if not ok:
            raise _fail(path, value, EXPECTED[spec.kind] + (" or null" if spec.nullable else ""))
    if spec.choices and value not in spec.choices:
        raise _fail(path, value, " or ".join(json.dumps(c) for c in spec.choices))
    if spec.minimum is not None and value < spec.minimum:
        raise _fail(path, value, f"a number >= {spec.minimum:g}")
    for name, (sub, required) in spec.fields.items():
        if name in value:
            check_value(value[name], sub, f"{path}.{name}", doc)
        elif required:
            raise EvalDocumentError(f"eval document {path}.{name}: missing")
    if spec.fields:
        unknown = sorted(set(value) - set(spec.fields))
        if unknown:
            raise EvalDocumentError(f"eval document {path}.{unknown[0]}: not a field of this format")
    if spec.values is not None:
        for key, sub_value in value.items():
            check_value(sub_value, spec.values, f"{path}.{key}", doc)
    if spec.items is not None:
        for i, item in enumerate(value):
            check_value(item, spec.items, f"{path}[{i}]", doc)
    if spec.check is not None:
        spec.check(value, path, doc)


def metric_name(name: Any, path: str) -> None:
    """A metric name: one plain path segment (the report names files after it)."""
    try:
        check_segment(name, "metric name")
    except UnsafeName as exc:
        raise EvalDocumentError(f"eval document {path}: {exc}") from exc


def _metrics_unique(value: list[Any], path: str, doc: dict[str, Any]) -> None:
    for i, name in enumerate(value):
        metric_name(name, f"{path}[{i}]")
    if len(set(value)) != len(value):
        raise EvalDocumentError(f"eval document {path}: a metric is listed twice")


def _quality_keys(value: dict[str, Any], path: str, doc: dict[str, Any]) -> None:
    """Confidence quality is given per metric of ``metrics`` (the report names a plot file after each)."""
    for key in value:
        metric_name(key, f"{path}.{key}")
        if key not in doc["metrics"]:
            raise EvalDocumentError(f"eval document {path}.{key}: not one of metrics")


def _group(value: dict[str, Any], path: str, doc: dict[str, Any]) -> None:
    """A group row: ``n``, and per metric its mean, ``median_<metric>`` and ``n_<metric>``; nothing else."""
    if "n" not in value:
        raise EvalDocumentError(f"eval document {path}.n: missing")
    allowed = {"n"}
    for metric in doc["metrics"]:
        allowed |= {metric, f"median_{metric}", f"n_{metric}"}
    for key, item in value.items():
        if key not in allowed:
            raise EvalDocumentError(f"eval document {path}.{key}: not n or a metric of metrics")
        counted = key == "n" or (key.startswith("n_") and key[2:] in doc["metrics"] and key not in doc["metrics"])
        spec = _COUNT if counted else _FIGURE
        check_value(item, spec, f"{path}.{key}", doc)


def _person(value: dict[str, Any], path: str, doc: dict[str, Any]) -> None:
    """One person of ``persons``: id, tier, confidence, occlusion level, and an error per metric; nothing else."""
    for key, item in value.items():
        spec = _PERSON_FIELDS.get(key) or (_FIGURE if key in doc["metrics"] else None)
        if spec is None:
            raise EvalDocumentError(f"eval document {path}.{key}: not a field of a person")
        check_value(item, spec, f"{path}.{key}", doc)


def _equal_lengths(value: dict[str, list[Any]], path: str, doc: dict[str, Any]) -> None:
    if len({len(v) for v in value.values()}) > 1:
        raise EvalDocumentError(f"eval document {path}: its curves have different lengths")


_COUNT = Spec("integer", minimum=0)
_FIGURE = Spec("number", nullable=True)
_TEXT = Spec("string")
_GROUP = Spec("object", check=_group)
_CURVE = Spec("array", items=_FIGURE)
_QUALITY = Spec(
    "object",
    nullable=True,
    fields={
        "error_metric": (_TEXT, True),
        "n": (_COUNT, True),
        "spearman": (_FIGURE, True),
        "ause_mm": (_FIGURE, True),
        "ause_relative": (_FIGURE, True),
        "sparsification": (
            Spec(
                "object",
                fields={
                    "fraction_removed": (Spec("array", items=Spec("number")), True),
                    "mean_error_mm": (_CURVE, True),
                    "oracle_mean_error_mm": (_CURVE, True),
                },
                check=_equal_lengths,
            ),
            True,
        ),
        # Figures from a sample (`pipelines.eval.quality.sampled_confidence_quality`): its size and error bounds.
        "sample": (
            Spec(
                "object",
                fields={
                    "persons": (_COUNT, True),
                    "of": (_COUNT, True),
                    "exact": (Spec("boolean"), True),
                    "spearman_bound": (_FIGURE, True),
                    "ause_bound_mm": (_FIGURE, True),
                },
            ),
            False,
        ),
    },
)
_PERSON_FIELDS = {
    "sample_id": _TEXT,
    "quality_tier": _TEXT,
    "confidence": _FIGURE,
    "occlusion_level": Spec("string", nullable=True),
}
PERSONS = Spec("array", items=Spec("object", check=_person))
# The document (`EvaluationResult.to_dict`). ``metrics`` is checked first: the groups' keys depend on it.
EVAL_DOCUMENT = Spec(
    "object",
    fields={
        "format": (Spec("string", choices=(EVAL_FORMAT,)), True),
        "version": (Spec("integer", choices=(EVAL_VERSION,)), True),
        "metrics": (Spec("array", items=Spec("any"), check=_metrics_unique), True),
        "labels": (_TEXT, True),
        "ground_truth": (_TEXT, True),
        "counts": (Spec("object", values=_COUNT), True),
        "error_metric": (_TEXT, True),
        "overall": (_GROUP, True),
        "by_tier": (Spec("object", values=_GROUP), True),
        "by_occlusion_level": (Spec("object", nullable=True, values=_GROUP), True),
        "confidence_quality": (Spec("object", values=_QUALITY, check=_quality_keys), True),
        "ground_truth_problems": (
            Spec(
                "object",
                fields={
                    "counts": (Spec("object", values=_COUNT), True),
                    "examples": (Spec("array", items=_TEXT), True),
                },
            ),
            False,
        ),
        "persons": (PERSONS, False),
        "calibration": (Spec("object"), False),  # the fitted calibration: shown by nothing; its own reader checks it
        "estimates": (Spec("object"), False),  # which figures are estimates and their bounds: shown by nothing
        "outputs": (  # where the per-person files are, relative to the document's folder
            Spec(
                "object",
                fields={"persons_parquet": (_TEXT, True), "persons_json": (Spec("string", nullable=True), True)},
            ),
            False,
        ),
    },
)


no_repeated_keys = refusing_repeated_keys(
    lambda key: EvalDocumentError(f"eval document: key {key!r} is given twice in one object")
)


def parse_document(data: bytes) -> dict[str, Any]:
    """The checked ``eval.json`` document in ``data``.

    Raises:
        EvalDocumentError: not JSON, not of the format and version, or a field that breaks the schema.
    """
    doc = _parse(data)
    if not isinstance(doc, dict):
        raise EvalDocumentError(f"eval document: expected a JSON object, got {json_type(doc)}")
    # Format and version first, so another kind of file is named as such before its fields are looked at.
    for name in ("format", "version"):
        spec, _ = EVAL_DOCUMENT.fields[name]
        if name not in doc:
            raise EvalDocumentError(f"eval document {name}: missing (not a {EVAL_FORMAT} document)")
        check_value(doc[name], spec, name, doc)
    metrics_spec, _ = EVAL_DOCUMENT.fields["metrics"]
    check_value(doc.get("metrics"), metrics_spec, "metrics", doc)
    for name, (spec, required) in EVAL_DOCUMENT.fields.items():
        if name in doc:
            check_value(doc[name], spec, name, doc)
        elif required:
            raise EvalDocumentError(f"eval document {name}: missing")
    unknown = sorted(set(doc) - set(EVAL_DOCUMENT.fields))
    if unknown:
        raise EvalDocumentError(f"eval document {unknown[0]}: not a field of this format")
    return doc


def parse_persons(data: bytes, metrics: list[str]) -> list[dict[str, Any]]:
    """The ``persons`` of an ``eval_persons.json`` (``{"persons": [...]}``), checked against ``metrics``.

    Raises:
        EvalDocumentError: as `parse_document`.
    """
    doc = _parse(data)
    if not isinstance(doc, dict) or set(doc) != {"persons"}:
        raise EvalDocumentError('eval persons file: expected {"persons": [...]}')
    check_value(doc["persons"], PERSONS, "persons", {"metrics": metrics})
    persons: list[dict[str, Any]] = doc["persons"]
    return persons


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data, object_pairs_hook=no_repeated_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalDocumentError(f"not JSON: {exc}") from exc

"""The confidence calibration file is read against its declared schema: wrong JSON types, missing or unknown fields,
repeated keys and out-of-range values are refused with one line naming the field, never coerced."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dpmesh_core.calibration import CalibrationError, ConfidenceCalibration, default_terms


def _document() -> dict[str, Any]:
    """A valid calibration document, as ``dpmesh-eval`` writes one."""
    fit = {"n": 3, "n_good": 1}
    return ConfidenceCalibration(terms=default_terms(), intercept=0.5, good_error_mm=100.0, fit=fit).to_dict()


def _changed(path: str, value: Any) -> dict[str, Any]:
    """The document with ``path`` (dotted; ``terms.0.x`` indexes a list) set to ``value``, or removed for
    ``_REMOVED``."""
    doc = _document()
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _REMOVED:
        del node[last]
    else:
        node[last] = value
    return doc


_REMOVED = object()


def test_a_valid_file_round_trips() -> None:
    doc = _document()
    calibration = ConfidenceCalibration.from_json_bytes(json.dumps(doc).encode())
    assert calibration.to_dict() == doc
    assert all(isinstance(t.higher_is_better, bool) for t in calibration.terms)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("terms.0.higher_is_better", "no", 'terms[0].higher_is_better="no": expected a JSON boolean (true or false)'),
        ("terms.0.higher_is_better", 0, "terms[0].higher_is_better=0: expected a JSON boolean"),
        ("terms", [1], "terms[0]=1: expected an object (signal, soft, scale, higher_is_better, weight)"),
        ("terms", "abc", 'terms="abc": expected a JSON array'),
        ("terms", [], "terms=[]: expected at least one term"),
        ("intercept", _REMOVED, "intercept: missing (expected a finite number)"),
        ("terms.1.weight", _REMOVED, "terms[1].weight: missing (expected a finite number)"),
        ("fit", "abc", 'fit="abc": expected a JSON object'),
        ("version", True, "version=true: expected an integer"),
        ("version", 1.0, "version=1.0: expected an integer"),
        ("version", 2, "version=2: expected 1"),
        ("format", "x", 'format="x": expected "dpmesh-confidence-calibration"'),
        ("model", "isotonic", 'model="isotonic": expected "logistic"'),
        ("terms.0.weight", True, "terms[0].weight=true: expected a finite number"),
        ("terms.0.weight", -0.5, "terms[0].weight=-0.5: expected a number >= 0"),
        ("terms.0.scale", 0, "terms[0].scale=0: expected a number > 0"),
        ("terms.0.signal", "nope", 'terms[0].signal="nope": expected "reproj_err_px" or "reproj_err_norm"'),
        ("terms.1.signal", "n_kp_valid", 'terms[1].signal="n_kp_valid": repeats terms[0]'),
        ("intercept", "1", 'intercept="1": expected a finite number'),
        ("good_error_mm", -1, "good_error_mm=-1: expected a number > 0"),
        ("joint_set", 24, "joint_set=24: expected a string"),
        ("intercep", 1.0, "intercep: not a field of this format"),
        ("terms.0.wieght", 1.0, "terms[0].wieght: not a field of this format"),
    ],
)
def test_a_field_that_breaks_the_schema_is_named_on_one_line(path: str, value: Any, expected: str) -> None:
    doc = _changed(path, value)
    with pytest.raises(CalibrationError) as exc:
        ConfidenceCalibration.from_json_bytes(json.dumps(doc).encode())
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("calibration ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"intercept": NaN', "intercept=NaN: expected a finite number"),
        ('"good_error_mm": Infinity', "good_error_mm=Infinity: expected a finite number"),
        ('"intercept": 0.5, "intercept": 9', "field 'intercept' is given twice"),
    ],
)
def test_non_finite_numbers_and_repeated_keys_are_refused(text: str, expected: str) -> None:
    raw = json.dumps(_document())
    key = text.split(":")[0]
    start = raw.index(key)
    end = raw.index(",", start)
    with pytest.raises(CalibrationError, match=expected):
        ConfidenceCalibration.from_json_bytes((raw[:start] + text + raw[end:]).encode())


def test_not_json_or_not_an_object_is_refused() -> None:
    for data, expected in ((b"\xff", "not JSON"), (b"[1]", "expected a JSON object, got array")):
        with pytest.raises(CalibrationError, match=expected):
            ConfidenceCalibration.from_json_bytes(data)
    assert issubclass(CalibrationError, ValueError), "pipelines turn ValueError into a configuration error"

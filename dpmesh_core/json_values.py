"""How a parsed JSON value is named in a one-line error: its JSON type and a short spelling of it.

Shared by the declared schemas that check files users hand the tools (the confidence calibration here, the
evaluation document in ``pipelines.eval.document``), so both describe a wrong value the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


# What a field of each JSON type is expected to hold, as an error message says it.
EXPECTED: dict[str, str] = {
    "number": "a finite number",
    "integer": "an integer",
    "boolean": "a JSON boolean (true or false)",
    "string": "a string",
    "object": "a JSON object",
    "array": "a JSON array",
}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``true`` is a boolean, not a number; ``1`` an integer)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def show_value(value: Any) -> str:
    """A value for a one-line message: its JSON spelling (containers by their type), cut to 60 characters."""
    text = json.dumps(value) if json_type(value) not in ("array", "object") else json_type(value)
    return text if len(text) <= 60 else text[:57] + "..."


def refusing_repeated_keys(
    error: Callable[[str], Exception],
) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A ``json.loads`` ``object_pairs_hook`` that raises ``error(key)`` for a key given twice in one object
    (``json``'s default keeps the last one silently)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for key, value in pairs:
            if key in doc:
                raise error(key)
            doc[key] = value
        return doc

    return hook

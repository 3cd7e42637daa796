"""Building rows of the errors table (:data:`schemas.ERROR_SCHEMA`), the one shape every failure takes."""

import re
from typing import Any

from schemas import SCHEMA_VERSION


# Exception texts sometimes embed object addresses ("<_io.BytesIO object at 0x7f...>"): drop them so that
# rerunning the same input writes the same error rows.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def error_row(
    stage: str,
    reason: str,
    error: str,
    *,
    key: str | None = None,
    source_uri: str | None = None,
    shard: str | None = None,
    person_idx: int | None = None,
) -> dict[str, Any]:
    """One errors-table row; ``stage`` and ``reason`` are codes from :mod:`schemas.errors`."""
    return {
        "key": key,
        "source_uri": source_uri,
        "shard": shard,
        "person_idx": person_idx,
        "stage": str(getattr(stage, "value", stage)),
        "reason": str(getattr(reason, "value", reason)),
        "error": _ADDRESS.sub("", error)[:2000],
        "schema_version": SCHEMA_VERSION,
    }


def error_sort_key(row: dict[str, Any]) -> tuple[str, ...]:
    """Deterministic order of error rows, so reruns write identical files."""
    return tuple(str(row.get(k) or "") for k in ("stage", "source_uri", "key", "person_idx", "reason", "error"))

"""Rewrite the schema snapshots ``tests/golden/schemas/<name>.txt``: the only way they should change.

Run from anywhere: ``python tests/golden/regenerate_schemas.py``. Review the resulting diff: every
line in it is a change to the bytes the pipelines write.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa


GOLDEN_DIR = Path(__file__).resolve().parent / "schemas"
REPO_ROOT = Path(__file__).resolve().parents[2]


def render_schema(schema: pa.Schema) -> str:
    """Full text of ``schema``: types, nullability, field and schema metadata, nothing truncated."""
    text = schema.to_string(
        truncate_metadata=False,
        show_field_metadata=True,
        show_schema_metadata=True,
        element_size_limit=1_000_000,
    )
    return text + "\n"


def main() -> int:
    """Write one snapshot per entry of ``schemas.ALL_SCHEMAS`` and delete snapshots of removed schemas."""
    sys.path.insert(0, str(REPO_ROOT))
    from schemas import ALL_SCHEMAS

    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for stale in sorted(GOLDEN_DIR.glob("*.txt")):
        if stale.stem not in ALL_SCHEMAS:
            stale.unlink()
            print(f"removed {stale}")
    for name, schema in ALL_SCHEMAS.items():
        path = GOLDEN_DIR / f"{name}.txt"
        path.write_text(render_schema(schema), encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

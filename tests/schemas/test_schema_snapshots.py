"""Golden snapshots of every schema, so each schema change shows in review as a diff.

The snapshots are rewritten only by ``python tests/golden/regenerate_schemas.py``.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from schemas import ALL_SCHEMAS


REGENERATE_SCRIPT = Path(__file__).resolve().parents[1] / "golden" / "regenerate_schemas.py"
REGENERATE_HINT = "run `python tests/golden/regenerate_schemas.py` and commit the reviewed diff"


def _regenerate_module() -> ModuleType:
    """Load the regeneration script by path, so the test and the script render identically."""
    spec = importlib.util.spec_from_file_location("regenerate_schemas", REGENERATE_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGENERATE = _regenerate_module()


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_schema_matches_snapshot(name: str) -> None:
    golden = REGENERATE.GOLDEN_DIR / f"{name}.txt"
    if not golden.exists():
        pytest.fail(f"missing schema snapshot {golden}: {REGENERATE_HINT}")
    expected = golden.read_text(encoding="utf-8")
    actual = REGENERATE.render_schema(ALL_SCHEMAS[name])
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), actual.splitlines(keepends=True), str(golden), "current schema"
            )
        )
        pytest.fail(
            f"schema {name!r} differs from its snapshot; if the change is intended, {REGENERATE_HINT}.\n{diff}"
        )


def test_no_stale_snapshots() -> None:
    stale = sorted(p.name for p in REGENERATE.GOLDEN_DIR.glob("*.txt") if p.stem not in ALL_SCHEMAS)
    assert not stale, f"snapshots without a schema: {stale}; {REGENERATE_HINT}"

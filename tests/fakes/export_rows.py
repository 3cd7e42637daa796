"""What an export wrote, read back for the tests."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any


def crop_rows(out: Path) -> dict[str, dict[str, Any]]:
    """The rows the crop JSONs of the ``format=crops`` export at ``out`` carry, by sample_id."""
    rows = {}
    for path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    row = json.loads(tar.extractfile(member).read())["row"]  # type: ignore[union-attr]
                    rows[row["sample_id"]] = row
    return rows

"""A reviewer's file as the review page saves it, planted by the tests of the jobs that honour reviews."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.common.reviews import label_run_of, review_header


def write_review(path: Path, labels: Path, decisions: list[tuple[dict[str, Any], str]], **run: Any) -> Path:
    """A review.json of ``labels`` (its identity, unless ``run`` replaces fields) deciding ``(row, decision)``: a
    reject gives the reason ``misaligned``."""
    summary = json.loads((labels / "_summary.json").read_text())
    identity = {**label_run_of(str(labels), summary).to_json(), **run}
    document = {**review_header(label_run_of(str(labels), None), {}), "label_run": identity, "reviewer": "tester",
                "saved_at": "2026-01-01T00:00:00.000Z", "decisions": [
                    {"sample_id": row["sample_id"], "shard": row["shard"], "model_id": row["model_id"],
                     "decision": decision, "reason": "misaligned" if decision == "reject" else None, "time": None,
                     "stratum": None} for row, decision in decisions]}  # fmt: skip
    path.write_text(json.dumps(document))
    return path

"""Lineage units: annotation ids from the shard JSON and the model lineage a label marker records (dpmesh-refilter's
lineage units: tests/refilter/test_refilter_units.py)."""

from __future__ import annotations

from collections import Counter

from pipelines.common.label_units import ShardReport, ShardTask, shard_marker
from pipelines.label.persons import person_from_json
from tests.fakes.label_inputs import stored_label_row


def test_person_from_json_keeps_the_source_annotation_id_as_text() -> None:
    keypoints = [[1.0, 2.0, 2]] * 17
    assert person_from_json({"keypoints": keypoints, "annotation_id": 183020}).annotation_id == "183020"
    assert person_from_json({"keypoints": keypoints, "annotation_id": "human1"}).annotation_id == "human1"
    assert person_from_json({"keypoints": keypoints}).annotation_id is None


def test_shard_marker_records_the_model_lineage_of_its_rows() -> None:
    report = ShardReport(Counter({"images_in": 1, "images_ok": 1, "images_errored": 0, "persons_in": 2}), 10, "ab")
    task = ShardTask("/s/shard-000001.tar", "shard-000001", {"tar_bytes": 10, "tar_sha1": "ab"})
    rows = [stored_label_row(0, 1.0), {**stored_label_row(1, 1.0), "quality_tier": "reject", "reasons": ["small_box"]}]
    marker = shard_marker(task, report, rows[:1], rows[1:], [], {"config_hash": "h"})
    assert marker["model_ids"] == ["sha256:00"]
    assert marker["body_models"] == {"smpl_neutral_10_betas": "ab" * 32}
    assert marker["reconciled"]

"""Lineage units: annotation ids from the shard JSON, marker lineage, and dpmesh-refilter's table path and resume."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from dpmesh_core.confidence import default_thresholds, strict_thresholds
from pipelines.common.label_set import LABEL_RUN
from pipelines.common.label_units import ShardReport, ShardTask, shard_marker
from pipelines.label.persons import person_from_json
from pipelines.refilter.plan import is_refiltered
from pipelines.refilter.refilter_shard import conform, label_run_of_marker, rescore_row, rescore_table
from schemas import ANNOTATION_SCHEMA, table_from_rows


def _row(idx: int, conf: float) -> dict[str, Any]:
    """A stored label whose signals pass the default filter; ``conf`` sets every keypoint's confidence."""
    return {
        "sample_id": f"k_p{idx}", "image_key": "k", "shard": "shard-000001", "source_uri": "/img/k.jpg",
        "image_width": 640, "image_height": 480, "person_idx": idx, "bbox_xyxy": [0.0, 0.0, 200.0, 300.0],
        "crop_bbox_xywh": [0.0, 0.0, 330.0, 330.0], "keypoints_2d": [[10.0, 10.0, conf]] * 17,
        "keypoint_source": "annotations", "det_score": None, "global_orient": [0.0] * 3, "body_pose": [0.0] * 69,
        "betas": [0.0] * 10, "transl": [0.0, 0.0, 5.0], "focal_length": 800.0, "principal_point": [320.0, 240.0],
        "joints_3d": [[0.0, 0.0, 5.0]] * 24, "joints_2d_proj": [[10.0, 10.0]] * 17, "reproj_err_px": 1.0,
        "reproj_err_norm": 0.005, "n_kp_valid": 17, "kp_conf_mean": conf, "vposer_z_norm": 5.0, "betas_absmax": 0.5,
        "joint_consistency_mm": 20.0, "truncation": 0.0, "box_size_px": 300.0, "crowding_iou": 0.0,
        "flip_pa_mpjpe_mm": None, "confidence": 1.0, "quality_tier": "gold", "reasons": [],
        "model_id": "sha256:00", "schema_version": "1.1.0", "shard_uri": "/s/shard-000001.tar",
        "annotation_id": str(idx), "body_model": "smpl_neutral_10_betas", "body_model_sha256": "ab" * 32,
        "n_kp_visible": 17, "n_kp_occluded": 0, "n_kp_missing": 0, "joints_in_image_frac": 1.0,
        "crowd_index": 0.0, "occlusion_level": "none",
    }  # fmt: skip


def test_person_from_json_keeps_the_source_annotation_id_as_text() -> None:
    keypoints = [[1.0, 2.0, 2]] * 17
    assert person_from_json({"keypoints": keypoints, "annotation_id": 183020}).annotation_id == "183020"
    assert person_from_json({"keypoints": keypoints, "annotation_id": "human1"}).annotation_id == "human1"
    assert person_from_json({"keypoints": keypoints}).annotation_id is None


def test_shard_marker_records_the_model_lineage_of_its_rows() -> None:
    report = ShardReport(Counter({"images_in": 1, "images_ok": 1, "images_errored": 0, "persons_in": 2}), 10, "ab")
    task = ShardTask("/s/shard-000001.tar", "shard-000001", {"tar_bytes": 10, "tar_sha1": "ab"})
    rows = [_row(0, 1.0), {**_row(1, 1.0), "quality_tier": "reject", "reasons": ["small_box"]}]
    marker = shard_marker(task, report, rows[:1], rows[1:], [], {"config_hash": "h"})
    assert marker["model_ids"] == ["sha256:00"]
    assert marker["body_models"] == {"smpl_neutral_10_betas": "ab" * 32}
    assert marker["reconciled"]


def test_rescore_table_agrees_with_rescore_row_and_reads_arrays_zero_copy() -> None:
    rows = [_row(0, 1.0), _row(1, 0.4), _row(2, 0.2)]
    table = table_from_rows(rows, ANNOTATION_SCHEMA)
    for thresholds in (default_thresholds(), strict_thresholds()):
        rescored = rescore_table(table, thresholds).to_pylist()
        expected = [rescore_row(r, thresholds) for r in table.to_pylist()]
        assert [r["n_kp_valid"] for r in rescored] == [r["n_kp_valid"] for r in expected]
        assert [r["quality_tier"] for r in rescored] == [r["quality_tier"] for r in expected]
        assert [r["reasons"] for r in rescored] == [r["reasons"] for r in expected]
        assert [r["confidence"] for r in rescored] == pytest.approx([r["confidence"] for r in expected])
    strict = rescore_table(table, strict_thresholds())
    assert strict["n_kp_valid"].to_pylist() == [17, 0, 0]  # strict counts conf >= 0.5
    assert rescore_table(table, default_thresholds())["n_kp_valid"].to_pylist() == [17, 17, 0]
    assert rescore_table(table, strict_thresholds()).schema == table.schema


def test_conform_fills_columns_an_older_file_lacks_and_refuses_missing_required_ones() -> None:
    table = table_from_rows([_row(0, 1.0)], ANNOTATION_SCHEMA)
    old = table.drop_columns(["occlusion_level", "crowd_index", "shard_uri", "body_model"])
    conformed = conform(old, ANNOTATION_SCHEMA)
    assert conformed.schema == ANNOTATION_SCHEMA
    assert conformed["occlusion_level"].to_pylist() == [None]
    assert conformed["model_id"].to_pylist() == ["sha256:00"]
    with pytest.raises(ValueError, match="'model_id'"):
        conform(table.drop_columns(["model_id"]), ANNOTATION_SCHEMA)
    np.testing.assert_array_equal(conform(table, ANNOTATION_SCHEMA)["bbox_xyxy"].to_pylist(), [[0, 0, 200, 300]])
    assert pa.Table.equals(conform(table, ANNOTATION_SCHEMA), table)


def test_label_run_is_read_off_a_label_marker_and_carried_through_refilters() -> None:
    label_marker = {"shard": "s", "config_hash": "label-hash", "pipeline_version": "0.1", "shard_identity": {"a": 1}}
    first = label_run_of_marker(label_marker, "/labels")
    assert first == {"labels": "/labels", "config_hash": "label-hash", "pipeline_version": "0.1"}
    refilter_marker = {"shard": "s", "config_hash": "refilter-hash", LABEL_RUN: first, "shard_identity": {"a": 1}}
    assert label_run_of_marker(refilter_marker, "/refiltered") == first


def test_a_shard_is_refiltered_again_only_when_its_marker_does_not_cover_the_source() -> None:
    source = {"shard": "s", "config_hash": "label-hash", "shard_identity": {"tar_sha1": "x"}}
    label_run = {"config_hash": "label-hash"}
    done = {"shard": "s", "config_hash": "mine", "shard_identity": {"tar_sha1": "x"}, LABEL_RUN: label_run}
    assert is_refiltered(done, source, "mine")
    assert not is_refiltered(None, source, "mine")  # never done (or killed before its marker)
    assert not is_refiltered(done, source, "another filter")
    assert not is_refiltered(done, {**source, "shard_identity": {"tar_sha1": "y"}}, "mine")  # relabeled shard
    assert not is_refiltered(done, {**source, "config_hash": "relabeled"}, "mine")

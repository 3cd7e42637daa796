"""dpmesh-refilter's units: rescoring stored rows (row by row and as a table), conforming older files, the label run
carried through refilters, and which shards a rerun refilters again."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dpmesh_core.confidence import default_thresholds, strict_thresholds
from pipelines.common.label_set import LABEL_RUN
from pipelines.refilter.plan import is_refiltered
from pipelines.refilter.refilter_shard import conform, label_run_of_marker, rescore_row, rescore_table
from schemas import ANNOTATION_SCHEMA, table_from_rows
from tests.fakes.label_inputs import stored_label_row


def test_rescore_table_agrees_with_rescore_row_and_reads_arrays_zero_copy() -> None:
    rows = [stored_label_row(0, 1.0), stored_label_row(1, 0.4), stored_label_row(2, 0.2)]
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
    table = table_from_rows([stored_label_row(0, 1.0)], ANNOTATION_SCHEMA)
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


def test_rescore_row_recounts_keypoints_under_the_new_threshold() -> None:
    keypoints = [[1.0, 1.0, 0.4]] * 10 + [[1.0, 1.0, 0.2]] * 7
    row = {
        "keypoints_2d": keypoints,
        "reproj_err_px": 1.0,
        "reproj_err_norm": 0.01,
        "n_kp_valid": 10,
        "kp_conf_mean": 0.3,
        "vposer_z_norm": 5.0,
        "betas_absmax": 1.0,
        "joint_consistency_mm": 10.0,
        "truncation": 0.0,
        "box_size_px": 200.0,
        "crowding_iou": 0.0,
        "flip_pa_mpjpe_mm": None,
        "det_score": None,
    }
    loose = rescore_row(row, default_thresholds())
    strict = rescore_row(row, strict_thresholds())
    assert (loose["n_kp_valid"], strict["n_kp_valid"]) == (10, 0)
    assert loose["quality_tier"] != "reject"
    assert "few_keypoints" in strict["reasons"]

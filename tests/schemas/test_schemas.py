"""Schemas: Parquet round trips, row validation, and the metadata contract (units, frames, versions)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import (
    ALL_SCHEMAS,
    ANNOTATION_SCHEMA,
    ERROR_REASONS,
    ERROR_SCHEMA,
    QUALITY_TIERS,
    SCHEMA_VERSION,
    SHARD_INDEX_SCHEMA,
    ErrorReason,
    ErrorStage,
    empty_table,
    fixed_list_to_numpy,
    table_from_rows,
    with_file_metadata,
)
from schemas.metadata import FRAME_CAMERA, FRAME_IMAGE, FRAME_SMPL_PARENT


def shard_index_row(key: str = "img_0001") -> dict[str, Any]:
    """A sample as the sharding job indexes it."""
    return {
        "key": key,
        "source_uri": f"s3://bucket/corpus/{key}.jpg",
        "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "format": "jpeg",
        "width": 640,
        "height": 480,
        "exif_orientation": 6,
        "bytes": 123_456,
        "n_persons": 2,
        "annotated": True,
        "shard": "shard-000003",
        "tar_member": f"{key}.jpg",
        "tar_offset": 1536,
    }


def annotation_row(person_idx: int = 0, *, rejected: bool = False) -> dict[str, Any]:
    """A labelled person; numpy arrays where a writer would have them."""
    rng = np.random.default_rng(person_idx)
    return {
        "sample_id": f"img_0001_p{person_idx}",
        "image_key": "img_0001",
        "shard": "shard-000003",
        "source_uri": "s3://bucket/corpus/img_0001.jpg",
        "image_width": 640,
        "image_height": 480,
        "person_idx": person_idx,
        "bbox_xyxy": [10.0, 20.0, 110.5, 300.25],
        "crop_bbox_xywh": [-30.0, 0.0, 200.0, 200.0],
        "keypoints_2d": rng.uniform(0, 1, (17, 3)).astype(np.float32),
        "keypoint_source": "annotations",
        "det_score": None,
        "global_orient": [math.pi, 0.0, 0.0],
        "body_pose": rng.normal(0, 0.2, 69).astype(np.float32),
        "betas": np.zeros(10, dtype=np.float32),
        "transl": [0.1, 0.2, 5.0],
        "focal_length": 800.0,
        "principal_point": [320.0, 240.0],
        "joints_3d": rng.normal(0, 1, (24, 3)).tolist(),
        "joints_2d_proj": rng.uniform(0, 400, (17, 2)),
        "reproj_err_px": 4.5,
        "reproj_err_norm": 0.016,
        "n_kp_valid": 12,
        "kp_conf_mean": 0.61,
        "vposer_z_norm": 5.2,
        "betas_absmax": 0.0,
        "joint_consistency_mm": 31.0,
        "truncation": 0.0,
        "box_size_px": 280.25,
        "crowding_iou": 0.12,
        "flip_pa_mpjpe_mm": None if person_idx == 0 else 41.0,
        "confidence": 0.2 if rejected else 0.87,
        "quality_tier": "reject" if rejected else "gold",
        "reasons": ["high_reproj_error", "implausible_betas"] if rejected else [],
        "model_id": "sha256:0123abcd",
        "schema_version": SCHEMA_VERSION,
        "shard_uri": "s3://bucket/shards/shard-000003.tar",
        "annotation_id": str(1000 + person_idx),
        "body_model": "smpl_neutral_10_betas",
        "body_model_sha256": "ab" * 32,
        "n_kp_visible": 12,
        "n_kp_occluded": 3,
        "n_kp_missing": 2,
        "joints_in_image_frac": 1.0,
        "crowd_index": None if person_idx == 0 else 0.25,
        "occlusion_level": "partial",
    }


def error_row() -> dict[str, Any]:
    """A per-person labeling failure; a shard-level failure omits the nullable columns."""
    return {
        "key": "img_0001",
        "source_uri": "s3://bucket/corpus/img_0001.jpg",
        "shard": "shard-000003",
        "person_idx": 1,
        "stage": ErrorStage.LABEL_INFERENCE.value,
        "reason": ErrorReason.NAN_OUTPUT.value,
        "error": "ValueError: body_pose has 3 NaN values",
        "schema_version": SCHEMA_VERSION,
    }


ROWS: dict[str, list[dict[str, Any]]] = {
    "shard_index": [shard_index_row("img_0001"), shard_index_row("img_0002")],
    "annotations": [annotation_row(0), annotation_row(1), annotation_row(2, rejected=True)],
    "errors": [
        error_row(),
        {"stage": "shard.read", "reason": "zero_bytes", "error": "", "schema_version": SCHEMA_VERSION},
    ],
    "shard_retired": [
        {
            "key": "img_0001",
            "shard": "shard-000000",
            "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "source_uri": "s3://bucket/corpus/img_0001.jpg",
            "generation": 1,
            "reason": "superseded",
        },
        {
            "key": "img_0002",
            "shard": "shard-000000",
            "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "source_uri": "s3://bucket/corpus/img_0002.jpg",
            "generation": 2,
            "reason": "removed",
        },
    ],
    "near_duplicates": [
        {"key": "img_0001", "shard": "shard-000000", "group": "img_0001", "group_size": 2},
        {"key": "img_0002", "shard": "shard-000042", "group": "img_0001", "group_size": 2},
    ],
    "release_images": [
        {
            "key": f"img_000{i}",
            "path": f"corpus/img_000{i}.jpg",
            "source_uri": f"s3://bucket/corpus/img_000{i}.jpg",
            "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "bytes": 1024 * i,
        }
        for i in (1, 2)
    ],
}


def _leaf_type(type_: pa.DataType) -> pa.DataType:
    while pa.types.is_fixed_size_list(type_) or pa.types.is_list(type_):
        type_ = type_.value_type
    return type_


def _meta(field: pa.Field, key: bytes) -> str | None:
    value = (field.metadata or {}).get(key)
    return None if value is None else bytes(value).decode()


def test_all_schemas_have_rows_and_names() -> None:
    assert set(ROWS) == set(ALL_SCHEMAS)
    for name, schema in ALL_SCHEMAS.items():
        assert schema.metadata[b"schema_name"] == name.encode()


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_parquet_round_trip(name: str, tmp_path: Path) -> None:
    schema = with_file_metadata(ALL_SCHEMAS[name], pipeline_version="0.1.0+test", config_hash="cafef00d")
    table = table_from_rows(ROWS[name], schema)
    assert table.num_rows == len(ROWS[name])
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path)

    read = pq.read_table(path)
    assert read.schema.equals(schema, check_metadata=True)
    assert read.equals(table)
    file_meta = pq.read_metadata(path).metadata
    assert file_meta[b"schema_version"] == SCHEMA_VERSION.encode()
    assert file_meta[b"pipeline_version"] == b"0.1.0+test"
    assert file_meta[b"config_hash"] == b"cafef00d"
    assert file_meta[b"schema_name"] == name.encode()


def test_annotation_values_survive(tmp_path: Path) -> None:
    rows = ROWS["annotations"]
    pq.write_table(table_from_rows(rows, ANNOTATION_SCHEMA), tmp_path / "a.parquet")
    read = pq.read_table(tmp_path / "a.parquet")
    keypoints = fixed_list_to_numpy(read.column("keypoints_2d"), (17, 3))
    assert keypoints.shape == (3, 17, 3)
    assert keypoints.dtype == np.float32
    np.testing.assert_array_equal(keypoints[0], rows[0]["keypoints_2d"])
    joints = fixed_list_to_numpy(read.column("joints_3d"), (24, 3))
    np.testing.assert_allclose(joints[2], rows[2]["joints_3d"], rtol=1e-6)  # float64 rows stored as float32
    assert read.column("crowd_index").to_pylist() == [None, 0.25, 0.25]
    assert read.column("flip_pa_mpjpe_mm").to_pylist() == [None, 41.0, 41.0]
    assert read.column("reasons").to_pylist()[0] == []
    assert read.column("reasons").to_pylist()[2] == ["high_reproj_error", "implausible_betas"]
    assert set(read.column("quality_tier").to_pylist()) <= QUALITY_TIERS


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_empty_table_round_trips(name: str, tmp_path: Path) -> None:
    table = empty_table(ALL_SCHEMAS[name])
    assert table.num_rows == 0
    pq.write_table(table, tmp_path / "empty.parquet")
    assert pq.read_table(tmp_path / "empty.parquet").schema.equals(ALL_SCHEMAS[name], check_metadata=True)


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_missing_non_nullable_field_is_named(name: str) -> None:
    schema = ALL_SCHEMAS[name]
    for field in schema:
        if field.nullable:
            continue
        rows = [dict(row) for row in ROWS[name]]
        del rows[1][field.name]
        with pytest.raises(ValueError, match=rf"row 1: .*'{field.name}'"):
            table_from_rows(rows, schema)
        rows[1][field.name] = None
        with pytest.raises(ValueError, match=rf"row 1: .*'{field.name}'"):
            table_from_rows(rows, schema)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("body_pose", [0.0] * 72, "'body_pose'"),
        ("betas", [0.0] * 9, "'betas'"),
        ("bbox_xyxy", "1,2,3,4", "'bbox_xyxy'"),
        ("keypoints_2d", [[0.0, 0.0, 1.0]] * 16, "'keypoints_2d'"),
        ("keypoints_2d", [[0.0, 0.0, 1.0]] * 3 + [[0.0, 0.0]] + [[0.0, 0.0, 1.0]] * 13, r"'keypoints_2d\[3\]'"),
        ("transl", [0.0, None, 1.0], r"'transl\[1\]'"),
        ("reasons", ["ok", None], r"'reasons\[1\]'"),
    ],
)
def test_bad_list_values_are_named(field: str, value: Any, named: str) -> None:
    rows = [annotation_row(0), annotation_row(1)]
    rows[1][field] = value
    with pytest.raises(ValueError, match=rf"row 1: .*field {named}"):
        table_from_rows(rows, ANNOTATION_SCHEMA)


def test_unknown_and_mistyped_fields_are_named() -> None:
    with pytest.raises(ValueError, match="'extra'"):
        table_from_rows([{**shard_index_row(), "extra": 1}], SHARD_INDEX_SCHEMA)
    with pytest.raises(ValueError, match="'width'"):
        table_from_rows([{**shard_index_row(), "width": "wide"}], SHARD_INDEX_SCHEMA)


def test_nullable_columns_may_be_omitted() -> None:
    table = table_from_rows(ROWS["errors"], ERROR_SCHEMA)
    assert table.column("key").to_pylist() == ["img_0001", None]
    assert table.column("person_idx").to_pylist() == [1, None]


def test_fixed_list_to_numpy_reads_chunked_and_sliced_columns_without_python_objects() -> None:
    table = table_from_rows(ROWS["annotations"], ANNOTATION_SCHEMA)
    expected = np.stack([np.asarray(r["keypoints_2d"], np.float32) for r in ROWS["annotations"]])
    chunked = pa.chunked_array([table["keypoints_2d"].chunk(0).slice(0, 1), table["keypoints_2d"].chunk(0).slice(1)])
    np.testing.assert_array_equal(fixed_list_to_numpy(chunked, (17, 3)), expected)
    np.testing.assert_array_equal(fixed_list_to_numpy(table["keypoints_2d"].chunk(0).slice(2), (17, 3)), expected[2:])
    single = fixed_list_to_numpy(table.combine_chunks()["body_pose"].chunk(0), (23, 3))
    assert single.shape == (3, 23, 3)
    assert not single.flags.writeable  # a view of Arrow's buffer, not a copy
    assert fixed_list_to_numpy(empty_table(ANNOTATION_SCHEMA)["joints_3d"], (24, 3)).shape == (0, 24, 3)
    assert fixed_list_to_numpy(table["joints_2d_proj"]).shape == (3, 17, 2)  # shape from the type
    with pytest.raises(ValueError, match="shape"):
        fixed_list_to_numpy(table["keypoints_2d"], (17, 2))
    with pytest.raises(ValueError, match="fixed-size list"):
        fixed_list_to_numpy(table["confidence"], (1,))


def test_files_of_schema_1_0_0_read_with_nulls_in_the_new_columns(tmp_path: Path) -> None:
    """1.1.0 only added nullable columns after the 1.0.0 ones: an old file reads into the new schema."""
    added = [f.name for f in ANNOTATION_SCHEMA if f.name not in _V1_0_0_ANNOTATION_COLUMNS]
    assert all(ANNOTATION_SCHEMA.field(name).nullable for name in added)
    assert ANNOTATION_SCHEMA.names[: len(_V1_0_0_ANNOTATION_COLUMNS)] == list(_V1_0_0_ANNOTATION_COLUMNS)
    old_rows = [{k: v for k, v in row.items() if k in _V1_0_0_ANNOTATION_COLUMNS} for row in ROWS["annotations"]]
    old_schema = pa.schema([ANNOTATION_SCHEMA.field(n) for n in _V1_0_0_ANNOTATION_COLUMNS])
    pq.write_table(table_from_rows(old_rows, ANNOTATION_SCHEMA).select(old_schema.names), tmp_path / "old.parquet")
    read = pq.read_table(tmp_path / "old.parquet", schema=ANNOTATION_SCHEMA)
    assert read.num_rows == 3
    assert read.column("occlusion_level").to_pylist() == [None] * 3
    assert read.column("sample_id").to_pylist() == [r["sample_id"] for r in ROWS["annotations"]]


_V1_0_0_ANNOTATION_COLUMNS = (
    "sample_id", "image_key", "shard", "source_uri", "image_width", "image_height", "person_idx", "bbox_xyxy",
    "crop_bbox_xywh", "keypoints_2d", "keypoint_source", "det_score", "global_orient", "body_pose", "betas", "transl",
    "focal_length", "principal_point", "joints_3d", "joints_2d_proj", "reproj_err_px", "reproj_err_norm",
    "n_kp_valid", "kp_conf_mean", "vposer_z_norm", "betas_absmax", "joint_consistency_mm", "truncation",
    "box_size_px", "crowding_iou", "flip_pa_mpjpe_mm", "confidence", "quality_tier", "reasons", "model_id",
    "schema_version",
)  # fmt: skip


def test_schema_version_metadata() -> None:
    assert SCHEMA_VERSION == "2.0.0"
    for schema in ALL_SCHEMAS.values():
        assert schema.metadata[b"schema_version"] == SCHEMA_VERSION.encode()


def test_with_file_metadata_rejects_empty_values() -> None:
    with pytest.raises(ValueError, match="config_hash"):
        with_file_metadata(ERROR_SCHEMA, pipeline_version="1", config_hash="")
    with pytest.raises(ValueError, match="schema_version"):
        with_file_metadata(pa.schema([("a", pa.int32())]), pipeline_version="1", config_hash="x")


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_every_field_is_documented_and_lists_have_non_null_elements(name: str) -> None:
    for field in ALL_SCHEMAS[name]:
        assert _meta(field, b"description"), f"{name}.{field.name} has no description"
        type_ = field.type
        while pa.types.is_fixed_size_list(type_) or pa.types.is_list(type_):
            assert not type_.value_field.nullable, f"{name}.{field.name} allows null list elements"
            type_ = type_.value_type


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_units_and_frames(name: str) -> None:
    """Rule: every float column (scalar or list) states a unit ("1" if dimensionless), and every
    coordinate-like column (px, m, rad) states its frame. Floats are float32 throughout."""
    for field in ALL_SCHEMAS[name]:
        unit, frame = _meta(field, b"unit"), _meta(field, b"frame")
        if pa.types.is_floating(_leaf_type(field.type)):
            assert _leaf_type(field.type) == pa.float32(), f"{name}.{field.name} is not float32"
            assert unit, f"{name}.{field.name} is a float column without a unit"
        if unit in {"px", "m", "rad"}:
            assert frame in {FRAME_IMAGE, FRAME_CAMERA, FRAME_SMPL_PARENT}, f"{name}.{field.name} has no frame"


def test_annotation_contract_columns() -> None:
    """DESIGN.md 3.3 columns, with their shapes and units."""
    schema = ANNOTATION_SCHEMA
    expected_lists = {
        "bbox_xyxy": ([4], "px"),
        "crop_bbox_xywh": ([4], "px"),
        "keypoints_2d": ([17, 3], "px"),
        "global_orient": ([3], "rad"),
        "body_pose": ([69], "rad"),
        "betas": ([10], "1"),
        "transl": ([3], "m"),
        "principal_point": ([2], "px"),
        "joints_3d": ([24, 3], "m"),
        "joints_2d_proj": ([17, 2], "px"),
    }
    for name, (shape, unit) in expected_lists.items():
        type_, sizes = schema.field(name).type, []
        while pa.types.is_fixed_size_list(type_):
            sizes.append(type_.list_size)
            type_ = type_.value_type
        assert (sizes, _meta(schema.field(name), b"unit")) == (shape, unit), name
    for name in ("global_orient", "transl", "joints_3d"):
        assert _meta(schema.field(name), b"frame") == FRAME_CAMERA
    for name in [
        "sample_id",
        "image_key",
        "shard",
        "source_uri",
        "image_width",
        "image_height",
        "person_idx",
        "keypoint_source",
        "focal_length",
        "reproj_err_px",
        "reproj_err_norm",
        "n_kp_valid",
        "kp_conf_mean",
        "vposer_z_norm",
        "betas_absmax",
        "joint_consistency_mm",
        "truncation",
        "box_size_px",
        "crowding_iou",
        "flip_pa_mpjpe_mm",
        "confidence",
        "quality_tier",
        "reasons",
        "model_id",
        "schema_version",
    ]:
        assert name in schema.names, name
    assert schema.field("flip_pa_mpjpe_mm").nullable
    assert not schema.field("confidence").nullable
    assert schema.field("reasons").type == pa.list_(pa.field("element", pa.string(), nullable=False))


def test_error_codes() -> None:
    for code in (
        "zero_bytes",
        "not_an_image",
        "corrupt_image",
        "decompression_bomb",
        "duplicate",
        "read_failed",
        "no_valid_keypoints",
        "nan_output",
    ):
        assert code in ERROR_REASONS
    assert ErrorReason("corrupt_image") is ErrorReason.CORRUPT_IMAGE
    assert len(ERROR_REASONS) == len(ErrorReason)
    assert {"shard.read", "shard.decode", "label.decode", "label.preprocess", "label.inference"} <= {
        stage.value for stage in ErrorStage
    }

"""Unit tests of dpmesh-export's building blocks: joint mapping, tier rule, selection, members, crops, card, config."""

import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

from pipelines.cli import unknown_keys
from pipelines.common.safe_paths import UnsafeName
from pipelines.common.shard_members import MemberError, MemberRef, iter_members, read_member_at
from pipelines.config import ConfigError, ExportFormat, ExportJobConfig, SelectConfig, compose_config
from pipelines.config.compose import register_configs, to_job_config
from pipelines.export.checks import CHECKED_COLUMNS, check_rows, lineage_problem, usable_index
from pipelines.export.crop import crop_transform, square_crop, to_crop_pixels
from pipelines.export.finish import aggregate, build_stats, render_card
from pipelines.export.formats.base import TarBuilder
from pipelines.export.formats.camerahmr import CameraHmrWriter
from pipelines.export.formats.crops import keypoints_in_crop
from pipelines.export.job import run as export
from pipelines.export.joints44 import HMR44_JOINT_NAMES, coco17_to_hmr44
from pipelines.export.records import LINEAGE_COLUMNS, OCCLUSION_COLUMNS, smpl_supervised
from pipelines.export.selection import check_selection, parse_where, select_rows
from pipelines.storage import Storage
from schemas import ANNOTATION_SCHEMA, COCO17_KEYPOINT_NAMES


def _coco17(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kp = np.concatenate([rng.uniform(10, 300, (17, 2)), rng.choice([0.5, 1.0], (17, 1))], axis=1)
    return kp.astype(np.float32)


def test_the_44_joint_layout_is_openpose_25_then_19_extra() -> None:
    assert len(HMR44_JOINT_NAMES) == 44
    assert HMR44_JOINT_NAMES[:2] == ("OP Nose", "OP Neck")
    assert HMR44_JOINT_NAMES[24] == "OP RHeel"
    assert HMR44_JOINT_NAMES[25] == "Right Ankle"
    assert HMR44_JOINT_NAMES[39] == "Pelvis (MPII)"
    assert HMR44_JOINT_NAMES[43] == "Head (H36M)"


def test_each_coco_joint_fills_its_openpose_slot_and_the_rest_is_missing() -> None:
    kp = _coco17()
    out = coco17_to_hmr44(kp)
    assert out.shape == (44, 3)
    assert out.dtype == np.float32
    pairs = {
        "nose": "OP Nose", "left_eye": "OP LEye", "right_eye": "OP REye", "left_ear": "OP LEar",
        "right_ear": "OP REar", "left_shoulder": "OP LShoulder", "right_shoulder": "OP RShoulder",
        "left_elbow": "OP LElbow",
        "right_elbow": "OP RElbow", "left_wrist": "OP LWrist", "right_wrist": "OP RWrist", "left_hip": "OP LHip",
        "right_hip": "OP RHip", "left_knee": "OP LKnee", "right_knee": "OP RKnee", "left_ankle": "OP LAnkle",
        "right_ankle": "OP RAnkle",
    }  # fmt: skip
    for coco, slot in pairs.items():
        np.testing.assert_array_equal(out[HMR44_JOINT_NAMES.index(slot)], kp[COCO17_KEYPOINT_NAMES.index(coco)])
    ls, rs = kp[COCO17_KEYPOINT_NAMES.index("left_shoulder")], kp[COCO17_KEYPOINT_NAMES.index("right_shoulder")]
    neck = out[HMR44_JOINT_NAMES.index("OP Neck")]
    np.testing.assert_allclose(neck[:2], (ls[:2] + rs[:2]) / 2)
    assert neck[2] == min(ls[2], rs[2])
    filled = {HMR44_JOINT_NAMES.index(s) for s in pairs.values()} | {1, HMR44_JOINT_NAMES.index("OP MidHip")}
    rest = [i for i in range(44) if i not in filled]
    assert len(rest) == 44 - 19
    assert not out[rest].any()


def test_missing_coco_joints_stay_zero_and_break_derived_joints() -> None:
    kp = _coco17()
    kp[COCO17_KEYPOINT_NAMES.index("left_hip"), 2] = 0.0
    kp[COCO17_KEYPOINT_NAMES.index("nose"), 0] = np.nan
    out = coco17_to_hmr44(np.stack([kp, kp]))  # batched
    assert out.shape == (2, 44, 3)
    for slot in ("OP LHip", "OP MidHip", "OP Nose"):
        assert not out[:, HMR44_JOINT_NAMES.index(slot)].any()
    assert np.isfinite(out).all()


def test_smpl_supervision_follows_the_tier() -> None:
    assert smpl_supervised("gold")
    assert smpl_supervised("silver")
    assert not smpl_supervised("bronze")
    assert not smpl_supervised("reject")


def _table(extra: dict[str, list[object]] | None = None) -> pa.Table:
    n = 4
    columns = {
        "sample_id": [f"k{i}_p0" for i in range(n)],
        "quality_tier": ["gold", "silver", "bronze", "gold"],
        "confidence": pa.array([0.9, 0.5, 0.2, 0.8], pa.float32()),
        "n_kp_valid": pa.array([17, 12, 5, 9], pa.int32()),
        **(extra or {}),
    }
    return pa.table(columns)


def test_select_by_tier_confidence_and_where_keeps_the_row_order() -> None:
    table = _table()
    assert select_rows(table, SelectConfig()).num_rows == 4
    assert select_rows(table, SelectConfig(tiers=["gold"]))["sample_id"].to_pylist() == ["k0_p0", "k3_p0"]
    assert select_rows(table, SelectConfig(min_confidence=0.5))["sample_id"].to_pylist() == ["k0_p0", "k1_p0", "k3_p0"]
    both = select_rows(table, SelectConfig(tiers=["gold", "bronze"], where="n_kp_valid < 12"))
    assert both["sample_id"].to_pylist() == ["k2_p0", "k3_p0"]
    assert select_rows(table, SelectConfig(where="n_kp_valid > 100")).num_rows == 0


def test_select_by_occlusion_level_needs_the_column() -> None:
    with pytest.raises(ConfigError, match="occlusion_level column"):
        check_selection(SelectConfig(occlusion_levels=["heavy"]), _table().schema)
    table = _table({"occlusion_level": ["none", "heavy", "partial", "heavy"]})
    check_selection(SelectConfig(occlusion_levels=["heavy"]), table.schema)
    assert select_rows(table, SelectConfig(occlusion_levels=["heavy"]))["sample_id"].to_pylist() == ["k1_p0", "k3_p0"]


def test_a_bad_where_fails_at_launch_naming_it() -> None:
    with pytest.raises(ConfigError, match=re.escape("select.where='nope > 1'")):
        check_selection(SelectConfig(where="nope > 1"), ANNOTATION_SCHEMA)
    with pytest.raises(ConfigError, match=r"select\.where"):
        check_selection(SelectConfig(where="confidence >"), ANNOTATION_SCHEMA)
    check_selection(SelectConfig(where="confidence > 0.5 AND betas[1] < 3"), ANNOTATION_SCHEMA)


def test_select_config_refuses_unknown_tiers_and_levels() -> None:
    with pytest.raises(ConfigError, match=re.escape("select.tiers: 'reject'")):
        SelectConfig(tiers=["reject"])
    with pytest.raises(ConfigError, match=r"select\.occlusion_levels"):
        SelectConfig(occlusion_levels=["some"])
    with pytest.raises(ConfigError, match="min_confidence"):
        SelectConfig(min_confidence=1.5)


def _tar(members: dict[str, bytes]) -> tuple[bytes, dict[str, MemberRef]]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        refs = {
            m.name: MemberRef(m.name, m.offset_data, m.size, hashlib.sha1(members[m.name]).hexdigest())
            for m in tar.getmembers()
        }
    return raw, refs


class _ForwardOnly(io.RawIOBase):
    """A stream that can only be read forward, like an object-store response body."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos : end], min(end, len(self._data))
        return chunk


def test_members_are_read_by_offset_at_random_and_in_one_forward_pass() -> None:
    members = {f"k{i}.jpg": bytes([i]) * (700 + 300 * i) for i in range(4)}
    raw, refs = _tar(members)
    assert read_member_at(io.BytesIO(raw), refs["k2.jpg"]) == members["k2.jpg"]
    wanted = [refs["k3.jpg"], refs["k1.jpg"]]
    for stream in (io.BytesIO(raw), _ForwardOnly(raw)):  # a local file seeks, an object-store stream skips
        assert [(r.key, d) for r, d in iter_members(stream, wanted)] == [
            ("k1.jpg", members["k1.jpg"]),
            ("k3.jpg", members["k3.jpg"]),
        ]
    changed = MemberRef("k1.jpg", refs["k1.jpg"].offset, refs["k1.jpg"].size, "0" * 40)
    with pytest.raises(MemberError, match="sha1"):
        read_member_at(io.BytesIO(raw), changed)
    with pytest.raises(MemberError, match="ends before"):
        list(iter_members(_ForwardOnly(raw[:1000]), [refs["k3.jpg"]]))
    with pytest.raises(MemberError, match="ends inside"):
        list(iter_members(io.BytesIO(raw[: refs["k3.jpg"].offset + 10]), [refs["k3.jpg"]]))


def test_crops_map_points_like_the_pixels() -> None:
    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[20:30, 40:50] = 255  # a white square at x 40..50, y 20..30
    box = np.array([30.0, 10.0, 40.0, 40.0], np.float32)
    crop = square_crop(pixels, box, 80)  # x2: the square lands at 20..40 in the crop
    assert crop.shape == (80, 80, 3)
    assert crop[25:35, 25:35].min() == 255
    assert crop[:15].max() == 0
    assert crop[45:].max() == 0
    np.testing.assert_allclose(to_crop_pixels(np.array([[40.0, 20.0, 1.0]]), box, 80), [[20.0, 20.0, 1.0]])
    outside = square_crop(pixels, np.array([-20.0, -20.0, 40.0, 40.0]), 40)  # black past the border
    assert outside[:19, :19].max() == 0
    k = np.array([[100.0, 0, 40], [0, 100, 30], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(crop_transform(box, 80) @ k, [[200, 0, 20], [0, 200, 40], [0, 0, 1]])
    missing = keypoints_in_crop(np.array([[40.0, 20.0, 0.0], [40.0, 20.0, 0.5]], np.float32), box, 80)
    np.testing.assert_allclose(missing, [[0, 0, 0], [20, 20, 0.5]])


def test_card_says_occlusion_is_unrecorded_rather_than_absent() -> None:
    marker = {
        "shard": "shard-000000",
        "counts": {"images": 1, "persons": 2, "rows_in": 2, "persons_skipped": 0},
        "tiers": {"bronze": 2},
        "occlusion_levels": None,
        "model_ids": ["m"],
        "skipped_images": [],
    }
    assert aggregate([marker])["occlusion_levels"] is None
    with_levels = {**marker, "shard": "shard-000001", "occlusion_levels": {"heavy": 2}}
    assert aggregate([with_levels])["occlusion_levels"] == {"heavy": 2}
    assert aggregate([marker, with_levels])["occlusion_levels"] is None  # part of the set is unknown
    provenance = {
        "labels": "L",
        "shards": "S",
        "label_run": {"model": {"name": "tiny"}},
        "body_model": None,
        "export": {"format": "hmr2", "pipeline_version": "0", "config_hash": "h", "select": {}},
    }
    card = render_card(build_stats([marker], provenance))
    assert "Not for training" in card
    assert "not recorded" in card
    assert "| bronze | 2 |" in card
    assert "SMPL" in card
    assert "Licences" in card


def test_export_config_composes_and_has_no_unknown_keys() -> None:
    cfg = compose_config(
        "dpmesh_export",
        ["input.labels=L", "input.shards=S", "output=O", "format=crops", "select.tiers=[gold,silver]"],
        ExportJobConfig,
    )
    assert cfg.format == ExportFormat.crops
    assert cfg.select.tiers == ["gold", "silver"]
    assert cfg.export.crop_size == 256
    register_configs()
    with initialize_config_module("pipelines.conf", version_base="1.3"):
        node = compose("dpmesh_export", overrides=["input.labels=L", "input.shards=S", "output=O", "+select.tire=1"])
        assert list(unknown_keys(node, to_job_config(node, ExportJobConfig))) == ["select.tire"]
    with pytest.raises(ConfigError, match="crop_size"):
        compose_config(
            "dpmesh_export", ["input.labels=L", "input.shards=S", "output=O", "export.crop_size=2"], ExportJobConfig
        )
    with pytest.raises(ConfigCompositionException, match="format=spin"):
        compose_config(
            "dpmesh_export", ["input.labels=L", "input.shards=S", "output=O", "format=spin"], ExportJobConfig
        )


def test_the_columns_carried_into_exports_are_schema_columns() -> None:
    names = set(ANNOTATION_SCHEMA.names)
    assert set(LINEAGE_COLUMNS) <= names
    assert set(OCCLUSION_COLUMNS) <= names


def test_a_dry_run_prints_the_per_shard_graph_and_touches_nothing(tmp_path: Path) -> None:
    overrides = [f"input.labels={tmp_path / 'none'}", f"input.shards={tmp_path / 'none'}", f"output={tmp_path / 'o'}"]
    plan = export(compose_config("dpmesh_export", [*overrides, "runner.dry_run=true"], ExportJobConfig))
    assert [s["name"] for s in plan["steps"]][:3] == ["ListShards", "SpreadShards", "ExportShards"]
    assert not (tmp_path / "o").exists()


def test_provenance_of_a_refiltered_output_is_the_labeling_run_behind_it(tmp_path: Path) -> None:
    import json

    from pipelines.export.finish import provenance
    from pipelines.storage import Storage

    label_run = {
        "created_by": "dpmesh-label",
        "pipeline_version": "0.1.0",
        "config_hash": "abc",
        "config": {"model": {"name": "tiny"}, "detector": {"name": "annotations"}, "input": {}},
        "model_ids": ["tiny-seed0"],
        "body_models": {"synthetic_random_body_64v": "f" * 64},
    }
    refiltered = {"created_by": "dpmesh-refilter", "config_hash": "def", "thresholds": {"gold_min": 0.9}}
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "_summary.json").write_text(json.dumps({**refiltered, "label_run": label_run}))
    cfg = compose_config(
        "dpmesh_export", [f"input.labels={tmp_path / 'labels'}", "input.shards=S", "output=O"], ExportJobConfig
    )
    prov = provenance(cfg, Storage(), ANNOTATION_SCHEMA)
    assert prov["label_run"]["config_hash"] == "abc"  # the labeling run's, not the refilter's
    assert prov["label_run"]["model_ids"] == ["tiny-seed0"]
    assert prov["label_run"]["refiltered_by"] == "dpmesh-refilter"
    assert prov["label_run"]["thresholds"] == {"gold_min": 0.9}  # the tiers come from the refilter's thresholds
    assert prov["body_model"] == f"synthetic_random_body_64v (sha256 {'f' * 64})"


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("true); COPY (SELECT 1) TO 'x.csv'; SELECT 1 WHERE (true", "';'"),
        ("true) TO 'x.csv' --", "not one SQL expression"),
        ("confidence > 0, n_kp_valid > 1", "not one SQL expression"),
        ("confidence > (SELECT 1)", "subquery"),
        ("EXISTS (SELECT * FROM read_text('/etc/hostname'))", "subquery"),
        ("confidence IN (SELECT confidence FROM read_parquet('x.parquet'))", "subquery"),
    ],
)
def test_a_where_that_is_not_one_plain_expression_is_refused_in_one_line(where: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_where(where)
    assert str(raised.value).startswith(f"select.where={where!r}")
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=message):  # the launch check parses before it binds or runs anything
        check_selection(SelectConfig(where=where), ANNOTATION_SCHEMA)


def test_plain_where_expressions_pass_and_the_engine_has_no_file_access() -> None:
    for where in ("n_kp_valid >= 12 AND crowding_iou > 0.3", "source_uri LIKE '%select%'", "betas[1] < 3 -- note"):
        check_selection(SelectConfig(where=where), ANNOTATION_SCHEMA)
    import duckdb

    from pipelines.export.selection import _connect  # the connection every where runs on: defence in depth

    connection = _connect()
    try:
        with pytest.raises(duckdb.Error, match="disabled"):
            connection.execute("SELECT * FROM read_text('/etc/hostname')")
    finally:
        connection.close()


def _rows_table(rows: list[dict[str, object]]) -> pa.Table:
    """A table of the columns :func:`check_rows` reads, typed as in the annotation schema."""
    fields = [ANNOTATION_SCHEMA.field(name) for name in ("image_key", "sample_id", "person_idx", *CHECKED_COLUMNS)]
    schema = pa.schema([field.with_nullable(True) for field in fields])
    good = {
        "keypoints_2d": [[1.0, 2.0, 1.0]] * 17,
        "bbox_xyxy": [0.0, 0.0, 10.0, 10.0],
        "crop_bbox_xywh": [0.0, 0.0, 10.0, 10.0],
        "global_orient": [0.0] * 3,
        "body_pose": [0.0] * 69,
        "betas": [0.0] * 10,
        "transl": [0.0, 0.0, 3.0],
        "focal_length": 100.0,
        "principal_point": [5.0, 5.0],
        "confidence": 0.5,
    }
    return pa.Table.from_pylist([{**good, **row} for row in rows], schema=schema)


def test_rows_with_bad_keys_or_values_become_error_entries_and_the_rest_go_on() -> None:
    table = _rows_table(
        [
            {"image_key": "a-1", "sample_id": "a-1_p0", "person_idx": 0},
            {"image_key": "../../x/EXPORT", "sample_id": "../../x/EXPORT_p0", "person_idx": 0},
            {"image_key": "a-1", "sample_id": "b-2_p1", "person_idx": 1},  # another image's id
            {"image_key": "a-1", "sample_id": "a-1_p0", "person_idx": 0},  # the same person again
            {"image_key": "c-3", "sample_id": "c-3_p0", "person_idx": 0, "betas": [float("nan")] + [0.0] * 9},
            {"image_key": "c-3", "sample_id": "c-3_p1", "person_idx": 1, "transl": [0.0, float("inf"), 1.0]},
            {"image_key": "c-3", "sample_id": "c-3_p2", "person_idx": 2, "focal_length": None},
            {"image_key": "d-4", "sample_id": "d-4_p0", "person_idx": 0},
        ]
    )
    kept, errors = check_rows(table)
    assert kept["sample_id"].to_pylist() == ["a-1_p0", "d-4_p0"]
    assert [(e["sample_id"], e["reason"]) for e in errors] == [
        ("../../x/EXPORT_p0", "invalid_key"),
        ("b-2_p1", "invalid_key"),
        ("a-1_p0", "duplicate_sample_id"),
        ("c-3_p0", "non_finite_label"),
        ("c-3_p1", "non_finite_label"),
        ("c-3_p2", "invalid_label_value"),
    ]
    assert "betas" in errors[3]["error"]


def test_index_rows_with_bad_keys_are_never_used() -> None:
    rows = [{"key": "a-1", "tar_offset": 512}, {"key": "../../x/victim", "tar_offset": 0}, {"key": None}]
    index, skipped = usable_index(rows)
    assert list(index) == ["a-1"]
    assert [(s["reason"], s["persons"]) for s in skipped] == [("invalid_key", 0), ("invalid_key", 0)]


def _shard_file(tmp_path: Path) -> tuple[str, int, str]:
    data = b"a shard tar" * 100
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(data)
    return str(path), len(data), hashlib.sha1(data).hexdigest()


def test_lineage_compares_the_tar_with_what_the_labels_were_made_from(tmp_path: Path) -> None:
    storage = Storage()
    uri, size, sha1 = _shard_file(tmp_path)
    marker = {"shard_identity": {"tar_bytes": size, "tar_sha1": sha1}}
    manifest = {"tar_bytes": size, "tar_sha1": sha1}
    assert lineage_problem(storage, uri, size, manifest, marker) is None
    assert lineage_problem(storage, uri, size, None, marker) is None  # no manifest record: the tar is hashed
    other = {"tar_bytes": size, "tar_sha1": "0" * 40}
    assert "sha1" in (lineage_problem(storage, uri, size, other, marker) or "")  # a resharded set's manifest
    stale = {"tar_bytes": size + 1, "tar_sha1": sha1}  # the manifest no longer speaks for the tar: hashed
    assert lineage_problem(storage, uri, size, stale, marker) is None
    assert "bytes" in (lineage_problem(storage, uri, size + 5, manifest, marker) or "")
    wrong_content = {"shard_identity": {"tar_bytes": size, "tar_sha1": "f" * 40}}
    assert "sha1" in (lineage_problem(storage, uri, size, None, wrong_content) or "")
    # Labeled without a manifest: the identity holds no sha1, what the label run read does.
    unlisted = {"shard_identity": {"tar_bytes": size, "tar_sha1": None}, "tar_read": {"tar_sha1": "f" * 40}}
    assert "sha1" in (lineage_problem(storage, uri, size, None, unlisted) or "")
    assert "no shard_identity" in (lineage_problem(storage, uri, size, manifest, {}) or "")


def test_tar_members_and_loose_images_are_plain_names_inside_output(tmp_path: Path) -> None:
    storage = Storage()
    out = tmp_path / "a" / "out"
    builder = TarBuilder(storage, str(out), str(out / "shard-000000.tar"))
    assert Path(builder.path).parent == out / "_tmp"  # built in the output's own scratch folder
    for name in ("../x.jpg", "/abs.jpg", "sub/k.jpg", ".."):
        with pytest.raises(UnsafeName):
            builder.add(name, b"")
    builder.add("k-1.jpg", b"jpeg")
    builder.publish()
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert tar.getnames() == ["k-1.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["_tmp", "shard-000000.tar"]
    assert not list((out / "_tmp").iterdir()), "the scratch file is gone once published"

    victim = tmp_path / "x" / "victim.jpg"
    victim.parent.mkdir()
    victim.write_bytes(b"not ours")
    (out / "images").mkdir()
    (out / "images" / "k-2.jpg").write_bytes(b"ours")
    CameraHmrWriter.withdraw(storage, str(out), "shard-000000", {"../../x/victim", "k-2", ""})
    assert victim.read_bytes() == b"not ours"
    assert not (out / "images" / "k-2.jpg").exists()
    assert not (out / "shard-000000.npz").exists()


def test_card_and_stats_name_what_was_not_exported() -> None:
    exported = {
        "shard": "shard-000000",
        "counts": {"rows_in": 3, "rows_selected": 3, "images": 1, "persons": 2, "persons_skipped": 1},
        "skipped_by_reason": {"non_finite_label": 1},
        "reconciled": True,
        "shard_error": None,
        "tiers": {"gold": 2},
        "occlusion_levels": {},
        "errors": [{"sample_id": "k-1_p2", "image_key": "k-1", "reason": "non_finite_label", "error": "betas"}],
        "skipped_images": [],
    }
    refused = {
        **exported,
        "shard": "shard-000001",
        "counts": {"rows_in": 4, "rows_selected": 4, "images": 0, "persons": 0, "persons_skipped": 4},
        "skipped_by_reason": {"lineage_mismatch": 4},
        "shard_error": {"reason": "lineage_mismatch", "error": "sha1 differs"},
        "tiers": {},
        "errors": [],
    }
    stats = build_stats(
        [exported, refused],
        {
            "export": {"format": "hmr2", "pipeline_version": "0", "config_hash": "h", "select": {}},
            "labels": "L",
            "shards": "S",
        },
    )
    assert stats["skipped_by_reason"] == {"lineage_mismatch": 4, "non_finite_label": 1}
    assert stats["shard_errors"] == [{"shard": "shard-000001", "reason": "lineage_mismatch", "error": "sha1 differs"}]
    assert stats["errors"][0]["shard"] == "shard-000000"
    card = render_card(stats)
    assert "persons: 2 (of 7 accepted label rows, 7 selected; 5 not exported" in card
    assert "lineage_mismatch 4, non_finite_label 1" in card
    assert "shard-000001 (lineage_mismatch)" in card

"""The inputs of the dpmesh-label and dpmesh-refilter job tests, built once per session (per xdist worker):

* ``label_inputs``: 8 annotated images sharded by dpmesh-shard (shards of 3), plus a hand-made bad shard and a
  truncated copy of a real shard, all in the shard set's manifest;
* ``tiny_labeled``: those shards labeled by the tiny model; ``fake_labeled``: by the numpy stand-in
  (tests/fakes/fake_dpmesh.py), whose worker processes load no torch.

Read-only: a test that changes an output copies it first. tests/conftest.py loads this module as a plugin.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run
from pipelines.shard.job import run as shard
from tests.fakes.corpus import make_images, write_annotated
from tests.fakes.fake_dpmesh import FakeDPMeshHandler


N_IMAGES = 8


def label_config(*overrides: str) -> LabelJobConfig:
    return compose_config("dpmesh_label", ["log_level=WARNING", "progress_interval_s=0", *overrides], LabelJobConfig)


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _bad_shard(path: Path, good_jpeg: bytes, keypoints: list) -> None:
    """A hand-written shard: a corrupt image with 2 persons, a good image with a valid, an empty, a NaN and an
    outside-the-image person, an unreadable JSON, and an image without persons (6 persons in, 5 of them errors)."""
    nan_keypoints = [list(k) for k in keypoints]
    nan_keypoints[4][0] = float("nan")
    outside = [[5000.0 + x, y, v] for x, y, v in keypoints]
    samples = [
        ("bad_a-000000000001", b"\xff\xd8 not really a jpeg", {"persons": [{"keypoints": keypoints}] * 2}),
        (
            "bad_b-000000000002",
            good_jpeg,
            {"persons": [{"keypoints": k} for k in (keypoints, [[0, 0, 0]] * 17, nan_keypoints, outside)]},
        ),
        ("bad_c-000000000003", good_jpeg, None),
        ("bad_d-000000000004", good_jpeg, {"persons": []}),
    ]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, meta in samples:
            _member(tar, f"{key}.jpg", image)
            doc = b"{broken" if meta is None else json.dumps({"source_uri": f"/src/{key}.jpg", **meta}).encode()
            _member(tar, f"{key}.json", doc)


@pytest.fixture(scope="session")
def label_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Shards of 8 annotated images (from dpmesh-shard), plus a hand-made bad shard and a truncated shard."""
    root = tmp_path_factory.mktemp("label")
    images = make_images(N_IMAGES, seed=11, width=320, height=240, persons=(1, 2))
    corpus = write_annotated(str(root), images)
    out = root / "shards"
    cfg = compose_config(
        "dpmesh_shard",
        [
            f"input.images={corpus.images}",
            f"input.annotations={corpus.annotations}",
            f"output={out}",
            "shard.max_samples=3",
            "log_level=WARNING",
        ],
        ShardJobConfig,
    )
    manifest = shard(cfg)
    keypoints = images[0].persons[0]["keypoints"]
    _bad_shard(out / "shard-000900.tar", images[0].data, keypoints)
    # A copy of a real shard cut at a member boundary: the tar stream ends cleanly, only its index tells.
    first = manifest["shards"][0]["shard"]
    data = (out / f"{first}.tar").read_bytes()
    with tarfile.open(out / f"{first}.tar") as tar:
        boundary = tar.getmembers()[2].offset
    (out / "shard-000901.tar").write_bytes(data[:boundary])
    index = pq.read_table(out / f"{first}.parquet")
    pq.write_table(index, out / "shard-000901.parquet")
    _add_to_manifest(out, ["shard-000900", "shard-000901"])
    persons = sum(s["persons"] for s in manifest["shards"])
    return {
        "shards": str(out),
        "persons": str(persons),
        "root": str(root),
        "truncated_from": first,
        "truncated_persons": str(sum(index.column("n_persons").to_pylist())),
    }


def _add_to_manifest(folder: Path, shards: list[str]) -> None:
    """Lists hand-made tars in the shard set's manifest, as if dpmesh-shard had written them."""
    manifest = json.loads((folder / "_manifest.json").read_text())
    for name in shards:
        data = (folder / f"{name}.tar").read_bytes()
        entry = {"shard": name, "tar_bytes": len(data), "tar_sha1": hashlib.sha1(data).hexdigest()}
        manifest["shards"] = [s for s in manifest["shards"] if s["shard"] != name] + [entry]
    (folder / "_manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


@pytest.fixture(scope="session")
def tiny_labeled(label_inputs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    output = str(tmp_path_factory.mktemp("labels") / "out")
    return output, run(label_config(f"input.shards={label_inputs['shards']}", f"output={output}"))


def fake_label(*overrides: str) -> dict:
    """``dpmesh-label`` with the numpy stand-in for the model."""
    cfg = label_config(*overrides)
    return run(cfg, handler=FakeDPMeshHandler(cfg.model))


@pytest.fixture(scope="session")
def fake_labeled(label_inputs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    output = str(tmp_path_factory.mktemp("fake-labels") / "out")
    summary = fake_label(f"input.shards={label_inputs['shards']}", f"output={output}")
    assert summary["reconciled"]
    assert summary["counts"]["persons_accepted"] > 0, "the stand-in's labels pass the filter"
    return output, summary


def label_table(output: str | Path) -> pa.Table:
    """Every accepted and rejected row of a label (or refilter) output, one table."""
    paths = sorted(Path(output).glob("annotations/*.parquet")) + sorted(Path(output).glob("rejected/*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in paths])


def stored_label_row(idx: int, conf: float) -> dict[str, Any]:
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

"""dpmesh-shard + dpmesh-label with detection: plain images -> RT-DETR + ViTPose (tiny, random) -> DPMesh (tiny).

The detector and keypoint model are the real ``transformers`` classes at tiny widths, saved to a folder and
loaded through the pipeline's own path (``detector.detector_model=<dir>``), offline.
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run
from pipelines.shard.job import run as shard
from tests.fakes.corpus import make_images, write_coco, write_corpus
from tests.fakes.tiny_detectors import save_tiny_detector, save_tiny_pose


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("detectors")
    return save_tiny_detector(root / "rtdetr"), save_tiny_pose(root / "vitpose")


def _shard(root: Path, annotated: int) -> str:
    """4 plain images; the first ``annotated`` of them listed in a COCO file."""
    images = make_images(4, seed=5, width=160, height=120, persons=(1, 1))
    write_corpus(str(root / "images"), images)
    overrides = [f"input.images={root / 'images'}", f"output={root / 'shards'}", "log_level=WARNING"]
    if annotated:
        write_coco(str(root / "coco.json"), images[:annotated])
        overrides.append(f"input.annotations={root / 'coco.json'}")
    shard(compose_config("dpmesh_shard", overrides, ShardJobConfig))
    return str(root / "shards")


def _label(shards: str, output: str, models: tuple[str, str], detector: str, *extra: str) -> dict:
    cfg = compose_config(
        "dpmesh_label",
        [
            f"input.shards={shards}",
            f"output={output}",
            f"detector={detector}",
            f"detector.detector_model={models[0]}",
            f"detector.pose_model={models[1]}",
            "detector.device=cpu",
            "detector.batch_size=3",
            "detector.pose_batch_size=4",
            "detector.max_persons=2",
            "filter=off",
            "model.batch_size=4",
            "log_level=WARNING",
            "progress_interval_s=0",
            *extra,
        ],
        LabelJobConfig,
    )
    return run(cfg)


def _rows(output: str, folder: str) -> list[dict]:
    return [r for p in sorted(Path(output, folder).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_plain_images_are_labeled_from_detections(models: tuple[str, str], tmp_path: Path) -> None:
    shards = _shard(tmp_path, annotated=0)
    output = str(tmp_path / "labels")
    summary = _label(shards, output, models, "vitpose")
    assert summary["reconciled"] is True
    rows = _rows(output, "annotations") + _rows(output, "rejected")
    errors = [e for e in _rows(output, "errors") if e["person_idx"] is not None]
    assert summary["counts"]["persons_in"] == len(rows) + len(errors) == 4 * 2  # max_persons per image
    assert rows
    assert {r["keypoint_source"] for r in rows} == {"vitpose"}
    assert all(r["det_score"] is not None and 0.3 <= r["det_score"] <= 1 for r in rows)
    assert sorted((r["image_key"], r["person_idx"]) for r in rows) == [(r["image_key"], r["person_idx"]) for r in rows]
    marker = json.loads(next(Path(output, "_done").glob("*.json")).read_text())
    assert set(marker["detector_models"]) == {"detector", "pose"}
    assert marker["detector_models"]["detector"].startswith(models[0])
    metadata = pq.read_schema(next(Path(output, "annotations").glob("*.parquet"))).metadata
    assert json.loads(metadata[b"detector_models"]) == marker["detector_models"]
    # Reruns are byte-identical: detection batches are cut in shard order like DPMesh's.
    before = {p.name: p.read_bytes() for p in Path(output).glob("*/shard-*.parquet")}
    _label(shards, output, models, "vitpose", "overwrite=true")
    assert before == {p.name: p.read_bytes() for p in Path(output).glob("*/shard-*.parquet")}


def test_auto_uses_annotations_where_present_and_detection_elsewhere(models: tuple[str, str], tmp_path: Path) -> None:
    shards = _shard(tmp_path, annotated=2)
    output = str(tmp_path / "labels")
    summary = _label(shards, output, models, "auto")
    assert summary["reconciled"] is True
    rows = _rows(output, "annotations") + _rows(output, "rejected")
    by_source: dict[str, set[str]] = {}
    for row in rows:
        by_source.setdefault(row["keypoint_source"], set()).add(row["image_key"])
    assert set(by_source) == {"annotations", "vitpose"}
    assert len(by_source["annotations"]) == 2
    assert len(by_source["vitpose"]) == 2
    assert not by_source["annotations"] & by_source["vitpose"]
    assert all(r["det_score"] is None for r in rows if r["keypoint_source"] == "annotations")
    for row in rows:  # lineage and occlusion columns: annotation ids only for annotated persons; visibility by source
        detected = row["keypoint_source"] == "vitpose"
        assert (row["annotation_id"] is None) == detected
        scores = [kp[2] for kp in row["keypoints_2d"]]
        if detected:  # detector scores: >= 0.5 visible, 0.3-0.5 occluded (schemas.occlusion)
            assert row["n_kp_visible"] == sum(s >= 0.5 for s in scores)
            assert row["n_kp_occluded"] == sum(0.3 <= s < 0.5 for s in scores)
        else:  # COCO visibility stored as 1 / 0.5 / 0
            assert row["n_kp_visible"] == scores.count(1.0)
            assert row["n_kp_occluded"] == scores.count(0.5)
        assert row["n_kp_visible"] + row["n_kp_occluded"] + row["n_kp_missing"] == 17

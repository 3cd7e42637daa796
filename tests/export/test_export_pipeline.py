"""dpmesh-export end to end: a corpus (one image EXIF-rotated) sharded and labeled with the tiny model, exported to
each trainer format and read back with small readers written from 4D-Humans' and CameraHMR's documented layouts;
resume; the PyTorch dataset through a 2-worker DataLoader.

The readers below follow the trainers' loaders, not our writers: 4D-Humans ``ImageDataset.load_tars_as_webdataset``
(WebDataset, ``decode("rgb8").rename(jpg="jpg;jpeg;png")``, ``data.pyd`` a list of per-person dicts) and CameraHMR
``DatasetTrain`` (``np.load`` of ``imgname``, ``center``, ``scale`` x 200, ``pose_cam[:, :72]``, ``shape[:, :10]``,
``cam_int``, ``gtkps[:, :44]``, translation ``cam_ext[:, 3][:3] + trans_cam``; images read ignoring EXIF).
"""

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image, ImageOps

from pipelines.config import (
    ConfigError,
    ExportJobConfig,
    LabelJobConfig,
    StorageConfig,
    compose_config,
)
from pipelines.export.job import run as export
from pipelines.export.torch_dataset import LabeledPersonDataset
from pipelines.label.job import run as label
from pipelines.storage import Storage
from schemas import COCO17_KEYPOINT_NAMES
from tests.fakes.corpus import make_images
from tests.fakes.digests import identities
from tests.fakes.export_rows import crop_rows
from tests.fakes.shard_set import label_shards, shard_annotated
from tests.fakes.writes import recorded_writes


ROTATED = "img_00001"  # stored rotated with EXIF orientation 6; its annotations are in the upright frame
# The 44-joint slots 4D-Humans / CameraHMR give the COCO joints (CameraHMR core/constants.py JOINT_NAMES order).
OPENPOSE_SLOT = {
    "nose": 0, "right_shoulder": 2, "right_elbow": 3, "right_wrist": 4, "left_shoulder": 5, "left_elbow": 6,
    "left_wrist": 7, "right_hip": 9, "right_knee": 10, "right_ankle": 11, "left_hip": 12, "left_knee": 13,
    "left_ankle": 14, "right_eye": 15, "left_eye": 16, "right_ear": 17, "left_ear": 18,
}  # fmt: skip
NECK, MID_HIP = 1, 8


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """5 annotated images in 2 shards (one EXIF-rotated), labeled with the tiny model and ``filter=off``."""
    root = tmp_path_factory.mktemp("export")
    images = make_images(5, seed=7, width=200, height=150, persons=(1, 2))
    upright = Image.open(io.BytesIO(images[1].data))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed = stored rotated 90 degrees clockwise
    stored = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, "JPEG", quality=95, exif=exif.tobytes())
    images[1].data = stored.getvalue()
    shards = shard_annotated(root, images, "shard.max_samples=3")
    label_shards(shards, root / "labels", "filter=off")
    rows = pq.read_table(root / "labels" / "annotations").to_pylist()
    return {
        "root": root,
        "rows": {r["sample_id"]: r for r in rows},
        "upright": {ROTATED: np.asarray(upright.convert("RGB"))},
        "original": {Path(img.file_name).stem: img.data for img in images},
    }


def _export(labeled: dict[str, Any], out: Path, fmt: str, *overrides: str) -> dict[str, Any]:
    root = labeled["root"]
    base = [f"input.labels={root / 'labels'}", f"input.shards={root / 'shards'}", f"output={out}", f"format={fmt}"]
    return export(compose_config("dpmesh_export", [*base, "log_level=WARNING", *overrides], ExportJobConfig))


def _pose(row: dict[str, Any]) -> np.ndarray:
    return np.array(row["global_orient"] + row["body_pose"], dtype=np.float32)


def _expected_44(row: dict[str, Any]) -> np.ndarray:
    """The documented mapping, joint by joint."""
    kp = np.array(row["keypoints_2d"], dtype=np.float32)
    out = np.zeros((44, 3), np.float32)
    for name, slot in OPENPOSE_SLOT.items():
        if kp[COCO17_KEYPOINT_NAMES.index(name), 2] > 0:
            out[slot] = kp[COCO17_KEYPOINT_NAMES.index(name)]
    for slot, (a, b) in ((NECK, ("left_shoulder", "right_shoulder")), (MID_HIP, ("left_hip", "right_hip"))):
        ka, kb = kp[COCO17_KEYPOINT_NAMES.index(a)], kp[COCO17_KEYPOINT_NAMES.index(b)]
        if ka[2] > 0 and kb[2] > 0:
            out[slot] = [(ka[0] + kb[0]) / 2, (ka[1] + kb[1]) / 2, min(ka[2], kb[2])]
    return out


def _image_key(labeled: dict[str, Any], stem: str) -> str:
    return next(r["image_key"] for r in labeled["rows"].values() if r["image_key"].startswith(stem))


def _assert_upright(labeled: dict[str, Any], pixels: np.ndarray) -> None:
    reference = labeled["upright"][ROTATED].astype(np.float32)
    assert pixels.shape == reference.shape  # (150, 200, 3): the label frame, not the stored 200 x 150
    assert np.abs(pixels.astype(np.float32) - reference).mean() < 6  # JPEG re-encoding only


def test_hmr2_tars_read_back_with_the_4d_humans_layout(labeled: dict[str, Any], tmp_path: Path) -> None:
    stats = _export(labeled, tmp_path, "hmr2")
    rows = labeled["rows"]
    tars = sorted(str(p) for p in tmp_path.glob("shard-*.tar"))
    assert len(tars) == len(list((labeled["root"] / "labels" / "_done").glob("shard-*.json"))) >= 2
    # 4D-Humans' own loading steps: WebDataset, rgb8 decode, jpg rename, data.pyd unpickled by webdataset.
    dataset = wds.WebDataset(tars, shardshuffle=False).decode("rgb8").rename(jpg="jpg;jpeg;png")
    seen = set()
    for sample in dataset:
        image, people = sample["jpg"], sample["data.pyd"]
        assert isinstance(people, list)
        for person in people:
            row = rows[f"{sample['__key__']}_p{person['personid']}"]
            seen.add(row["sample_id"])
            assert image.shape == (row["image_height"], row["image_width"], 3)
            np.testing.assert_array_equal(person["body_pose"], _pose(row))
            np.testing.assert_array_equal(person["betas"], np.array(row["betas"], np.float32))
            x1, y1, x2, y2 = row["bbox_xyxy"]
            np.testing.assert_allclose(person["center"], [(x1 + x2) / 2, (y1 + y2) / 2], rtol=1e-6)
            np.testing.assert_allclose(person["scale"], [(x2 - x1) / 200, (y2 - y1) / 200], rtol=1e-6)
            np.testing.assert_allclose(person["keypoints_2d"], _expected_44(row), rtol=1e-6)
            assert person["keypoints_2d"].shape == (44, 3)
            assert person["keypoints_3d"].shape == (44, 4)
            assert not person["keypoints_3d"].any()
            expected_has = 1.0 if row["quality_tier"] in ("gold", "silver") else 0.0
            assert float(person["has_body_pose"]) == float(person["has_betas"]) == expected_has
            assert "fitting_loss" not in person["extra_info"]  # 4D-Humans' reprojection filter then keeps the person
            assert person["extra_info"]["sample_id"] == row["sample_id"]
            for column in ("occlusion_level", "annotation_id", "shard_uri"):  # lineage / occlusion, when recorded
                assert person["extra_info"].get(column) == row.get(column)
        if sample["__key__"].startswith(ROTATED):
            _assert_upright(labeled, image)
    assert seen == set(rows)
    assert stats["counts"]["persons"] == len(rows)
    card = (tmp_path / "README.md").read_text()
    assert json.loads((tmp_path / "stats.json").read_text())["tiers"] == stats["tiers"]
    for row in rows.values():  # the card names the weights and the body model behind every label
        assert row["model_id"] in card
        assert row["body_model"] in card


def test_camerahmr_npz_reads_back_with_the_camerahmr_layout(labeled: dict[str, Any], tmp_path: Path) -> None:
    _export(labeled, tmp_path, "camerahmr")
    rows = labeled["rows"]
    seen = set()
    for npz in sorted(tmp_path.glob("shard-*.npz")):
        data = np.load(npz)  # no allow_pickle: plain arrays only
        pose, betas = data["pose_cam"][:, :72], data["shape"][:, :10]
        scale, center, cam_int, gtkps = data["scale"], data["center"], data["cam_int"], data["gtkps"][:, :44]
        translation = data["cam_ext"][:, :, 3].copy()
        translation[:, :3] += data["trans_cam"]
        for i, sample_id in enumerate(data["sample_id"]):
            row = rows[str(sample_id)]
            seen.add(row["sample_id"])
            np.testing.assert_array_equal(pose[i], _pose(row))
            np.testing.assert_array_equal(betas[i], np.array(row["betas"], np.float32))
            x1, y1, x2, y2 = row["bbox_xyxy"]
            np.testing.assert_allclose(scale[i] * 200, max(x2 - x1, y2 - y1), rtol=1e-5)
            np.testing.assert_allclose(center[i], [(x1 + x2) / 2, (y1 + y2) / 2], rtol=1e-6)
            f, (cx, cy) = row["focal_length"], row["principal_point"]
            np.testing.assert_allclose(cam_int[i], [[f, 0, cx], [0, f, cy], [0, 0, 1]], rtol=1e-6)
            np.testing.assert_allclose(translation[i, :3], row["transl"], rtol=1e-6)
            np.testing.assert_allclose(gtkps[i], _expected_44(row), rtol=1e-6)
            # CameraHMR reads images with cv2 IMREAD_IGNORE_ORIENTATION: the file itself must be upright.
            image = Image.open(tmp_path / str(data["imgname"][i]))
            assert image.getexif().get(0x0112) is None
            assert image.size == (row["image_width"], row["image_height"])
            if row["image_key"].startswith(ROTATED):
                _assert_upright(labeled, np.asarray(image.convert("RGB")))
    assert seen == set(rows)


def test_crops_carry_the_row_and_crop_pixel_keypoints(labeled: dict[str, Any], tmp_path: Path) -> None:
    _export(labeled, tmp_path, "crops", "export.crop_size=96")
    rows = labeled["rows"]
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(tmp_path.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                entry = found.setdefault(key, {})
                entry[ext] = Image.open(io.BytesIO(data)) if ext == "jpg" else json.loads(data)
    assert set(found) == set(rows)
    for sample_id, entry in found.items():
        row, doc = rows[sample_id], entry["json"]
        assert entry["jpg"].size == (96, 96)
        assert doc["row"]["sample_id"] == sample_id
        np.testing.assert_allclose(doc["row"]["body_pose"], row["body_pose"])
        x, y, w, _ = row["crop_bbox_xywh"]
        kp = np.array(row["keypoints_2d"])
        expected = np.stack([(kp[:, 0] - x) * 96 / w, (kp[:, 1] - y) * 96 / w, kp[:, 2]], axis=1)
        expected[kp[:, 2] <= 0] = 0
        np.testing.assert_allclose(doc["crop"]["keypoints_2d"], expected, rtol=1e-4, atol=1e-3)


def test_a_rerun_exports_only_the_shard_whose_output_was_removed(labeled: dict[str, Any], tmp_path: Path) -> None:
    _export(labeled, tmp_path, "crops", "export.crop_size=64")
    files = {p.stem: p.read_bytes() for p in tmp_path.glob("shard-*.tar")}
    kept, removed, *_ = sorted(files)
    kept_files = [tmp_path / "_done" / f"{kept}.json", tmp_path / f"{kept}.tar"]
    before = identities(kept_files)
    (tmp_path / f"{removed}.tar").unlink()
    (tmp_path / "_done" / f"{removed}.json").unlink()
    with recorded_writes() as writes:
        stats = _export(labeled, tmp_path, "crops", "export.crop_size=64")
    assert stats["shards"] == len(files)  # the card covers every shard, those exported earlier included
    assert writes.touching([f"_done/{kept}.json", f"{kept}.tar"], str(tmp_path)) == [], "the kept shard is not redone"
    assert writes.touching([f"_done/{removed}.json", f"{removed}.tar"], str(tmp_path)), "the removed one is"
    assert identities(kept_files) == before
    assert (tmp_path / f"{removed}.tar").read_bytes() == files[removed]  # the same bytes again
    with pytest.raises(ConfigError, match="another config"):
        _export(labeled, tmp_path, "crops", "export.crop_size=65")


def test_a_rerun_exports_again_the_shards_relabeled_since(labeled: dict[str, Any], tmp_path: Path) -> None:
    """Relabeling (here with another config, overwrite=true) changes each shard's label lineage: the export's
    rerun notices from the label markers, exports those shards again, and the files carry the new rows."""
    root, labels, out = labeled["root"], tmp_path / "labels", tmp_path / "export"
    shutil.copytree(root / "labels", labels)
    base = [f"input.labels={labels}", f"input.shards={root / 'shards'}", f"output={out}", "format=crops"]
    export_cfg = compose_config("dpmesh_export", [*base, "log_level=WARNING"], ExportJobConfig)
    export(export_cfg)
    assert all(row["flip_pa_mpjpe_mm"] is None for row in crop_rows(out).values())
    with recorded_writes() as writes:
        export(export_cfg)
    first = sorted(p.name for p in (out / "_done").glob("*.json"))
    assert writes.touching([f"_done/{name}" for name in first], str(out)) == [], "nothing relabeled yet"

    relabel = [f"input.shards={root / 'shards'}", f"output={labels}", "filter=off", "filter.flip_consistency=true"]
    relabel += ["overwrite=true", "log_level=WARNING", "progress_interval_s=0"]
    label(compose_config("dpmesh_label", relabel, LabelJobConfig))
    with recorded_writes() as writes:
        export(export_cfg)
    assert sorted(p.name for p in (out / "_done").glob("*.json")) == first
    rewritten = writes.touching([f"_done/{name}" for name in first], str(out))
    assert sorted(rewritten) == [f"{out}/_done/{name}" for name in first], "every relabeled shard exported again"
    rows = crop_rows(out)
    assert set(rows) == set(labeled["rows"])
    assert all(row["flip_pa_mpjpe_mm"] is not None for row in rows.values()), "the files carry the new rows"
    for name in first:
        label_marker = json.loads((labels / "_done" / name).read_text())
        assert json.loads((out / "_done" / name).read_text())["label"]["config_hash"] == label_marker["config_hash"]

    markers = identities((out / "_done").glob("*.json"))
    with recorded_writes() as writes:
        export(export_cfg)  # nothing relabeled since: nothing exported
    assert writes.touching([f"_done/{name}" for name in first], str(out)) == []
    assert identities((out / "_done").glob("*.json")) == markers


def _loose_and_named(out: Path) -> tuple[set[str], set[str]]:
    """A camerahmr export's loose images, and the images its npz files name."""
    loose = {str(p.relative_to(out)) for p in (out / "images").glob("*.jpg")}
    named = {str(name) for npz in out.glob("shard-*.npz") for name in np.load(npz)["imgname"]}
    return loose, named


def test_a_camerahmr_reexport_removes_the_images_it_no_longer_selects(labeled: dict[str, Any], tmp_path: Path) -> None:
    """Relabeled with the default filter, the tiny model's random labels are mostly rejected: the re-export's npz
    names fewer images, and the loose images of the others go (else a trainer's folder holds images no label names).
    """
    root, labels, out = labeled["root"], tmp_path / "labels", tmp_path / "export"
    shutil.copytree(root / "labels", labels)
    base = [f"input.labels={labels}", f"input.shards={root / 'shards'}", f"output={out}", "format=camerahmr"]
    export_cfg = compose_config("dpmesh_export", [*base, "log_level=WARNING"], ExportJobConfig)
    export(export_cfg)
    loose, named = _loose_and_named(out)
    assert loose == named
    assert len(named) == len({r["image_key"] for r in labeled["rows"].values()})

    relabel = [f"input.shards={root / 'shards'}", f"output={labels}", "filter=default", "overwrite=true"]
    label(compose_config("dpmesh_label", [*relabel, "log_level=WARNING", "progress_interval_s=0"], LabelJobConfig))
    export(export_cfg)
    loose_after, named_after = _loose_and_named(out)
    assert len(named_after) < len(named), "the default filter should reject some of the tiny model's labels"
    assert loose_after == named_after

    (out / "images" / "stray.jpg").write_bytes(b"not ours")  # overwrite=true removes only the shards' own images
    export(compose_config("dpmesh_export", [*base, "log_level=WARNING", "overwrite=true"], ExportJobConfig))
    assert _loose_and_named(out) == (named_after | {"images/stray.jpg"}, named_after)


def test_selection_by_where_and_a_refused_occlusion_selection(labeled: dict[str, Any], tmp_path: Path) -> None:
    stats = _export(labeled, tmp_path / "first", "hmr2", "select.where='person_idx = 0'")
    assert stats["counts"]["persons"] == len({r["image_key"] for r in labeled["rows"].values()})
    first = next(iter(labeled["rows"].values()))
    if first.get("occlusion_level") is None:  # labels from before the occlusion columns: refused at launch
        with pytest.raises(ConfigError, match="occlusion_level column"):
            _export(labeled, tmp_path / "heavy", "hmr2", "select.occlusion_levels=[heavy]")
        return
    level = first["occlusion_level"]
    expected = sum(r["occlusion_level"] == level for r in labeled["rows"].values())
    stats = _export(labeled, tmp_path / "level", "hmr2", f"select.occlusion_levels=[{level}]")
    assert stats["counts"]["persons"] == expected
    assert stats["occlusion_levels"] == {level: expected}


def _reference_crop(upright: np.ndarray, box: list[float], size: int) -> np.ndarray:
    """Bilinear sampling at the crop's pixel centres, pixel-centre convention (independent of PIL's transform)."""
    x, y, w, h = box
    centres = (np.arange(size) + 0.5) / size
    sx, sy = x + centres * w - 0.5, y + centres * h - 0.5
    gx, gy = np.meshgrid(sx, sy)
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    fx, fy = (gx - x0)[..., None], (gy - y0)[..., None]
    height, width = upright.shape[:2]

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        inside = (xx >= 0) & (xx < width) & (yy >= 0) & (yy < height)
        values = upright[np.clip(yy, 0, height - 1), np.clip(xx, 0, width - 1)].astype(np.float64)
        return np.where(inside[..., None], values, 0.0)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def test_the_torch_dataset_yields_correct_crops_through_two_workers(labeled: dict[str, Any]) -> None:
    root, rows, size = labeled["root"], labeled["rows"], 64
    dataset = LabeledPersonDataset(str(root / "labels"), str(root / "shards"), crop_size=size)
    assert len(dataset) == len(rows)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2, shuffle=False)
    items = [{k: v[i] for k, v in batch.items()} for batch in loader for i in range(len(batch["sample_id"]))]
    assert sorted(item["sample_id"] for item in items) == sorted(rows)
    for item in items:
        row = rows[item["sample_id"]]
        stem = row["image_key"].rsplit("-", 1)[0]
        upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(labeled["original"][stem]))).convert("RGB"))
        assert upright.shape[:2] == (row["image_height"], row["image_width"])
        img = item["img"].numpy().transpose(1, 2, 0)
        assert item["img"].dtype == torch.uint8
        assert img.shape == (size, size, 3)
        assert np.abs(img.astype(np.float64) - _reference_crop(upright, row["crop_bbox_xywh"], size)).mean() < 1.5
        x, y, w, _ = row["crop_bbox_xywh"]
        kp = np.array(row["keypoints_2d"], np.float32)
        valid = kp[:, 2] > 0
        got = item["keypoints_2d"].numpy()
        np.testing.assert_allclose(got[valid, :2], (kp[valid, :2] - [x, y]) * size / w, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(item["body_pose"].numpy(), row["body_pose"])
        np.testing.assert_allclose(item["betas"].numpy(), row["betas"])
        f, (cx, cy) = row["focal_length"], row["principal_point"]
        np.testing.assert_allclose(item["cam_int"].numpy(), [[f, 0, cx], [0, f, cy], [0, 0, 1]], rtol=1e-6)
        s = size / w
        crop_k = [[f * s, 0, (cx - x) * s], [0, f * s, (cy - y) * s], [0, 0, 1]]
        np.testing.assert_allclose(item["cam_int_crop"].numpy(), crop_k, rtol=1e-4, atol=1e-3)
        assert float(item["has_smpl"]) == (1.0 if row["quality_tier"] in ("gold", "silver") else 0.0)
    assert any(r["image_key"].startswith(ROTATED) for r in rows.values())


@pytest.mark.s3
def test_the_torch_dataset_reads_labels_and_shards_on_s3_by_ranged_gets(
    labeled: dict[str, Any], s3_bucket: str, s3_storage_config: StorageConfig
) -> None:
    root = labeled["root"]
    storage = Storage(s3_storage_config)
    for folder in ("labels", "shards"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                storage.write_bytes(f"{s3_bucket}/{path.relative_to(root).as_posix()}", path.read_bytes())
    local = LabeledPersonDataset(str(root / "labels"), str(root / "shards"), crop_size=32)
    remote = LabeledPersonDataset(
        f"{s3_bucket}/labels", f"{s3_bucket}/shards", crop_size=32, storage=s3_storage_config
    )
    assert len(remote) == len(local)
    loader = torch.utils.data.DataLoader(remote, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    by_id = {sid: batch["img"][i] for batch in batches for i, sid in enumerate(batch["sample_id"])}
    assert len(by_id) == len(local)
    for i in range(len(local)):
        item = local[i]
        assert torch.equal(by_id[item["sample_id"]], item["img"]), "the same crop from a ranged GET as from a seek"

"""dpmesh-report over real label outputs of the tiny model (the demo corpus), and its parts.

* The report folder is complete: every asset ``index.html`` references exists, counts match the Parquet, the
  gallery holds ``report.per_tier`` persons per tier, from the shard tars, with meshes drawn by headless OpenGL.
* The mesh overlay changes the crop exactly where the mesh projects; crops come from the tar with EXIF applied.
* Body models: the tiny model's synthetic body (from the run's summary), a real-format SMPL ``.npz``, a refilter
  output's source; the evaluation and occlusion sections render what they are given and say when it is absent.
* Slow: ``make demo``'s script ends with the report's path, and headless Chromium shows the report with every
  image loaded.
"""

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.common.label_stats import shard_stats
from pipelines.common.merged_stats import MergedStats
from pipelines.config import (
    ConfigError,
    LabelJobConfig,
    RefilterJobConfig,
    ReportJobConfig,
    ShardJobConfig,
    StorageConfig,
    compose_config,
)
from pipelines.label.job import run as label
from pipelines.refilter.job import run as refilter
from pipelines.report import gallery, sections
from pipelines.report.assets import Assets
from pipelines.report.data import read_images
from pipelines.report.job import run as write_report
from pipelines.report.mesh import TINY_BODY_VERTICES, resolve_body
from pipelines.report.render import MeshRenderer
from pipelines.shard.job import run as shard
from pipelines.storage import Storage
from tests.fakes.tiny_smpl import make_fake_smpl_data


REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CORPUS = REPO_ROOT / "pipelines" / "sample_corpus"
PER_TIER = 3


def _report(labels: Path, output: Path, *extra: str) -> dict[str, Any]:
    cfg = compose_config(
        "dpmesh_report", [f"input.labels={labels}", f"output={output}", f"report.per_tier={PER_TIER}", *extra],
        ReportJobConfig,
    )  # fmt: skip
    return write_report(cfg)


def _rows(labels: Path) -> list[dict[str, Any]]:
    return [r for folder in ("annotations", "rejected") for p in sorted((labels / folder).glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()]  # fmt: skip


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo corpus sharded (4 images per shard) and labeled by the tiny model on CPU (every person rejected
    by the default filter), its re-split with ``filter=off`` (every person bronze), and the report of the labels."""
    root = tmp_path_factory.mktemp("report")
    shards, labels, resplit = root / "shards", root / "labels", root / "labels_off"
    shard(compose_config("dpmesh_shard", [
        f"input.images={SAMPLE_CORPUS / 'images'}", f"input.annotations={SAMPLE_CORPUS / 'person_keypoints.json'}",
        f"output={shards}", "shard.max_samples=4", "log_level=WARNING",
    ], ShardJobConfig))  # fmt: skip
    label(compose_config("dpmesh_label", [
        f"input.shards={shards}", f"output={labels}", "log_level=WARNING", "progress_interval_s=0",
    ], LabelJobConfig))  # fmt: skip
    refilter(compose_config("dpmesh_refilter", [
        f"input={labels}", f"output={resplit}", "filter=off", "log_level=WARNING",
    ], RefilterJobConfig))  # fmt: skip
    report = root / "report"
    result = _report(labels, report)
    return {"root": root, "shards": shards, "labels": labels, "resplit": resplit, "report": report, "result": result}


def _referenced_in(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', page)


def _referenced(index: Path) -> list[str]:
    return _referenced_in(index.read_text())


def test_every_referenced_asset_exists_and_nothing_is_fetched_from_elsewhere(labeled: dict[str, Any]) -> None:
    index = labeled["report"] / "index.html"
    page = index.read_text()
    references = _referenced(index)
    assert references, "the report references no asset"
    for ref in references:
        assert not re.match(r"^[a-z]+:", ref), f"{ref}: the report must open from disk, without network"
        assert (index.parent / ref).is_file(), f"{ref} is referenced but missing"
    assert "<style>" in page
    assert "stylesheet" not in page
    written = {str(p.relative_to(index.parent)) for p in index.parent.rglob("*.png")}
    assert written == {r for r in references if r.endswith(".png")}, "every written asset is shown"
    for ref in references:
        with Image.open(index.parent / ref) as image:
            assert image.size[0] > 50
            assert image.size[1] > 50


def test_counts_match_the_parquet_and_the_markers(labeled: dict[str, Any]) -> None:
    rows = _rows(labeled["labels"])
    summary = json.loads((labeled["labels"] / "_summary.json").read_text())
    page = (labeled["report"] / "index.html").read_text()
    tiers = Counter(r["quality_tier"] for r in rows)
    reasons = Counter(reason for r in rows for reason in r["reasons"])
    result = labeled["result"]
    assert result["rows"] == len(rows) == summary["counts"]["persons_accepted"] + summary["counts"]["persons_rejected"]
    assert result["tiers"] == dict(tiers) == summary["tiers"]
    assert dict(reasons) == summary["rejected_by_reason"]
    for reason in reasons:
        assert reason in page
    for name in ("tiers.png", "reasons.png", "confidence.png", "box_sizes.png", "betas.png", "pose_angles.png",
                 "shard_error_rates.png"):  # fmt: skip
        assert f"assets/{name}" in page
    markers = [json.loads(p.read_text()) for p in sorted((labeled["labels"] / "_done").glob("shard-*.json"))]
    assert markers
    assert all(m["elapsed_s"] > 0 for m in markers), "each label marker records how long its shard took"
    assert "assets/shard_throughput.png" in page, "per-shard throughput from the markers' elapsed_s"


def test_gallery_holds_per_tier_persons_from_the_shards_with_meshes(labeled: dict[str, Any]) -> None:
    page = (labeled["report"] / "index.html").read_text()
    tiles = re.findall(r'<div class="tile"><img src="(assets/gallery/([a-z]+)/([^"]+)\.png)"', page)
    rows = {r["sample_id"]: r for r in _rows(labeled["labels"])}
    by_tier = Counter(tier for _, tier, _ in tiles)
    expected = {t: min(PER_TIER, n) for t, n in Counter(r["quality_tier"] for r in rows.values()).items()}
    assert dict(by_tier) == expected
    for src, tier, sample_id in tiles:
        assert rows[sample_id]["quality_tier"] == tier
        assert all(reason in page for reason in rows[sample_id]["reasons"])
        with Image.open(labeled["report"] / src) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape == (256, 256, 3)
        assert pixels.std() > 10, "a crop, not a blank tile"
    assert "moderngl" in page
    assert "EGL" in page
    assert "the tiny model&#x27;s synthetic body" in page
    # the same seed draws the same persons; another seed may not
    again = _report(labeled["labels"], labeled["root"] / "report_again")
    assert again["gallery"] == {t: n for t, n in by_tier.items()}
    first = sorted(p.name for p in (labeled["report"] / "assets" / "gallery").rglob("*.png"))
    assert first == sorted(p.name for p in (labeled["root"] / "report_again" / "assets" / "gallery").rglob("*.png"))


def _in_view(row: dict[str, Any], body: Any) -> dict[str, Any]:
    """``row`` with ``transl`` moved so that its mesh's centre sits 3 m in front of the camera on the crop's centre
    (the tiny model's random weights put meshes anywhere)."""
    from pipelines.report.mesh import pose_vertices

    vertices = pose_vertices(body, [row])[0]
    x, y, w, h = row["crop_bbox_xywh"]
    focal, (cx, cy) = row["focal_length"], row["principal_point"]
    depth = 3.0
    target = np.array([(x + w / 2 - cx) / focal * depth, (y + h / 2 - cy) / focal * depth, depth])
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    return {**row, "transl": list(np.asarray(row["transl"]) + target - centre)}


def test_the_mesh_overlay_changes_the_crop_where_the_mesh_projects(labeled: dict[str, Any]) -> None:
    summary = json.loads((labeled["labels"] / "_summary.json").read_text())
    body = resolve_body(summary, None, StorageConfig())
    row = _in_view(_rows(labeled["labels"])[0], body)
    storage = Storage(StorageConfig())
    images = read_images(storage, str(labeled["shards"] / f"{row['shard']}.tar"), {row["image_key"]})
    renderer = MeshRenderer()
    try:
        [with_mesh] = gallery.make_tiles([row], images, body, renderer, 256)
        [bare] = gallery.make_tiles([row], images, None, None, 256)
        from pipelines.report.mesh import pose_vertices

        rgba = renderer.render(
            pose_vertices(body, [row])[0], body.faces, row["focal_length"], np.asarray(row["principal_point"]),
            np.asarray(row["crop_bbox_xywh"]), 256,
        )  # fmt: skip
    finally:
        renderer.release()
    assert with_mesh.mesh_in_crop is not None
    assert with_mesh.mesh_in_crop > 0.9
    covered = rgba[..., 3] > 0.99
    inset = np.zeros_like(covered)
    inset[256 - 256 // 3 - 2 :, 256 - 256 // 3 - 2 :] = True  # the framed-mesh inset, drawn over the corner
    assert covered[~inset].mean() > 0.02, "the mesh covers part of the crop"
    crop = gallery.crop_square(images[row["image_key"]], np.asarray(row["crop_bbox_xywh"]), 256)
    keypoints = np.abs(bare.image.astype(int) - crop.astype(int)).sum(axis=2) > 0  # drawn over both alike
    changed = np.abs(with_mesh.image.astype(int) - bare.image.astype(int)).sum(axis=2) > 0
    assert changed[covered & ~inset & ~keypoints].mean() > 0.99, "the overlay differs from the crop where the mesh is"
    assert changed[(rgba[..., 3] == 0) & ~inset].mean() < 0.01, "and nowhere else (but the inset)"


def test_crops_come_from_the_tar_offset_with_exif_applied(tmp_path: Path) -> None:
    upright = np.zeros((40, 80, 3), np.uint8)
    upright[:, :40] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(upright).save(buffer, format="JPEG", exif=exif, quality=95)
    data = buffer.getvalue()
    tar_path = tmp_path / "shard-000000.tar"
    rows = []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key in ("a-000000000001", "b-000000000002"):
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(tar_path) as tar:  # data offsets are known once read back, as dpmesh-shard indexes them
        for member in tar.getmembers():
            row = {"key": member.name[:-4], "tar_offset": member.offset_data, "bytes": member.size}
            rows.append({**row, "sha1": hashlib.sha1(data).hexdigest()})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "shard-000000.parquet")
    images = read_images(Storage(StorageConfig()), str(tar_path), {"b-000000000002"})
    assert list(images) == ["b-000000000002"]
    image = images["b-000000000002"]
    assert image.shape == (80, 40, 3), "EXIF orientation 6 turns the 80x40 image into 40x80"
    assert image[:20, :, 0].mean() > 200
    assert image[60:, :, 0].mean() < 60


def test_the_tiny_body_is_the_tiny_models_body() -> None:
    from dpmesh_core.model import DPMesh

    body = resolve_body({"config": {"model": {"name": "tiny", "seed": 3}}}, None, StorageConfig())
    expected = DPMesh.tiny(seed=3).body_model.data
    assert body.data.num_vertices == expected.num_vertices == TINY_BODY_VERTICES
    for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "faces"):
        np.testing.assert_array_equal(getattr(body.data, name), getattr(expected, name))


def test_body_model_from_the_summary_or_refused_with_the_fix(tmp_path: Path) -> None:
    npz = tmp_path / "smpl.npz"
    np.savez(npz, **make_fake_smpl_data(num_vertices=100, seed=1).to_arrays())
    from_label = resolve_body({"config": {"model": {"name": "dpmesh", "smpl_model": str(npz)}}}, None, StorageConfig())
    assert from_label.data.num_vertices == 100
    assert "model.smpl_model" in from_label.source
    for summary in (None, {"config": {"model": {"name": "dpmesh", "checkpoint": "x.pth.tar"}}}):
        with pytest.raises(ConfigError, match=r"report\.smpl_model="):
            resolve_body(summary, None, StorageConfig())


def test_a_real_format_smpl_file_and_a_refilter_output(labeled: dict[str, Any], tmp_path: Path) -> None:
    """The re-split (its summary names its source, which names the model) with an SMPL-format file of 6890
    vertices given as report.smpl_model, through the console script."""
    npz = tmp_path / "smpl_neutral.npz"
    np.savez(npz, **make_fake_smpl_data(num_vertices=6890, seed=2).to_arrays())
    output = tmp_path / "report"
    command = [sys.executable, "-m", "pipelines.report.job", f"input.labels={labeled['resplit']}", f"output={output}",
               "report.per_tier=2", f"report.smpl_model={npz}"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(str(output / "index.html"))
    page = (output / "index.html").read_text()
    assert "report.smpl_model" in page
    assert "Re-split by dpmesh-refilter" in page
    assert len(re.findall(r'<div class="tile"><img src="assets/gallery/bronze/', page)) == 2
    # the source summary alone tells the body model of a re-split
    resplit_summary = json.loads((labeled["resplit"] / "_summary.json").read_text())
    source = json.loads((labeled["labels"] / "_summary.json").read_text())
    assert "tiny" in resolve_body(resplit_summary, None, StorageConfig(), source_summary=source).source


@pytest.mark.s3
def test_a_report_of_labels_on_s3_written_to_s3(labeled: dict[str, Any], s3_bucket: str, s3_server: Any) -> None:
    """Labels and shards on a real S3 server (SeaweedFS), crops streamed from the tars there, report written there."""
    overrides = [
        "storage=s3", f"storage.s3_endpoint_url={s3_server.endpoint_url}", "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path", f"input.shards={s3_bucket}/shards",
    ]  # fmt: skip
    output = f"{s3_bucket}/report"
    cfg = compose_config(
        "dpmesh_report", [f"input.labels={s3_bucket}/labels", f"output={output}", "report.per_tier=2", *overrides],
        ReportJobConfig,
    )  # fmt: skip
    storage = Storage(cfg.storage)
    for name in ("labels", "shards"):
        for path in sorted(p for p in labeled[name].rglob("*") if p.is_file()):
            storage.write_bytes(f"{s3_bucket}/{name}/{path.relative_to(labeled[name])}", path.read_bytes())
    result = write_report(cfg)
    assert result["index"] == f"{output}/index.html"
    assert result["rows"] == labeled["result"]["rows"]
    assert result["gallery"] == {"reject": 2}
    page = storage.read_bytes(result["index"]).decode()
    for ref in _referenced_in(page):
        assert storage.exists(f"{output}/{ref}"), ref
    tile = next(r for r in _referenced_in(page) if "/gallery/" in r)
    pixels = np.asarray(Image.open(io.BytesIO(storage.read_bytes(f"{output}/{tile}"))).convert("RGB"))
    assert pixels.std() > 10, "a crop read from the tar on S3, not a grey tile"


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pipelines.report.job", "input.labels=/nowhere", f"output={tmp_path}"]
    done = subprocess.run([*command, "report.per_tierr=3"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "per_tierr" in done.stderr, done.stderr[-2000:]
    with pytest.raises(ConfigError, match=r"report\.per_tier=-1"):
        _report(tmp_path, tmp_path / "out", "report.per_tier=-1")


def test_no_markers_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    with pytest.raises(ConfigError, match="no labeled shards"):
        _report(tmp_path / "labels", tmp_path / "out")


def test_the_evaluation_section_renders_a_dpmesh_eval_result(labeled: dict[str, Any], tmp_path: Path) -> None:
    """A real ``dpmesh-eval`` result: the labels against ground truth made from their own joints plus noise."""
    from pipelines.config import EvalJobConfig
    from pipelines.eval.job import run as evaluate

    rng = np.random.default_rng(0)
    rows = _rows(labeled["labels"])
    noisy = [np.asarray(r["joints_3d"]) + rng.normal(scale=0.05, size=(24, 3)) for r in rows]
    ground_truth = pa.table({
        "sample_id": [r["sample_id"] for r in rows],
        "joints_3d": pa.array([j.reshape(-1).tolist() for j in noisy], pa.list_(pa.float64(), 72)),
    })  # fmt: skip
    pq.write_table(ground_truth, tmp_path / "gt.parquet")
    evaluation = tmp_path / "eval"
    cfg = compose_config(
        "dpmesh_eval", [f"input.labels={labeled['labels']}", f"input.ground_truth={tmp_path / 'gt.parquet'}",
                        f"output={evaluation}", "log_level=WARNING"], EvalJobConfig,
    )  # fmt: skip
    doc = evaluate(cfg)
    path = evaluation / "eval.json"
    output = tmp_path / "report"
    # without mesh rendering too (machines without Mesa): keypoints only
    result = _report(labeled["labels"], output, f"report.eval={path}", "report.per_tier=1", "report.render_mesh=false")
    assert result["evaluation"]
    assert result["renderer"].startswith("off")
    page = (output / "index.html").read_text()
    section = page[page.index('id="evaluation"') :]
    assert f"{doc['overall']['pa_mpjpe_mm']:.1f}" in section
    assert "tier reject" in section
    if doc["by_occlusion_level"] is None:
        assert "no occlusion_level column" in section
    else:
        assert all(f"occlusion {level}" in section for level in doc["by_occlusion_level"])
    for ref in re.findall(r'src="([^"]+)"', section):
        assert (output / ref).is_file()
    assert "assets/eval_sparsification_pa_mpjpe_mm.png" in section
    assert "assets/eval_confidence_vs_error.png" in section
    (tmp_path / "not_eval.json").write_text(json.dumps({"spearman": 1.0}))
    for bad in (tmp_path / "missing.json", tmp_path / "not_eval.json"):
        with pytest.raises(ConfigError, match=r"report\.eval"):
            _report(labeled["labels"], tmp_path / "r2", f"report.eval={bad}")


def _stats_with(columns: dict[str, list[Any]]) -> MergedStats:
    """The merged statistics of one shard holding four rows with ``columns``."""
    n = len(next(iter(columns.values())))
    rows = pa.table({
        "sample_id": [f"k{i}_p0" for i in range(n)], "quality_tier": ["gold", "gold", "reject", "silver"][:n],
        **columns,
    })  # fmt: skip
    stats = MergedStats()
    stats.add("shard-000000", shard_stats({"annotations": rows}, None))
    return stats


def test_occlusion_columns_are_plotted_when_present_and_their_absence_said() -> None:
    assets = Assets()
    present = _stats_with({
        "occlusion_level": ["none", "partial", "heavy", "none"], "n_kp_occluded": [0, 3, 9, 1],
        "crowd_index": [0.0, 0.2, 0.7, 0.1],
    })  # fmt: skip
    page = sections.occlusion(present, assets)
    assert sorted(assets.files) == [
        "assets/occlusion_crowd_index.png",
        "assets/occlusion_n_kp_occluded.png",
        "assets/occlusion_occlusion_level.png",
    ]
    assert "no occlusion columns" not in page
    absent = sections.occlusion(_stats_with({"confidence": [0.1, 0.2, 0.3, 0.4]}), Assets())
    assert "no occlusion columns" in absent


def test_draw_picks_is_seeded_and_per_tier() -> None:
    pool = {t: [(i, "shard-000000", "annotations", i, f"{t}{i}_p0") for i in range(n)]
            for t, n in (("gold", 10), ("silver", 2), ("reject", 7))}  # fmt: skip
    picks = gallery.draw_picks(pool, 3, seed=5)
    assert {t: len(p) for t, p in picks.items()} == {"gold": 3, "silver": 2, "reject": 3}
    shuffled = {t: list(reversed(entries)) for t, entries in pool.items()}
    assert picks == gallery.draw_picks(shuffled, 3, seed=5), "independent of the pool's order"
    assert any(gallery.draw_picks(pool, 3, seed=s) != picks for s in range(6, 12))


# ----------------------------------------------------------------------------------------------------------- slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--virtual-time-budget=10000",  # run the page's load handler before the DOM is dumped
]  # fmt: skip


def _chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.slow
def test_demo_writes_the_report_and_chromium_shows_it_with_every_image(tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing: run `make system-packages` (Debian package chromium)")
    env = {**os.environ, "DPMESH_DEMO_OUTPUT": str(tmp_path / "demo")}
    done = subprocess.run([sys.executable, "-m", "pipelines.demo"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    index = tmp_path / "demo" / "report" / "index.html"
    assert f"report: {index}" in done.stdout.strip().splitlines()[-2], done.stdout[-1000:]
    n_images = len(re.findall(r"<img ", index.read_text()))
    assert n_images > 10

    dom = _chromium(index.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-images="loaded {n_images}/{n_images}"' in dom.stdout, re.findall(r"<body[^>]*>", dom.stdout)

    shot = tmp_path / "screenshot.png"
    done = _chromium(index.as_uri(), f"--screenshot={shot}", "--window-size=1280,2400")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file()
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert pixels.shape == (2400, 1280, 3)
    assert pixels.std() > 20, "the screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 200, "text, plots and crops, not a flat page"
    keep = os.environ.get("DPMESH_REPORT_SCREENSHOT")  # where to keep it (the README's screenshot is made this way)
    if keep:
        shutil.copy(shot, keep)

"""dpmesh-shard end to end: real Beam runners, local disk and the real S3 server, read back with webdataset and tar."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipelines.config import ConfigError, ShardJobConfig, compose_config
from pipelines.shard.job import run
from pipelines.storage import Storage
from tests.fakes.corpus import Corpus, make_images, write_corpus
from tests.fakes.digests import shard_set_digests


MAX_SAMPLES = 6


def _config(*overrides: str) -> ShardJobConfig:
    return compose_config(
        "dpmesh_shard", [f"shard.max_samples={MAX_SAMPLES}", "log_level=WARNING", *overrides], ShardJobConfig
    )


@pytest.fixture(scope="module")
def reference_run(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """One in-memory run everything else is compared with."""
    output = str(tmp_path_factory.mktemp("out") / "shards")
    manifest = run(
        _config(f"input.images={corpus.images}", f"input.annotations={corpus.annotations}", f"output={output}")
    )
    return output, manifest


def test_every_input_file_is_sharded_or_reported(reference_run: tuple[str, dict], corpus: Corpus) -> None:
    output, manifest = reference_run
    counts = manifest["counts"]
    assert counts["files_in"] == corpus.n_files
    assert counts["images_sharded"] == corpus.n_images + 1  # the duplicate is sharded and reported
    assert counts["reconciled"] is True
    assert counts["errors_by_reason"] == {"corrupt_image": 2, "not_an_image": 1, "zero_bytes": 1}  # n_broken
    assert (counts["duplicate_groups"], counts["duplicate_files"]) == (1, 1)
    errors = pq.read_table(Path(output, "_errors.parquet")).to_pylist()
    assert sorted(Path(e["source_uri"]).name for e in errors) == [
        "corrupt.jpg",
        "empty.jpg",
        "notes.txt",
        "truncated.jpg",
    ]
    assert all(e["error"] for e in errors)
    indexed = pa.concat_tables(pq.read_table(Path(output, f"{s['shard']}.parquet")) for s in manifest["shards"])
    assert indexed.num_rows == counts["images_sharded"]
    assert len(set(indexed.column("key").to_pylist())) == indexed.num_rows


def test_shards_respect_caps_and_hold_sorted_keys(reference_run: tuple[str, dict]) -> None:
    output, manifest = reference_run
    for shard in manifest["shards"]:
        assert 1 <= shard["samples"] <= MAX_SAMPLES
        members = subprocess.run(
            ["tar", "-tf", str(Path(output, f"{shard['shard']}.tar"))], capture_output=True, text=True, check=True
        ).stdout.split()
        keys = [m.split(".")[0] for m in members]
        assert keys == sorted(keys)
        assert len(members) == 2 * shard["samples"]
        with open(Path(output, f"{shard['shard']}.tar"), "rb") as f:
            assert hashlib.sha1(f.read()).hexdigest() == shard["tar_sha1"]


def test_shards_read_back_with_webdataset_and_annotations_joined(
    reference_run: tuple[str, dict], corpus: Corpus
) -> None:
    output, manifest = reference_run
    urls = [str(Path(output, f"{s['shard']}.tar")) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == manifest["counts"]["images_sharded"]
    persons = 0
    for sample in samples:
        meta = sample["json"]
        image = next(sample[ext] for ext in ("jpg", "png", "webp") if ext in sample)
        assert image.size == (meta["width"], meta["height"]) == (160, 120)
        persons += len(meta.get("persons", []))
        if meta["annotated"]:
            assert all(len(p["keypoints"]) == 17 for p in meta["persons"])
    assert persons == manifest["counts"]["persons"] > 0
    assert manifest["counts"]["images_annotated"] == corpus.n_annotated


def test_rerun_refuses_then_overwrite_is_byte_identical(reference_run: tuple[str, dict], corpus: Corpus) -> None:
    output, _ = reference_run
    before = shard_set_digests(output)
    args = (f"input.images={corpus.images}", f"input.annotations={corpus.annotations}", f"output={output}")
    with pytest.raises(ConfigError, match="overwrite=true"):
        run(_config(*args))
    run(_config(*args, "overwrite=true"))
    assert shard_set_digests(output) == before


def test_multi_processing_gives_the_same_bytes(
    reference_run: tuple[str, dict], corpus: Corpus, tmp_path: Path
) -> None:
    output = str(tmp_path / "mp")
    run(
        _config(
            f"input.images={corpus.images}",
            f"input.annotations={corpus.annotations}",
            f"output={output}",
            "runner.running_mode=multi_processing",
            "runner.num_workers=2",
        )
    )
    assert shard_set_digests(output) == shard_set_digests(reference_run[0])


def test_portable_runner_loopback_gives_the_same_bytes(
    reference_run: tuple[str, dict], corpus: Corpus, tmp_path: Path, beam_job_endpoint: str
) -> None:
    output = str(tmp_path / "portable")
    run(
        _config(
            f"input.images={corpus.images}",
            f"input.annotations={corpus.annotations}",
            f"output={output}",
            "runner=portable",
            f"runner.job_endpoint={beam_job_endpoint}",
        )
    )
    assert shard_set_digests(output) == shard_set_digests(reference_run[0])


@pytest.mark.parametrize("kind", ["txt", "parquet", "glob"])
def test_manifest_and_glob_inputs(corpus: Corpus, tmp_path: Path, kind: str) -> None:
    images = sorted(str(p) for p in Path(corpus.images, "people").iterdir())[:5]
    if kind == "txt":
        Path(tmp_path, "list.txt").write_text("# five images\n" + "\n".join(images) + "\n\n")
        source = f"input.manifest={tmp_path}/list.txt"
    elif kind == "parquet":
        pq.write_table(pa.table({"uri": images}), tmp_path / "list.parquet")
        source = f"input.manifest={tmp_path}/list.parquet"
    else:
        source = f"input.images='{corpus.images}/people/img_0000[0-4].*'"  # quoted: [] is hydra list syntax
    manifest = run(_config(source, f"output={tmp_path}/out"))
    assert manifest["counts"]["files_in"] == manifest["counts"]["images_sharded"] == 5


@pytest.mark.s3
def test_s3_corpus_to_s3_shards(corpus: Corpus, s3_bucket: str, s3_server, tmp_path: Path) -> None:
    storage_overrides = [
        "storage=s3",
        f"storage.s3_endpoint_url={s3_server.endpoint_url}",
        "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path",
    ]
    cfg = _config(f"input.images={s3_bucket}/corpus", f"output={s3_bucket}/shards", *storage_overrides)
    storage = Storage(cfg.storage)
    for path in sorted(Path(corpus.images).rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{s3_bucket}/corpus/{path.relative_to(corpus.images)}", path.read_bytes())
    manifest = run(cfg)
    assert manifest["counts"]["reconciled"]
    assert manifest["counts"]["images_sharded"] == corpus.n_images + 1
    first = manifest["shards"][0]["shard"]
    data = storage.read_bytes(f"{s3_bucket}/shards/{first}.tar")
    local = tmp_path / f"{first}.tar"
    local.write_bytes(data)
    assert len(list(wds.WebDataset(str(local), shardshuffle=False))) == manifest["shards"][0]["samples"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert len(tar.getnames()) == 2 * manifest["shards"][0]["samples"]
    index = pq.read_table(io.BytesIO(storage.read_bytes(f"{s3_bucket}/shards/{first}.parquet")))
    assert index.schema.metadata[b"schema_name"] == b"shard_index"
    assert json.loads(storage.read_bytes(f"{s3_bucket}/shards/_manifest.json"))["counts"]["reconciled"]


@pytest.mark.s3
def test_s3_multi_processing_workers_authenticate_from_the_environment(
    corpus: Corpus, s3_bucket: str, s3_server, tmp_path: Path
) -> None:
    storage_overrides = [
        "storage=s3",
        f"storage.s3_endpoint_url={s3_server.endpoint_url}",
        "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path",
    ]
    manifest = run(
        _config(
            f"input.images={corpus.images}/people",
            f"output={s3_bucket}/mp",
            *storage_overrides,
            "runner.running_mode=multi_processing",
            "runner.num_workers=2",
        )
    )
    assert manifest["counts"]["images_sharded"] == corpus.n_images


def test_cli_reports_configuration_errors_and_prints_a_summary(corpus: Corpus, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "pipelines.shard.job"]
    bad = subprocess.run(
        [*cli, f"input.images={corpus.images}", f"output={tmp_path}/o", "shard.max_samples=0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "shard.max_samples must be >= 1" in bad.stderr
    typo = subprocess.run(
        [*cli, f"input.images={corpus.images}", f"output={tmp_path}/o", "shard.max_sample=3"],
        capture_output=True,
        text=True,
    )
    assert typo.returncode != 0
    assert "max_sample" in typo.stderr
    empty = subprocess.run(
        [*cli, f"input.images={tmp_path}/nothing", f"output={tmp_path}/o"], capture_output=True, text=True
    )
    assert empty.returncode == 2
    assert "lists no files" in empty.stderr
    good = subprocess.run(
        [*cli, f"input.images={corpus.images}/people", f"output={tmp_path}/o", "log_level=WARNING"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{corpus.n_images} images in" in good.stdout
    assert "reconciled" in good.stdout


def test_crowdpose_annotations_shard_with_coco17_joints(tmp_path: Path) -> None:
    """A hand-written CrowdPose file (14 joints) named with input.annotation_format: joints land at their COCO-17
    places, and the COCO joints CrowdPose lacks (face) are unlabelled."""
    from pipelines.shard.annotation_formats import CROWDPOSE_JOINTS

    images = make_images(2, seed=5, width=160, height=120, persons=(0, 0))
    write_corpus(str(tmp_path / "images"), images)
    keypoints = [v for j in range(len(CROWDPOSE_JOINTS)) for v in (10.0 + j, 20.0 + j, 2)]
    doc = {
        "images": [{"id": i, "file_name": img.file_name} for i, img in enumerate(images, start=1)],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [5, 5, 50, 80],
                "keypoints": keypoints,
                "num_keypoints": 14,
            }
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "crowdpose.json").write_text(json.dumps(doc))
    output = tmp_path / "shards"
    manifest = run(
        _config(
            f"input.images={tmp_path / 'images'}",
            f"input.annotations={tmp_path / 'crowdpose.json'}",
            "input.annotation_format=crowdpose",
            f"output={output}",
        )
    )
    assert manifest["counts"]["persons"] == 1
    metas = [
        s["json"]
        for s in wds.WebDataset(str(output / f"{manifest['shards'][0]['shard']}.tar"), shardshuffle=False).decode()
        if s["json"].get("persons")
    ]
    (person,) = [p for m in metas for p in m.get("persons", [])]
    coco = {name: i for i, name in enumerate(("nose", "left_eye", "right_eye", "left_ear", "right_ear"))}
    assert all(person["keypoints"][i][2] == 0 for i in coco.values())  # CrowdPose has no face joints
    left_shoulder = CROWDPOSE_JOINTS.index("left_shoulder")
    assert person["keypoints"][5] == [10.0 + left_shoulder, 20.0 + left_shoulder, 2]  # COCO 5 = left_shoulder
    right_ankle = CROWDPOSE_JOINTS.index("right_ankle")
    assert person["keypoints"][16] == [10.0 + right_ankle, 20.0 + right_ankle, 2]  # COCO 16 = right_ankle


def test_drop_duplicates_keeps_the_smallest_key_and_reports_the_rest(corpus: Corpus, tmp_path: Path) -> None:
    output = tmp_path / "dedup"
    manifest = run(_config(f"input.images={corpus.images}", f"output={output}", "shard.drop_duplicates=true"))
    counts = manifest["counts"]
    assert counts["reconciled"] is True
    assert counts["images_sharded"] == corpus.n_images  # the copy is left out
    assert counts["errors_by_reason"]["duplicate"] == 1
    assert (counts["duplicate_groups"], counts["duplicate_files"]) == (1, 1)
    (group,) = manifest["duplicates"]
    (row,) = [r for r in pq.read_table(output / "_errors.parquet").to_pylist() if r["reason"] == "duplicate"]
    assert row["key"] == group["keys"][1]
    assert f"kept as {group['keys'][0]}" in row["error"]

"""Launch-time pieces of dpmesh-shard: the annotation file check, unknown keys, the listing of hostile folders."""

import json
import os
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from pipelines.cli import unknown_keys
from pipelines.config import InputConfig, LabelJobConfig, ShardJobConfig, register_configs
from pipelines.config.compose import to_job_config
from pipelines.shard.annotation_check import check_annotation_file
from pipelines.shard.listing import ListingTask, list_corpus, listing_tasks
from pipelines.shard.listing import list_task as list_corpus_task
from pipelines.storage import Storage


def _coco(**changes: object) -> dict:
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": "b", "file_name": "b.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "keypoints": [0] * 51}],
        "categories": [{"id": 1, "name": "person"}],
    }
    doc.update(changes)
    return doc


def test_a_valid_file_reports_its_format_images_and_dangling_annotations() -> None:
    doc = _coco()
    doc["annotations"].append({**doc["annotations"][0], "id": 2, "image_id": 77})
    report = check_annotation_file(json.dumps(doc).encode(), "auto")
    assert report == {"format": "coco", "images": 2, "annotations_without_image": 1, "image_ids_without_image": ["77"]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"{", "not valid JSON"),
        (json.dumps([1, 2]).encode(), "[0] must be an object"),
        (json.dumps(_coco(images=None)).encode(), "'images' must be a list, got null"),
        (json.dumps(_coco(categories={"x": 1})).encode(), "'categories' must be a list, got dict"),
        (json.dumps(_coco(annotations=[{"id": 1, "image_id": None}])).encode(), "annotations[0].image_id must be"),
        (json.dumps(_coco(annotations=[{"id": True, "image_id": 1}])).encode(), "annotations[0].id must be"),
        (json.dumps(_coco(images=[{"id": 1, "file_name": ""}])).encode(), "images[0].file_name must be a non-empty"),
    ],
)
def test_structural_problems_name_the_field_in_one_line(doc: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        check_annotation_file(doc, "auto")
    assert "\n" not in str(caught.value)


def test_unknown_keys_are_found_at_every_level_and_real_apps_have_none() -> None:
    register_configs()
    with initialize_config_module("pipelines.conf", version_base="1.3"):
        shard = compose("dpmesh_shard", overrides=["input.images=x", "output=y", "+foo=1", "+shard.bar=2"])
        assert sorted(unknown_keys(shard, to_job_config(shard, ShardJobConfig))) == ["foo", "shard.bar"]
        label = compose("dpmesh_label", overrides=["input.shards=x", "output=y"])
        assert list(unknown_keys(label, to_job_config(label, LabelJobConfig))) == []


@pytest.mark.parametrize(
    "backend", [pytest.param("s3", marks=pytest.mark.s3), pytest.param("gcs", marks=pytest.mark.gcs)]
)
def test_an_object_store_prefix_is_listed_in_parallel_tasks_that_together_list_it_once(
    backend: str, request: pytest.FixtureRequest
) -> None:
    config = request.getfixturevalue(f"{backend}_storage_config")
    bucket = request.getfixturevalue(f"{backend}_bucket")
    storage = Storage(config)
    corpus = f"{bucket}/corpus"
    rels = ("top.jpg", "a/1.jpg", "a/deep/2.jpg", "b/3.jpg", "b-c/4.jpg", ".hidden.jpg")
    for rel in (*rels, "../corpus2/outside.jpg"):  # a sibling prefix sharing the name's start is not listed
        storage.write_bytes(f"{corpus}/{rel}".replace("corpus/../corpus2", "corpus2"), b"x")
    cfg = InputConfig(images=corpus)
    tasks = listing_tasks(storage, cfg)
    assert tasks == [ListingTask(""), ListingTask("a"), ListingTask("b-c"), ListingTask("b")]  # key order: "-" < "/"
    per_task = [sorted(f.relpath for f in list_corpus_task(storage, cfg, task)) for task in tasks]
    assert per_task == [[".hidden.jpg", "top.jpg"], ["a/1.jpg", "a/deep/2.jpg"], ["b-c/4.jpg"], ["b/3.jpg"]]
    assert sorted(f.relpath for f in list_corpus(storage, cfg)) == sorted(rels)
    assert {f.size for f in list_corpus(storage, cfg)} == {1}


def test_a_local_folder_is_listed_in_parallel_tasks_that_together_list_it_once(tmp_path: Path) -> None:
    for rel in ("top.jpg", "a/1.jpg", "a/deep/2.jpg", "b/3.jpg", ".hidden.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "c")  # a linked folder inside the input: listed again under its own name
    cfg = InputConfig(images=str(tmp_path))
    assert listing_tasks(Storage(), cfg) == [ListingTask(""), ListingTask("a"), ListingTask("b")]
    listed = sorted(f.relpath for f in list_corpus(Storage(), cfg))
    assert listed == [".hidden.jpg", "a/1.jpg", "a/deep/2.jpg", "b/3.jpg", "c/1.jpg", "c/deep/2.jpg", "top.jpg"]

"""dpmesh-label follows the shard set's live samples: on a grown set (dpmesh-shard mode=append) it labels the new
shards only, brings the labeled shards whose samples were retired or regrouped up to date without the model, never
writes a row of a retired sample, and fills ``near_dup_group``; the update gives the rows a full label gives."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.common.shard_set import NEAR_DUPLICATES_NAME, retired_keys_by_shard
from pipelines.config import ModelConfig, ShardJobConfig, compose_config
from pipelines.label.persons import PersonBatch
from pipelines.label.read import errored_images
from pipelines.shard.job import run as shard_job
from pipelines.shard.keys import make_key
from pipelines.storage import Storage
from tests.fakes.corpus import SyntheticImage, make_images, write_coco
from tests.fakes.digests import identities, label_digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler, FakePredictor, FakeResult
from tests.fakes.near_duplicates import near_duplicate, varied_jpegs
from tests.fakes.shard_set import label_shards


LABEL_FOLDERS = ("annotations", "rejected", "errors")


class CountingHandler(FakeDPMeshHandler):
    """The numpy stand-in, appending the persons of every batch it is given to ``log`` (a file: DoFns may run in a
    copy of this object)."""

    def __init__(self, cfg: ModelConfig, log: Path) -> None:
        super().__init__(cfg)
        self._log = log

    def run_inference(
        self, batch: Sequence[PersonBatch], model: FakePredictor, inference_args: dict[str, Any] | None = None
    ) -> list[FakeResult]:
        with self._log.open("a") as log:
            log.writelines(f"{task.image_key}\n" for person_batch in batch for task in person_batch.tasks)
        return super().run_inference(batch, model, inference_args)


def _persons_sent(log: Path) -> list[str]:
    """The image key of every person the stand-in model was given, in order (empty before any)."""
    return log.read_text().split() if log.exists() else []


def _annotated(name: str, data: bytes, persons: list[dict[str, Any]]) -> SyntheticImage:
    width, height = Image.open(io.BytesIO(data)).size
    return SyntheticImage(name, data, width, height, persons)


def _scaled(persons: list[dict[str, Any]], sx: float, sy: float) -> list[dict[str, Any]]:
    """The persons of an image resized by ``(sx, sy)``: what a near-duplicate copy of it shows."""
    return [
        {
            "bbox": [p["bbox"][0] * sx, p["bbox"][1] * sy, p["bbox"][2] * sx, p["bbox"][3] * sy],
            "keypoints": [[x * sx, y * sy, v] for x, y, v in p["keypoints"]],
        }
        for p in persons
    ]


@dataclass
class GrownCorpus:
    """A corpus sharded, then grown (new, changed, removed files and a planted near-duplicate) and appended."""

    root: Path
    images: dict[str, SyntheticImage]
    changed: str = "img_00001.jpg"
    removed: str = "img_00004.jpg"
    near_source: str = "img_00007.jpg"
    near_copy: str = "new_near.jpg"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def write(self) -> None:
        folder = self.root / "images"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for image in self.images.values():
            (folder / image.file_name).write_bytes(image.data)
        write_coco(str(self.root / "coco.json"), list(self.images.values()))

    def shard(self, *overrides: str) -> dict[str, Any]:
        keys = [
            f"input.images={self.root / 'images'}",
            f"input.annotations={self.root / 'coco.json'}",
            f"output={self.shards}",
            "shard.max_samples=3",
            "log_level=WARNING",
        ]
        return shard_job(compose_config("dpmesh_shard", [*keys, *overrides], ShardJobConfig))

    def grow(self) -> None:
        """Two new files, one changed (other bytes, same name), one removed, and a near-duplicate of a kept file."""
        scenes = varied_jpegs(4, seed=29)
        persons = make_images(4, seed=31, width=320, height=240, persons=(1, 2))
        for i in range(2):
            name = f"new_{i}.jpg"
            self.images[name] = _annotated(name, scenes[i], persons[i].persons)
        self.images[self.changed] = _annotated(self.changed, scenes[2], persons[2].persons)
        del self.images[self.removed]
        source = self.images[self.near_source]
        copy = near_duplicate(source.data, np.random.default_rng(5))
        width, height = Image.open(io.BytesIO(copy)).size
        scaled = _scaled(source.persons, width / source.width, height / source.height)
        self.images[self.near_copy] = _annotated(self.near_copy, copy, scaled)


LABEL = ("input.max_image_pixels=100000",)
"""Every labeling of these tests: images over 100,000 pixels (the 400 x 300 one) are ``decompression_bomb`` errors."""
_NO_KEYPOINTS = {"bbox": [10.0, 10.0, 50.0, 100.0], "keypoints": [[0.0, 0.0, 0]] * 17}
"""A person the labeler cannot use (``no_valid_keypoints``, a person error row of an image read)."""


def _corpus(root: Path) -> GrownCorpus:
    """Twelve annotated photo-like scenes (varied enough that only planted copies group), one or two persons each.

    What becomes error rows, so that retiring them is seen in every count: the file removed later is 400 x 300 (an
    image error: its persons are ``label.decode`` rows), and the file changed later and one kept file have a person
    without keypoints (a person error)."""
    scenes = varied_jpegs(12, seed=23)
    persons = make_images(12, seed=17, width=320, height=240, persons=(1, 2))
    images = {f"img_{i:05d}.jpg": _annotated(f"img_{i:05d}.jpg", scenes[i], persons[i].persons) for i in range(12)}
    corpus = GrownCorpus(root, images)
    large = make_images(1, seed=19, width=400, height=300, persons=(2, 2))[0]
    large_scene = varied_jpegs(1, seed=37, width=400, height=300)[0]
    images[corpus.removed] = _annotated(corpus.removed, large_scene, large.persons)
    for name in (corpus.changed, "img_00010.jpg"):
        images[name].persons = [*images[name].persons, _NO_KEYPOINTS]
    return corpus


def _label(shards: Path, output: Path, log: Path) -> dict[str, Any]:
    """dpmesh-label with the counting stand-in model (persons it is given logged to ``log``)."""
    return label_shards(shards, output, *LABEL, handler=lambda cfg: CountingHandler(cfg, log))


def _rows(output: Path, folder: str, shard: str) -> list[dict[str, Any]]:
    return pq.read_table(output / folder / f"{shard}.parquet").to_pylist()


def _marker(output: Path, shard: str) -> dict[str, Any]:
    return json.loads((output / "_done" / f"{shard}.json").read_text())


def _label_files(output: Path) -> list[Path]:
    return sorted(p for folder in LABEL_FOLDERS for p in (output / folder).glob("shard-*.parquet"))


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The corpus labeled (generation 0), grown and appended (generation 1), then labeled again into the same output;
    with what each step left, for the tests below to read (read-only)."""
    root = tmp_path_factory.mktemp("live")
    corpus = _corpus(root)
    corpus.write()
    first_manifest = corpus.shard()
    labels, log = root / "labels", root / "model_calls.txt"
    first = _label(corpus.shards, labels, log)
    sent_first = _persons_sent(log)
    before = {shard: _marker(labels, shard) for shard in _shard_names(first_manifest)}
    files_before = identities(_label_files(labels))
    index_before = (labels / "_done_index.json.gz").read_bytes()

    corpus.grow()
    corpus.write()
    manifest = corpus.shard("mode=append", "input.record_removals=true")
    log.unlink()
    second = _label(corpus.shards, labels, log)
    return {
        "corpus": corpus,
        "labels": labels,
        "log": log,
        "first": first,
        "sent_first": sent_first,
        "markers_before": before,
        "files_before": files_before,
        "index_before": index_before,
        "manifest": manifest,
        "second": second,
        "sent_second": _persons_sent(log),
    }


def _shard_names(manifest: dict[str, Any]) -> list[str]:
    return [s["shard"] for s in manifest["shards"]]


def _live_record(grown: dict[str, Any]) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """``({shard: retired keys}, {key: near-duplicate group})`` of the grown shard set, as dpmesh-shard wrote them."""
    corpus, manifest = grown["corpus"], grown["manifest"]
    retired = retired_keys_by_shard(Storage(), str(corpus.shards), manifest)
    groups = pq.read_table(corpus.shards / NEAR_DUPLICATES_NAME).to_pylist()
    return retired, {row["key"]: row["group"] for row in groups}


def test_a_grown_set_labels_its_new_shards_and_updates_the_others_without_the_model(grown: dict[str, Any]) -> None:
    corpus, labels, manifest, summary = grown["corpus"], grown["labels"], grown["manifest"], grown["second"]
    old_shards, new_shards = (g["shards"] for g in manifest["generations"])
    retired, groups = _live_record(grown)
    changed, removed = make_key(corpus.changed), make_key(corpus.removed)
    assert sorted(k for keys in retired.values() for k in keys) == sorted([changed, removed])

    # The model saw the persons of the new shards, and those only.
    new_persons = sum(_marker(labels, s)["counts"]["persons_in"] for s in new_shards)
    new_keys = {r["key"] for s in new_shards for r in pq.read_table(corpus.shards / f"{s}.parquet").to_pylist()}
    assert new_persons > 0
    assert len(grown["sent_second"]) == new_persons
    assert set(grown["sent_second"]) <= new_keys
    assert summary["throughput"]["persons_this_run"] == new_persons

    # Old shards with retired samples or a near-duplicate were updated from their rows; the others were not touched.
    touched = sorted(s for s in old_shards if retired.get(s) or any(groups.get(k) for k in _index_keys(corpus, s)))
    untouched = sorted(set(old_shards) - set(touched))
    assert touched
    assert untouched, "the corpus is meant to leave some labeled shards as they were"
    assert summary["shards"]["updated_this_run"] == len(touched)
    assert summary["shards"]["labeled_this_run"] == len(new_shards)
    for shard in touched:
        marker = _marker(labels, shard)
        assert marker["live_update"] is True
        assert marker["live_digest"] is not None
        earlier = grown["markers_before"][shard]
        assert marker["elapsed_s"] == earlier["elapsed_s"], "no model ran: the labeling's record carries over"
        assert marker["tar_read"] == earlier["tar_read"]
    now = identities(_label_files(labels))
    for path, identity in grown["files_before"].items():
        if any(f"/{s}.parquet" in path for s in untouched):
            assert now[path] == identity, f"{path} was rewritten"
    for shard in untouched:
        assert _marker(labels, shard) == grown["markers_before"][shard]


def _index_rows(corpus: GrownCorpus, shard: str) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in pq.read_table(corpus.shards / f"{shard}.parquet").to_pylist()}


def _index_keys(corpus: GrownCorpus, shard: str) -> list[str]:
    return pq.read_table(corpus.shards / f"{shard}.parquet", columns=["key"]).column("key").to_pylist()


def test_retired_samples_have_no_rows_and_are_counted_apart(grown: dict[str, Any]) -> None:
    corpus, labels, summary = grown["corpus"], grown["labels"], grown["second"]
    retired, _ = _live_record(grown)
    for shard, keys in retired.items():
        for folder, column in (("annotations", "image_key"), ("rejected", "image_key"), ("errors", "key")):
            assert not {row[column] for row in _rows(labels, folder, shard)} & keys, f"{folder}/{shard}"
        marker = _marker(labels, shard)
        index = _index_rows(corpus, shard)
        assert marker["counts"]["images_retired"] == len(keys)
        assert marker["counts"]["persons_retired"] == sum(index[k]["n_persons"] for k in keys)
    # What the retired samples had added leaves the live counts: an image error (the removed file, too large) and a
    # person error (a person of the changed file's earlier version).
    removed, changed = make_key(corpus.removed), make_key(corpus.changed)
    shard_of = {key: shard for shard, keys in retired.items() for key in keys}
    before, after = grown["markers_before"][shard_of[removed]]["counts"], _marker(labels, shard_of[removed])["counts"]
    assert (before["images_errored"], after["images_errored"]) == (1, 0)
    assert (after["images_in"], after["images_ok"]) == (before["images_in"] - 1, before["images_ok"])
    assert (after["persons_in"], after["persons_errored"]) == (before["persons_in"] - 2, before["persons_errored"] - 2)
    before, after = grown["markers_before"][shard_of[changed]]["counts"], _marker(labels, shard_of[changed])["counts"]
    persons = _index_rows(corpus, shard_of[changed])[changed]["n_persons"]  # one of them without keypoints
    assert (after["persons_in"], after["persons_errored"]) == (
        before["persons_in"] - persons,
        before["persons_errored"] - 1,
    )
    assert (after["images_in"], after["images_ok"]) == (before["images_in"] - 1, before["images_ok"] - 1)
    assert summary["errors_by_reason"] == {"no_valid_keypoints": 1}, "the kept file's person error stays"
    assert grown["first"]["errors_by_reason"] == {"decompression_bomb": 2, "no_valid_keypoints": 2}

    # The changed file's live sample is its new version, labeled in a new shard.
    new_shards = grown["manifest"]["generations"][1]["shards"]
    assert any(r["image_key"] == changed for s in new_shards for f in ("annotations", "rejected") for r in
               _rows(labels, f, s))  # fmt: skip

    # Counts reconcile over the live samples, shard by shard and in the summary, which states the retired ones.
    c = summary["counts"]
    assert summary["reconciled"] is True
    assert c["persons_in"] == c["persons_accepted"] + c["persons_rejected"] + c["persons_errored"]
    assert c["images_in"] == c["images_ok"] + c["images_errored"]
    assert c["images_retired"] == 2
    assert c["persons_retired"] == sum(_marker(labels, s)["counts"]["persons_retired"] for s in retired)
    assert c["images_in"] == grown["manifest"]["live"]["samples"]
    first = grown["first"]["counts"]
    assert c["images_in"] == first["images_in"] - 2 + sum(len(_index_keys(corpus, s)) for s in new_shards)
    assert first["images_retired"] == first["persons_retired"] == 0
    for shard in grown["manifest"]["shards"]:
        assert _marker(labels, shard["shard"])["reconciled"] is True


def test_near_duplicates_are_grouped_in_the_rows(grown: dict[str, Any]) -> None:
    corpus, labels = grown["corpus"], grown["labels"]
    _, groups = _live_record(grown)
    source, copy = make_key(corpus.near_source), make_key(corpus.near_copy)
    assert groups[source] == groups[copy] == min(source, copy)
    seen: dict[str, set[str | None]] = {}
    for shard in _shard_names(grown["manifest"]):
        for folder in ("annotations", "rejected"):
            for row in _rows(labels, folder, shard):
                seen.setdefault(row["image_key"], set()).add(row["near_dup_group"])
    assert seen[source] == seen[copy] == {min(source, copy)}
    assert all(values == {groups.get(key)} for key, values in seen.items()), "null outside a group"


def test_the_update_writes_what_a_full_label_of_the_grown_set_writes(grown: dict[str, Any], tmp_path: Path) -> None:
    corpus, labels = grown["corpus"], grown["labels"]
    fresh = tmp_path / "fresh"
    summary = label_shards(corpus.shards, fresh, *LABEL, handler=FakeDPMeshHandler)
    assert label_digests(fresh) == label_digests(labels)
    assert summary["counts"] == grown["second"]["counts"]
    for shard in _shard_names(grown["manifest"]):
        ours, theirs = _marker(labels, shard), _marker(fresh, shard)
        for key in ("counts", "live_digest", "reconciled", "tiers", "rejected_by_reason", "errors_by_reason"):
            assert ours[key] == theirs[key], f"{shard}: {key}"


def test_an_update_killed_before_its_marker_resumes_to_the_same_files(grown: dict[str, Any], tmp_path: Path) -> None:
    """A kill after an update rewrote a shard's files and before its marker: the marker (and the marker index) are
    still the earlier label's; the next run updates again from the rewritten files and commits the same."""
    labels = tmp_path / "labels"
    shutil.copytree(grown["labels"], labels)
    touched = sorted(s for s, m in grown["markers_before"].items() if _marker(labels, s).get("live_update"))
    expected_files, expected = label_digests(labels), {s: _marker(labels, s) for s in touched}
    for shard in touched:
        (labels / "_done" / f"{shard}.json").write_text(json.dumps(grown["markers_before"][shard], indent=1))
    (labels / "_done_index.json.gz").write_bytes(grown["index_before"])

    log = tmp_path / "model_calls.txt"
    resumed = _label(grown["corpus"].shards, labels, log)

    assert _persons_sent(log) == []
    assert resumed["shards"]["updated_this_run"] == len(touched)
    assert label_digests(labels) == expected_files
    assert {s: _marker(labels, s) for s in touched} == expected
    assert resumed["counts"] == grown["second"]["counts"]


def test_a_third_run_does_nothing(grown: dict[str, Any], tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    shutil.copytree(grown["labels"], labels)
    files = identities([*_label_files(labels), *(labels / "_done").glob("*.json")])
    log = tmp_path / "model_calls.txt"

    again = _label(grown["corpus"].shards, labels, log)

    assert _persons_sent(log) == []
    assert again["shards"]["labeled_this_run"] == again["shards"]["updated_this_run"] == 0
    assert identities([*_label_files(labels), *(labels / "_done").glob("*.json")]) == files
    assert again["counts"] == grown["second"]["counts"]


def test_error_rows_tell_the_images_the_reader_counted_errored(fake_labeled: tuple[str, dict[str, Any]]) -> None:
    """An update takes a retired image's errors out of ``images_errored`` by the reader's rule (``errored_images``):
    it agrees with the reader on every kind of error row (a corrupt image, an unreadable annotation, persons without
    usable keypoints, a truncated shard's missing samples and its shard-level row)."""
    output = Path(fake_labeled[0])
    markers = [json.loads(p.read_text()) for p in sorted((output / "_done").glob("*.json"))]
    assert sum(m["counts"]["images_errored"] for m in markers) >= 3
    for marker in markers:
        errors = _rows(output, "errors", marker["shard"])
        assert len(errored_images(errors)) == marker["counts"]["images_errored"], marker["shard"]

"""dpmesh-export on a grown shard set (issue 26 items 2 and 5, export side): labels that lag the set are refused in
one line naming dpmesh-label, incomplete labels are exported with a warning, and after dpmesh-label has followed the
append a rerun exports only the new shards and the shards whose labels changed.

The corpus: twelve photo-like scenes with annotated persons, sharded, labeled by the numpy stand-in and exported with
splits; then grown (two new files, one changed, one removed, a near-duplicate copy of a kept file) and appended.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.common.label_set import fetch_markers, listed_markers, write_index
from pipelines.config import ConfigError, ExportJobConfig, RefilterJobConfig, ShardJobConfig, compose_config
from pipelines.export.job import run as export
from pipelines.export.job import split_shorthand
from pipelines.refilter.job import run as refilter
from pipelines.shard.job import run as shard_job
from pipelines.storage import Storage
from tests.fakes.corpus import SyntheticImage, make_images, write_coco
from tests.fakes.digests import identities
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.near_duplicates import varied_jpegs
from tests.fakes.shard_set import label_shards
from tests.fakes.writes import recorded_writes


CHANGED, REMOVED, NEAR_COPY = "img_00001.jpg", "img_00003.jpg", "new_near.jpg"
SPLIT = (split_shorthand("split=train:0.5,val:0.5"),)


def _annotated(name: str, data: bytes, persons: list[dict[str, Any]]) -> SyntheticImage:
    width, height = Image.open(io.BytesIO(data)).size
    return SyntheticImage(name, data, width, height, persons)


def _write(root: Path, images: dict[str, SyntheticImage]) -> None:
    folder = root / "images"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for image in images.values():
        (folder / image.file_name).write_bytes(image.data)
    write_coco(str(root / "coco.json"), list(images.values()))


def _shard(root: Path, *overrides: str) -> dict[str, Any]:
    keys = [f"input.images={root / 'images'}", f"input.annotations={root / 'coco.json'}", f"output={root / 'shards'}"]
    keys += ["shard.max_samples=3", "log_level=WARNING", *overrides]
    return shard_job(compose_config("dpmesh_shard", keys, ShardJobConfig))


def _export_config(root: Path, labels: Path, out: Path) -> ExportJobConfig:
    keys = [f"input.labels={labels}", f"input.shards={root / 'shards'}", f"output={out}", "format=crops"]
    keys += ["export.crop_size=32", "log_level=WARNING", *SPLIT]
    return compose_config("dpmesh_export", keys, ExportJobConfig)


def _label_markers(labels: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((labels / "_done").glob("*.json"))}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Generation 0 sharded, labeled and exported; then the corpus grown and appended (generation 1), and a copy of
    the labels made before the append kept; then the labels brought up to the set by dpmesh-label."""
    root = tmp_path_factory.mktemp("export_grown")
    scenes = varied_jpegs(15, seed=41)
    people = make_images(15, seed=43, width=320, height=240, persons=(1, 2))
    images = {f"img_{i:05d}.jpg": _annotated(f"img_{i:05d}.jpg", scenes[i], people[i].persons) for i in range(12)}
    _write(root, images)
    first = _shard(root)
    labels, out = root / "labels", root / "export"
    label_shards(root / "shards", labels, "filter=off", handler=FakeDPMeshHandler)
    export(_export_config(root, labels, out))
    exported_before = {p.stem: p for p in (out / "_done").glob("*.json")}
    labels_before = _label_markers(labels)

    for i, name in enumerate(("new_0.jpg", "new_1.jpg")):
        images[name] = _annotated(name, scenes[12 + i], people[12 + i].persons)
    # The copy's source sits in a shard that retires nothing: its labels change by their near-duplicate groups alone.
    shard_of = {
        row["source_uri"].rsplit("/", 1)[-1]: index.stem
        for index in (root / "shards").glob("shard-*.parquet")
        for row in pq.read_table(index, columns=["source_uri"]).to_pylist()
    }
    source = next(n for n in sorted(images) if shard_of[n] not in {shard_of[CHANGED], shard_of[REMOVED]})
    images[CHANGED] = _annotated(CHANGED, scenes[14], people[14].persons)
    del images[REMOVED]
    copy = io.BytesIO()
    Image.open(io.BytesIO(images[source].data)).save(copy, "JPEG", quality=70)  # same size: persons unchanged
    images[NEAR_COPY] = _annotated(NEAR_COPY, copy.getvalue(), images[source].persons)
    _write(root, images)
    appended = _shard(root, "mode=append", "input.record_removals=true")
    stale = root / "labels_before_append"
    shutil.copytree(labels, stale)
    label_shards(root / "shards", labels, "filter=off", handler=FakeDPMeshHandler)
    return {
        "root": root,
        "labels": labels,
        "stale": stale,
        "out": out,
        "first_shards": [s["shard"] for s in first["shards"]],
        "new_shards": sorted({s["shard"] for s in appended["shards"]} - {s["shard"] for s in first["shards"]}),
        "exported_before": sorted(exported_before),
        "labels_before": labels_before,
    }


def test_labels_made_before_the_append_are_refused_in_one_line(grown: dict[str, Any], tmp_path: Path) -> None:
    root, out = grown["root"], tmp_path / "out"
    assert grown["new_shards"], "the append wrote shards"
    with pytest.raises(ConfigError) as refused:
        export(_export_config(root, grown["stale"], out))
    message = str(refused.value)
    assert "\n" not in message
    assert "lags the shard set" in message
    assert "generation 1" in message
    assert f"dpmesh-label input.shards={root / 'shards'} output={grown['stale']}" in message
    assert not out.exists(), "refused before anything is written"


@pytest.mark.parametrize("kind", ["retired", "regrouped"])
def test_labels_not_brought_up_to_the_live_set_are_refused(grown: dict[str, Any], tmp_path: Path, kind: str) -> None:
    """The new shards labeled, but an older shard's labels not brought up to date (its marker and index entry from
    before the append): its rows hold a sample the append retired, or near-duplicate groups it since changed."""
    root, labels = grown["root"], tmp_path / "labels"
    shutil.copytree(grown["labels"], labels)
    after = _label_markers(grown["labels"])
    changed = {n for n, m in grown["labels_before"].items() if m.get("live_digest") != after[n].get("live_digest")}
    retired = {n for n in changed if (after[n]["counts"].get("images_retired") or 0) > 0}
    candidates = sorted(retired if kind == "retired" else changed - retired)
    assert candidates, f"the append {kind} samples of an older shard"
    stale = candidates[0]
    shutil.copy(grown["stale"] / "_done" / f"{stale}.json", labels / "_done" / f"{stale}.json")
    storage = Storage()
    write_index(storage, str(labels), fetch_markers(storage, list(listed_markers(storage, str(labels)).values())))
    refusal = rf"1 labeled shards \(e\.g\. {stale}\) do not follow its live samples .*; run dpmesh-label"
    with pytest.raises(ConfigError, match=refusal):
        export(_export_config(root, labels, tmp_path / "out"))


def test_refiltered_labels_follow_the_shard_set_through_their_labels(grown: dict[str, Any], tmp_path: Path) -> None:
    """dpmesh-refilter carries its labels' live record and retired counts: refiltered up-to-date labels export, and
    refiltered labels of which an older shard was not brought up to the live set are refused like those labels."""
    root = grown["root"]
    fresh = tmp_path / "fresh"
    summary = _refilter(grown["labels"], fresh)
    labeled = json.loads((grown["labels"] / "_summary.json").read_text())["counts"]
    assert summary["reconciled"]
    assert labeled["images_retired"] > 0
    for count in ("images_retired", "persons_retired"):
        assert summary["counts"][count] == labeled[count], count
    export(_export_config(root, fresh, tmp_path / "out"))

    after = _label_markers(grown["labels"])
    stale = min(n for n, m in grown["labels_before"].items() if m.get("live_digest") != after[n].get("live_digest"))
    lagging = tmp_path / "lagging"
    shutil.copytree(grown["labels"], lagging)
    for path in grown["stale"].glob(f"*/{stale}.*"):  # that shard's labels as they were before the append
        shutil.copy(path, lagging / path.parent.name / path.name)
    storage = Storage()
    write_index(storage, str(lagging), fetch_markers(storage, list(listed_markers(storage, str(lagging)).values())))
    refiltered = tmp_path / "refiltered"
    _refilter(lagging, refiltered)
    with pytest.raises(ConfigError, match=rf"1 labeled shards \(e\.g\. {stale}\) do not follow its live samples"):
        export(_export_config(root, refiltered, tmp_path / "out2"))


def _refilter(labels: Path, output: Path) -> dict[str, Any]:
    keys = [f"input={labels}", f"output={output}", "log_level=WARNING"]
    summary: dict[str, Any] = refilter(compose_config("dpmesh_refilter", keys, RefilterJobConfig))
    return summary


def test_incomplete_labels_are_exported_with_a_warning(
    grown: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A label run not finished (a shard's marker missing): the labeled shards are exported, the count is logged,
    and the rerun after labeling exports that shard alone."""
    root, labels, out = grown["root"], tmp_path / "labels", tmp_path / "out"
    shutil.copytree(grown["labels"], labels)
    missing = grown["first_shards"][0]
    kept = labels.parent / "kept_marker.json"
    shutil.move(labels / "_done" / f"{missing}.json", kept)
    with caplog.at_level(logging.WARNING, logger="pipelines.export"):
        stats = export(_export_config(root, labels, out))
    assert f"1 live shards of the shard set have no labels yet (e.g. {missing})" in caplog.text
    assert missing not in {p.stem for p in (out / "_done").glob("*.json")}
    assert stats["shards"] == len(_label_markers(labels))

    shutil.move(kept, labels / "_done" / f"{missing}.json")
    before = identities((out / "_done").glob("*.json"))
    with recorded_writes() as writes:
        export(_export_config(root, labels, out))
    markers = [uri for uri in writes.written if "/_done/" in uri]
    assert markers == [str(out / "_done" / f"{missing}.json")]
    assert identities(p for p in (out / "_done").glob("*.json") if p.stem != missing) == before


def test_after_the_append_and_labeling_a_rerun_exports_only_what_changed(grown: dict[str, Any]) -> None:
    root, labels, out = grown["root"], grown["labels"], grown["out"]
    after = _label_markers(labels)
    relabeled = {
        name
        for name, marker in grown["labels_before"].items()
        if marker.get("live_digest") != after[name].get("live_digest")
    }
    assert relabeled, "retired samples and the new near-duplicate changed some older shards' labels"
    unchanged = sorted(set(grown["exported_before"]) - relabeled)
    assert unchanged, "and left others as they were"
    kept_files = [p for name in unchanged for p in (out / "_done" / f"{name}.json", *out.glob(f"*/{name}.tar"))]
    before = identities(kept_files)

    with recorded_writes() as writes:
        stats = export(_export_config(root, labels, out))

    rewritten = sorted({Path(uri).stem for uri in writes.written if "/_done/shard-" in uri})
    assert rewritten == sorted(relabeled | set(grown["new_shards"]))
    assert identities(kept_files) == before, "the shards whose labels did not change are not touched"
    rows = pq.read_table(labels / "annotations").to_pylist()
    assert stats["counts"]["persons"] == len(rows), "the card covers the whole grown set"
    exported: dict[str, str] = {}
    for tar in sorted(out.glob("*/shard-*.tar")):
        with tarfile.open(tar) as archive:
            exported.update({m.name.split(".", 1)[0]: tar.parent.name for m in archive.getmembers()})
    assert set(exported) == {r["sample_id"] for r in rows}, "no retired sample, every live one"
    near = {r["image_key"]: r["near_dup_group"] for r in rows if r.get("near_dup_group")}
    groups = {g: {exported[r["sample_id"]] for r in rows if near.get(r["image_key"]) == g} for g in set(near.values())}
    assert groups, "the planted copy is grouped with its source"
    assert all(len(splits) == 1 for splits in groups.values()), "a near-duplicate group stays in one split"
    assert np.sum([stats["splits"]["splits"][s]["persons"] for s in ("train", "val")]) == len(rows)


def test_the_card_names_the_benchmark_copies_the_shard_set_left_out(tmp_path: Path) -> None:
    """A shard set made with a benchmark list (exclude.images): the card and stats.json carry its count of copies
    left out (reason benchmark_overlap) and the list's summary from the manifest."""
    scenes = varied_jpegs(5, seed=47)
    people = make_images(5, seed=53, width=320, height=240, persons=(1, 1))
    images = {f"img_{i:05d}.jpg": _annotated(f"img_{i:05d}.jpg", scenes[i], people[i].persons) for i in range(5)}
    _write(tmp_path, images)
    benchmark = tmp_path / "benchmark"
    benchmark.mkdir()
    (benchmark / "frame_0001.jpg").write_bytes(images["img_00002.jpg"].data)  # the corpus holds a benchmark image
    manifest = _shard(tmp_path, f"exclude.images={benchmark}")
    assert manifest["counts"]["benchmark_overlap"] == 1
    label_shards(tmp_path / "shards", tmp_path / "labels", "filter=off", handler=FakeDPMeshHandler)
    out = tmp_path / "out"
    stats = export(_export_config(tmp_path, tmp_path / "labels", out))
    record = stats["provenance"]["shard_set"]
    assert record == {"benchmark_overlap": 1, "exclude": [manifest["exclude"]]}
    card = (out / "README.md").read_text()
    assert "benchmark overlap guard: 1 corpus images left out of the shard set" in card
    assert manifest["exclude"]["digest"] in card

"""dpmesh-export split= (issue 26 item 4): whole groups to one split, by the documented hash of the group id.

The corpus: four "videos" of three frames (``vidNN_fK.jpg``, grouped by ``split.group_by``), two stand-alone images,
and two planted near-duplicates (JPEG re-encodes of a frame) that ``dpmesh-shard`` groups with their originals. The
expected split of every person is computed here from the README's rule, not by the export's code: near-duplicate
group (``_near_duplicates.parquet``), else the ``group_by`` match of ``source_uri``, else the key; BLAKE2b-64 of the
group id against the cumulative fractions.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines.config import ConfigError, ExportJobConfig, compose_config
from pipelines.config.export import SplitConfig
from pipelines.export.job import run as export
from pipelines.export.job import split_shorthand
from pipelines.export.splits import SplitTally, Splitter, merge_split_blocks
from pipelines.export.torch_dataset import LabeledPersonDataset
from pipelines.storage.local import TEMP_PREFIX
from tests.export.test_export_index import recorded_reads
from tests.fakes.corpus import make_images
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.shard_set import label_shards, shard_annotated


FRACTIONS = (("train", 0.5), ("val", 0.25), ("test", 0.25))
SPLIT = ",".join(f"{name}:{fraction}" for name, fraction in FRACTIONS)
GROUP_BY = r"/(vid\d+)_f"
PLANTED = {"dup_a.jpg": 0, "zz_copy.jpg": 7}  # re-encodes of vid00_f0 and vid02_f1


def _reencoded(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("export_splits")
    images = make_images(14, seed=31, width=96, height=80, persons=(1, 2))
    for i, image in enumerate(images[:12]):
        image.file_name = f"vid{i // 3:02d}_f{i % 3}.jpg"
    images[12].file_name, images[13].file_name = "solo_0.jpg", "solo_1.jpg"
    images += [replace(images[i], file_name=name, data=_reencoded(images[i].data)) for name, i in PLANTED.items()]
    shards = shard_annotated(root, images, "shard.max_samples=3")
    label_shards(shards, root / "labels", "filter=off", handler=FakeDPMeshHandler)
    near = pq.read_table(shards / "_near_duplicates.parquet").to_pylist()
    rows = pq.read_table(root / "labels" / "annotations").to_pylist()
    return {
        "root": root,
        "near": {r["key"]: r["group"] for r in near},
        "near_shards": {r["shard"] for r in near},
        "rows": {r["sample_id"]: r for r in rows},
    }


def _config(labels: Path, shards: Path, out: Path, fmt: str, *more: str) -> ExportJobConfig:
    keys = [f"input.labels={labels}", f"input.shards={shards}", f"output={out}", f"format={fmt}"]
    return compose_config("dpmesh_export", [*keys, "log_level=WARNING", *more], ExportJobConfig)


def _split_args(group_by: str | None = GROUP_BY) -> list[str]:
    return [split_shorthand(f"split={SPLIT}"), *([f"split.group_by='{group_by}'"] if group_by else [])]


def _documented_split(group: str) -> str:
    u = int.from_bytes(hashlib.blake2b(group.encode(), digest_size=8).digest(), "big") / 2.0**64
    cumulative = 0.0
    for name, fraction in FRACTIONS:
        cumulative += fraction
        if u < cumulative:
            return name
    return FRACTIONS[-1][0]


def _group(row: dict[str, Any], near: dict[str, str], group_by: str | None) -> str:
    if row["image_key"] in near:
        return near[row["image_key"]]
    match = re.search(group_by, row["source_uri"]) if group_by else None
    return match.group(1) if match else row["image_key"]


def _crops_by_split(out: Path) -> dict[str, str]:
    """``{sample_id: split}`` from every ``<split>/shard-*.tar`` of a crops export."""
    found = {}
    for tar_path in sorted(out.glob("*/shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                sample_id = member.name.split(".", 1)[0]
                assert found.setdefault(sample_id, tar_path.parent.name) == tar_path.parent.name, "one split each"
    return found


def test_every_group_lands_whole_in_the_split_its_id_hashes_to(corpus: dict[str, Any], tmp_path: Path) -> None:
    root, near, rows = corpus["root"], corpus["near"], corpus["rows"]
    assert len(set(near.values())) == len(PLANTED), "dpmesh-shard groups each planted copy with its original"
    out = tmp_path / "out"
    stats = export(_config(root / "labels", root / "shards", out, "crops", "export.crop_size=32", *_split_args()))

    got = _crops_by_split(out)
    assert set(got) == set(rows)
    expected = {sid: _documented_split(_group(row, near, GROUP_BY)) for sid, row in rows.items()}
    assert got == expected
    by_group: dict[str, set[str]] = defaultdict(set)
    for sid, row in rows.items():
        by_group[_group(row, near, GROUP_BY)].add(got[sid])
    assert all(len(splits) == 1 for splits in by_group.values()), "whole groups"
    assert not list(out.glob("shard-*")), "no shard file outside the split folders"
    for split in ("train", "val", "test"):  # every split names every shard (an empty tar where it holds nothing)
        assert sorted(p.name for p in (out / split).glob("*.tar")) == sorted(p.name for p in out.glob("train/*.tar"))

    images_by_split: dict[str, set[str]] = defaultdict(set)
    for sid, split in got.items():
        images_by_split[split].add(rows[sid]["image_key"])
    groups = {g: {got[s] for s in rows if _group(rows[s], near, GROUP_BY) == g} for g in by_group}
    # Shared groups: named by a rule (near-duplicate, group_by), not by the image's own key; a per-image split would
    # put each image where its own key hashes to.
    own: dict[str, set[str]] = defaultdict(set)
    for row in rows.values():
        if row["image_key"] in near or re.search(GROUP_BY, row["source_uri"]):
            own[_group(row, near, GROUP_BY)].add(_documented_split(row["image_key"]))
    splits = stats["splits"]
    for name, _ in FRACTIONS:
        assert splits["splits"][name]["persons"] == sum(1 for s in got.values() if s == name)
        assert splits["splits"][name]["images"] == len(images_by_split[name])
        assert splits["splits"][name]["groups"] == sum(1 for g in groups.values() if g == {name})
    assert sum(n["persons"] for n in splits["splits"].values()) == stats["counts"]["persons"], "counts reconcile"
    assert splits["groups_straddling"] == sum(1 for own_splits in own.values() if len(own_splits) > 1)
    assert splits["groups_straddling"] >= 1, "the corpus has groups that a per-image split would cut"
    assert splits["group_sources"]["near_duplicate"] == 2 * len(PLANTED)
    assert splits["group_sources"]["key"] == 2  # the stand-alone images
    card = (out / "README.md").read_text()
    assert "## Splits" in card
    assert f"**{splits['groups_straddling']}** of them would have straddled splits without grouping" in card
    for name, fraction in FRACTIONS:
        n = splits["splits"][name]
        assert f"| {name} | {fraction:g} | {n['persons']} | {n['images']} | {n['groups']} |" in card

    again = tmp_path / "again"  # deterministic: another run, another folder, the same bytes in every split
    export(_config(root / "labels", root / "shards", again, "crops", "export.crop_size=32", *_split_args()))
    assert {p.relative_to(out): p.read_bytes() for p in out.glob("*/*.tar")} == {
        p.relative_to(again): p.read_bytes() for p in again.glob("*/*.tar")
    }


def test_labels_without_the_column_take_the_shard_sets_groups(corpus: dict[str, Any], tmp_path: Path) -> None:
    """Labels made before rows carried ``near_dup_group``: the groups come from the shard set's file, read once."""
    root = corpus["root"]
    labels = tmp_path / "labels"
    shutil.copytree(root / "labels", labels)
    for path in (labels / "annotations").glob("*.parquet"):
        table = pq.read_table(path)
        if "near_dup_group" in table.column_names:
            pq.write_table(table.drop_columns(["near_dup_group"]), path)
    out, reference = tmp_path / "out", tmp_path / "reference"
    with recorded_reads() as reads:
        export(_config(labels, root / "shards", out, "crops", "export.crop_size=32", *_split_args()))
    assert reads.count(str(root / "shards" / "_near_duplicates.parquet")) == 1, "once, on the driver"
    export(_config(root / "labels", root / "shards", reference, "crops", "export.crop_size=32", *_split_args()))
    assert _crops_by_split(out) == _crops_by_split(reference)
    for path in (out / "_done").glob("*.json"):  # the groups each shard was exported with: redone when they change
        assert ("near_dup_groups_sha256" in json.loads(path.read_text())) == (path.stem in corpus["near_shards"])


def test_without_group_by_frames_of_a_video_split_apart_and_the_card_says_so(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    root, near, rows = corpus["root"], corpus["near"], corpus["rows"]
    out = tmp_path / "out"
    stats = export(_config(root / "labels", root / "shards", out, "crops", "export.crop_size=32", *_split_args(None)))
    got = _crops_by_split(out)
    assert got == {sid: _documented_split(_group(row, near, None)) for sid, row in rows.items()}
    assert stats["splits"]["group_sources"]["group_by"] == 0
    assert stats["splits"]["shared_groups"] == len(PLANTED)  # only the near-duplicate groups


def test_trainer_formats_put_each_split_in_its_own_folder(corpus: dict[str, Any], tmp_path: Path) -> None:
    root, near, rows = corpus["root"], corpus["near"], corpus["rows"]
    expected = {sid: _documented_split(_group(row, near, GROUP_BY)) for sid, row in rows.items()}
    hmr2 = tmp_path / "hmr2"
    export(_config(root / "labels", root / "shards", hmr2, "hmr2", *_split_args()))
    for split in ("train", "val", "test"):  # 4D-Humans: a dataset per split, its tars listed as URLs
        tars = sorted(str(p) for p in (hmr2 / split).glob("shard-*.tar"))
        samples = wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("rgb8")
        seen = {f"{s['__key__']}_p{p['personid']}" for s in samples for p in s["data.pyd"]}
        assert seen == {sid for sid, name in expected.items() if name == split}
    camerahmr = tmp_path / "camerahmr"
    export(_config(root / "labels", root / "shards", camerahmr, "camerahmr", *_split_args()))
    for split in ("train", "val", "test"):  # CameraHMR: DATASET_FOLDERS = the split folder, imgname relative to it
        names, ids = [], []
        for npz in sorted((camerahmr / split).glob("shard-*.npz")):
            data = np.load(npz)
            names += [str(n) for n in data["imgname"]]
            ids += [str(s) for s in data["sample_id"]]
        assert set(ids) == {sid for sid, name in expected.items() if name == split}
        assert all((camerahmr / split / name).is_file() for name in names)
        loose = {str(p.relative_to(camerahmr / split)) for p in (camerahmr / split / "images").glob("*.jpg")}
        assert loose == set(names)
    assert not (camerahmr / "images").exists()


def test_the_default_export_has_no_split_and_is_written_as_before(corpus: dict[str, Any], tmp_path: Path) -> None:
    root = corpus["root"]
    out = tmp_path / "out"
    stats = export(_config(root / "labels", root / "shards", out, "crops", "export.crop_size=32"))
    assert "splits" not in stats
    assert not [p for p in out.iterdir() if p.is_dir() and p.name not in ("_done",)]
    marker = json.loads(next((out / "_done").glob("*.json")).read_text())
    assert "splits" not in marker
    assert "near_dup_groups_sha256" not in marker
    assert all("/" not in name for name in marker["files"])
    with_split = _config(root / "labels", root / "shards", out, "crops", "export.crop_size=32", *_split_args())
    with pytest.raises(ConfigError, match="another config"):  # a split is another export config
        export(with_split)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["split.fractions='train:0.9,val:0.2'"], "sum to 1.1"),
        (["split.fractions='train:0.9,val'"], "is not <name>:<fraction>"),
        (["split.fractions='train:1.0,images:0.0'"], "cannot name a split folder"),
        (["split.fractions='Train:1'"], "cannot name a split folder"),
        (["split.fractions='_done:1'"], "cannot name a split folder"),
        (["split.fractions='a:0.5,a:0.5'"], "named twice"),
        (["split.group_by='/(vid'"], "needs split="),
        ([split_shorthand("split=train:1"), "split.group_by='/(vid'"], "not a regular expression"),
        ([split_shorthand("split=train:0.5,val:0.5"), "format=labels"], "does not apply to format=labels"),
    ],
)
def test_split_settings_are_checked_at_launch(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _config(Path("L"), Path("S"), Path("O"), "crops", *overrides)


def test_the_command_line_shorthand() -> None:
    assert split_shorthand("split=train:0.9,val:0.05,test:0.05") == "split.fractions='train:0.9,val:0.05,test:0.05'"
    assert split_shorthand("split='train:1'") == "split.fractions='train:1'"
    assert split_shorthand("split.group_by=x") == "split.group_by=x"
    assert split_shorthand("format=hmr2") == "format=hmr2"
    cfg = _config(Path("L"), Path("S"), Path("O"), "crops", split_shorthand("split=train:0.9,val:0.05,test:0.05"))
    assert cfg.split.parts() == (("train", 0.9), ("val", 0.05), ("test", 0.05))


def test_the_split_of_a_group_is_stable_and_follows_the_fractions() -> None:
    splitter = Splitter(SplitConfig(fractions=SPLIT))
    ids = [f"group-{i}" for i in range(20_000)]
    assigned = [splitter.split_of(g) for g in ids]
    assert assigned == [_documented_split(g) for g in ids]
    for name, fraction in FRACTIONS:
        assert abs(assigned.count(name) / len(ids) - fraction) < 0.02
    grown = [splitter.split_of(g) for g in [*ids, *(f"new-{i}" for i in range(1000))]][: len(ids)]
    assert grown == assigned, "a group keeps its split as the corpus grows"


def test_the_card_counts_groups_cut_across_shards() -> None:
    """A group with images in two shards: its masks are ORed before it is counted as straddling (or not)."""
    splitter = Splitter(SplitConfig(fractions=SPLIT, group_by=GROUP_BY))
    keys = [f"k{i}" for i in range(200)]
    apart = next(
        (a, b) for a in keys for b in keys if splitter.split_of(a) != splitter.split_of(b)
    )  # two keys a per-image split puts in two splits
    blocks = []
    for key in apart:  # one image of group "vid09" in each of two shards
        tally = SplitTally()
        tally.add(splitter, key, "vid09", "group_by", splitter.split_of("vid09"), 1, "vid09")
        blocks.append(tally.block(splitter.names))
    merged = merge_split_blocks(blocks, splitter)
    assert merged["groups_straddling"] == 1
    assert merged["groups"] == 1
    assert merged["splits"][splitter.split_of("vid09")] == {"persons": 2, "images": 2, "groups": 1}
    # A near-duplicate group took one frame of vid09 into another split than the group's own.
    other = next(g for g in (f"nd{i}" for i in range(100)) if splitter.split_of(g) != splitter.split_of("vid09"))
    tally = SplitTally()
    tally.add(splitter, "k999", other, "near_duplicate", splitter.split_of(other), 1, "vid09")
    merged = merge_split_blocks([*blocks, tally.block(splitter.names)], splitter)
    assert merged["group_by_groups_split_by_near_duplicates"] == 1


def test_the_torch_dataset_holds_the_persons_the_export_puts_in_a_split(corpus: dict[str, Any]) -> None:
    root, near, rows = corpus["root"], corpus["near"], corpus["rows"]
    splits = SplitConfig(fractions=SPLIT, group_by=GROUP_BY)
    for name, _ in FRACTIONS:
        expected = {sid for sid, row in rows.items() if _documented_split(_group(row, near, GROUP_BY)) == name}
        if not expected:
            continue
        dataset = LabeledPersonDataset(
            str(root / "labels"), str(root / "shards"), crop_size=32, splits=splits, split=name
        )
        assert set(dataset._sample_ids) == expected
    with pytest.raises(ValueError, match="go together"):
        LabeledPersonDataset(str(root / "labels"), str(root / "shards"), split="val")


def test_a_link_planted_as_a_split_folder_is_never_written_through(corpus: dict[str, Any], tmp_path: Path) -> None:
    """``<output>/val`` a link to a folder outside the output: no shard writes through it (each is refused,
    ``unsafe_path``, counted) and the launch's clean-up of temporaries does not reach through it either."""
    root = corpus["root"]
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    bait = outside / f"{TEMP_PREFIX}victim"
    bait.write_bytes(b"not the export's")
    out.mkdir()
    (out / "val").symlink_to(outside, target_is_directory=True)
    stats = export(_config(root / "labels", root / "shards", out, "crops", "export.crop_size=32", *_split_args()))
    assert bait.read_bytes() == b"not the export's"
    assert sorted(p.name for p in outside.iterdir()) == [bait.name]
    assert {e["reason"] for e in stats["shard_errors"]} == {"unsafe_path"}
    assert stats["counts"]["persons"] == 0
    assert stats["reconciled"] is True
    assert not (out / "_tmp").exists(), "the refused shards' other writers dropped their scratch files"

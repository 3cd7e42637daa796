"""Labels-only releases and rebuilds from them, and ``export.box_scale``, on the real jobs (DirectRunner, real files).

A corpus (one image EXIF-rotated, so the rebuild must decode it upright the same way) is sharded and labeled with the
tiny model; ``format=labels`` releases it; ``from_release`` rebuilds hmr2, camerahmr and crops from the release and a
copy of the corpus, byte for byte what a direct export writes, and refuses, image by image and counted, what is
missing, changed or named by a hostile path. Resume and kills follow the export's commit protocol.
"""

import hashlib
import io
import json
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import ConfigError, ExportJobConfig, compose_config, config_hash
from pipelines.export.export_shard import export_config_hash
from pipelines.export.job import run as export_job
from schemas import RELEASE_IMAGES_SCHEMA
from tests.fakes.corpus import make_images
from tests.fakes.digests import digests
from tests.fakes.kill import kill_after_write
from tests.fakes.shard_set import label_shards, shard_annotated


ROTATED = "img_00001"  # stored rotated with EXIF orientation 6; its annotations are in the upright frame


def export(out: Path, *overrides: str) -> dict[str, Any]:
    """``dpmesh-export output=<out>`` with ``overrides``; returns ``stats.json``."""
    keys = [f"output={out}", "log_level=WARNING", *overrides]
    return export_job(compose_config("dpmesh_export", keys, ExportJobConfig))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """5 annotated images in 2+ shards (one EXIF-rotated), labeled with the tiny model and ``filter=off``; a direct
    hmr2 export, a labels release of the same labels, and a copy of the corpus (what a release's user downloads)."""
    root = tmp_path_factory.mktemp("release")
    images = make_images(5, seed=7, width=200, height=150, persons=(1, 2))
    upright = Image.open(io.BytesIO(images[1].data))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed = stored rotated 90 degrees clockwise
    stored = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, "JPEG", quality=95, exif=exif.tobytes())
    images[1].data = stored.getvalue()
    shards = shard_annotated(root, images, "shard.max_samples=3")
    label_shards(shards, root / "labels", "filter=off")
    direct_args = [f"input.labels={root / 'labels'}", f"input.shards={shards}"]
    export(root / "direct-hmr2", *direct_args, "format=hmr2")
    export(root / "release", *direct_args, "format=labels")
    shutil.copytree(root / "images", root / "copy")
    rows = pq.read_table(root / "labels" / "annotations").to_pylist()
    return {"root": root, "direct_args": direct_args, "rows": {r["sample_id"]: r for r in rows}}


def _from_release(corpus: dict[str, Any], images: Path | None = None, release: Path | None = None) -> list[str]:
    root = corpus["root"]
    return [f"from_release={release or root / 'release'}", f"input.images={images or root / 'copy'}"]


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _markers(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "_done").glob("*.json"))}


def test_a_labels_release_holds_the_rows_and_each_images_path_size_and_sha1_but_no_image(
    corpus: dict[str, Any],
) -> None:
    root, release = corpus["root"], corpus["root"] / "release"
    shards = sorted(p.stem for p in (root / "labels" / "_done").glob("*.json"))
    files = {p.name for p in release.iterdir() if p.is_file()}
    assert files == {
        *(f"{s}.labels.parquet" for s in shards),
        *(f"{s}.images.parquet" for s in shards),
        "stats.json",
        "README.md",
        "_intent.json",
        "_done_index.json.gz",  # the markers' index: a rebuild plans from it
    }
    assert not [p for p in release.rglob("*") if p.suffix in (".jpg", ".tar", ".npz")], "no image bytes"
    labels_schema = pq.read_schema(root / "labels" / "annotations" / f"{shards[0]}.parquet")
    released = {}
    for shard in shards:
        table = pq.read_table(release / f"{shard}.labels.parquet")
        assert table.schema.equals(labels_schema, check_metadata=True)  # the rows as labeled, file metadata too
        released.update({r["sample_id"]: r for r in table.to_pylist()})
        images = pq.read_table(release / f"{shard}.images.parquet")
        assert images.schema.remove_metadata().equals(RELEASE_IMAGES_SCHEMA.remove_metadata())
        keys = images["key"].to_pylist()
        assert keys == sorted(keys) == sorted(set(table["image_key"].to_pylist()))
        for image in images.to_pylist():
            original = (root / "images" / image["path"]).read_bytes()  # the path is relative to the corpus root
            assert image["sha1"] == hashlib.sha1(original).hexdigest()
            assert image["bytes"] == len(original)
            assert image["source_uri"].endswith(image["path"])
    assert released == corpus["rows"]  # filter=off, no selection: every accepted row, values unchanged
    card = (release / "README.md").read_text()
    assert "from_release=<this folder>" in card
    assert "image_mismatch" in card
    assert "tight person box" in card
    stats = json.loads((release / "stats.json").read_text())
    assert stats["counts"]["persons"] == len(corpus["rows"])
    assert stats["provenance"]["max_image_pixels"] > 0  # what a rebuild decodes with


@pytest.mark.parametrize("fmt", ["hmr2", "camerahmr", "crops"])
def test_a_rebuild_from_the_release_writes_the_bytes_of_a_direct_export(
    corpus: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    root = corpus["root"]
    direct = root / "direct-hmr2" if fmt == "hmr2" else tmp_path / "direct"
    if fmt != "hmr2":
        export(direct, *corpus["direct_args"], f"format={fmt}")
    rebuilt = tmp_path / "rebuilt"
    stats = export(rebuilt, *_from_release(corpus), f"format={fmt}")
    data_files = ("shard-*.tar", "shard-*.npz", "images/*")
    assert digests(rebuilt, *data_files) == digests(direct, *data_files)
    assert digests(direct, *data_files), "the direct export wrote files"
    for name, marker in _markers(rebuilt).items():  # the same marker, plus the release it was rebuilt from
        release_hash = json.loads((root / "release" / "_done" / f"{name}.json").read_text())["config_hash"]
        assert marker.pop("release") == {"config_hash": release_hash}
        assert marker == _markers(direct)[name]
    direct_stats = json.loads((direct / "stats.json").read_text())
    assert {k: v for k, v in stats.items() if k != "provenance"} == {
        k: v for k, v in direct_stats.items() if k != "provenance"
    }
    assert stats["provenance"]["release"] == str(root / "release")
    assert stats["provenance"]["label_run"] == direct_stats["provenance"]["label_run"]
    assert "rebuilt from the labels release" in (rebuilt / "README.md").read_text()


def test_a_missing_changed_or_hostile_image_is_counted_never_paired_with_a_label(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    root = corpus["root"]
    release = tmp_path / "release"
    shutil.copytree(root / "release", release)
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    by_key = {r["image_key"]: r for r in corpus["rows"].values()}
    keys = sorted(by_key)
    changed, grown, missing, escaping = keys[:4]
    paths = {}
    for part in release.glob("*.images.parquet"):
        table = pq.read_table(part)
        rows = table.to_pylist()
        paths.update({r["key"]: r["path"] for r in rows})
        for row in rows:
            if row["key"] == escaping:  # a hostile release: the path leaves input.images, where the same bytes wait
                shutil.copy(images / row["path"], tmp_path / "outside.jpg")
                row["path"] = "../outside.jpg"
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
    edited = bytearray((images / paths[changed]).read_bytes())
    edited[len(edited) // 2] ^= 0xFF  # same name, same size, other bytes: only the sha1 tells
    (images / paths[changed]).write_bytes(bytes(edited))
    with (images / paths[grown]).open("ab") as file:  # a longer file is told by its size, without reading it all
        file.write(b"\0" * 4096)
    (images / paths[missing]).unlink()
    refused = (changed, grown, missing, escaping)
    persons = {k: sum(1 for r in corpus["rows"].values() if r["image_key"] == k) for k in refused}

    out = tmp_path / "rebuilt"
    stats = export(out, *_from_release(corpus, images=images, release=release), "format=hmr2")
    assert stats["skipped_by_reason"] == {
        "image_mismatch": persons[changed] + persons[grown],
        "image_missing": persons[missing],
        "unsafe_path": persons[escaping],
    }
    assert stats["reconciled"]
    assert stats["counts"]["persons"] == len(corpus["rows"]) - sum(persons.values())
    skipped = {s["key"]: s for s in stats["skipped_images"]}
    assert "sha1" in skipped[changed]["error"]
    assert "is more than" in skipped[grown]["error"]
    assert paths[missing] in skipped[missing]["error"]
    assert "'..'" in skipped[escaping]["error"]
    card = (out / "README.md").read_text()
    for reason in ("image_mismatch", "image_missing", "unsafe_path"):
        assert reason in card
    direct = {name: data for tar in (root / "direct-hmr2").glob("*.tar") for name, data in _members(tar).items()}
    written = {name: data for tar in out.glob("*.tar") for name, data in _members(tar).items()}
    assert {name.split(".")[0] for name in written} == set(keys) - set(refused)
    assert all(written[name] == direct[name] for name in written)  # every other image and label as exported directly


def test_a_release_shard_gone_or_not_a_release_exports_nothing_of_it(corpus: dict[str, Any], tmp_path: Path) -> None:
    root = corpus["root"]
    release = tmp_path / "release"
    shutil.copytree(root / "release", release)
    first, second = sorted(p.stem for p in (release / "_done").glob("*.json"))[:2]
    (release / f"{first}.labels.parquet").unlink()
    marker = json.loads((release / "_done" / f"{second}.json").read_text())
    (release / "_done" / f"{second}.json").write_text(json.dumps({**marker, "format": "hmr2"}))
    stats = export(tmp_path / "out", *_from_release(corpus, release=release), "format=hmr2")
    refused = {e["shard"]: e["reason"] for e in stats["shard_errors"]}
    assert refused == {first: "labels_missing", second: "labels_unreadable"}
    assert stats["reconciled"]
    assert not (tmp_path / "out" / f"{first}.tar").exists()


def test_a_rebuild_resumes_by_its_markers_and_refuses_another_config(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "rebuilt"
    args = [*_from_release(corpus), "format=hmr2"]
    export(out, *args)
    before = digests(out)
    committed = [*out.glob("shard-*.tar"), *(out / "_done").glob("shard-*.json")]
    stamps = {p: p.stat().st_mtime_ns for p in committed}
    export(out, *args)  # nothing to do: no shard's file or marker rewritten
    assert digests(out) == before
    assert {p: p.stat().st_mtime_ns for p in committed} == stamps
    victim = sorted(out.glob("shard-*.tar"))[0]
    victim.unlink()
    (out / "_done" / f"{victim.stem}.json").unlink()
    export(out, *args)  # only that shard again, to the same bytes
    assert digests(out) == before
    with pytest.raises(ConfigError, match="another run"):
        export(out, *args, "export.box_scale=1.2")


# A job killed right after its first write whose URI matches argv[1] (tests/fakes/kill.py).
_KILL_AFTER_WRITE = kill_after_write("sys.argv[0] = 'dpmesh-export'\nfrom pipelines.export.job import main; main()\n")


@pytest.mark.parametrize(
    ("what", "boundary"),
    [("release", r"/shard-\d+\.images\.parquet$"), ("rebuild", r"/shard-\d+\.tar$")],
)
def test_a_release_or_rebuild_killed_mid_shard_resumes_to_the_same_bytes(
    corpus: dict[str, Any], tmp_path: Path, what: str, boundary: str
) -> None:
    root = corpus["root"]
    if what == "release":
        args, reference = [*corpus["direct_args"], "format=labels"], root / "release"
    else:
        args, reference = [*_from_release(corpus), "format=hmr2"], tmp_path / "reference"
        export(reference, *args)
    out = tmp_path / "killed"
    process = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_WRITE, boundary, f"output={out}", "log_level=WARNING", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, f"the {what} was not killed after its first shard file"
    export(out, *args)
    assert digests(out) == digests(reference)


def test_box_scale_pads_the_hmr2_and_camerahmr_box_and_is_another_config(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    root = corpus["root"]
    export(tmp_path / "hmr2", *corpus["direct_args"], "format=hmr2", "export.box_scale=1.2")
    tight, padded = _people(root / "direct-hmr2"), _people(tmp_path / "hmr2")
    assert tight.keys() == padded.keys()
    for name, people in padded.items():
        for person, reference in zip(people, tight[name], strict=True):
            np.testing.assert_array_equal(person["center"], reference["center"])
            np.testing.assert_allclose(person["scale"], reference["scale"] * 1.2, rtol=1e-6)
    export(tmp_path / "cam", *corpus["direct_args"], "format=camerahmr", "export.box_scale=1.2")
    for npz in (tmp_path / "cam").glob("*.npz"):
        data = np.load(npz)
        for name, scale in zip(data["sample_id"], data["scale"], strict=True):
            row = corpus["rows"][str(name)]
            x1, y1, x2, y2 = row["bbox_xyxy"]
            np.testing.assert_allclose(scale, max(x2 - x1, y2 - y1) * 1.2 / 200, rtol=1e-5)
    assert "x1.2" in (tmp_path / "cam" / "README.md").read_text()

    def cfg(*more: str) -> ExportJobConfig:
        keys = ["input.labels=L", "input.shards=S", "output=O", *more]
        return compose_config("dpmesh_export", keys, ExportJobConfig)

    # At its default the option is left out of the hash: an output made before it existed is still this config's
    # (the keys the export hash left out before box_scale, from_release, split and review were added, and those;
    # review is in the hash by its decisions' digest, only when given).
    before = ("input", "output", "runner", "storage", "log_level", "overwrite")
    added = ("from_release", "export.box_scale", "split", "review", "review_conflicts")
    assert export_config_hash(cfg()) == config_hash(cfg(), exclude=(*before, *added))
    assert export_config_hash(cfg("export.box_scale=1.2")) != export_config_hash(cfg())
    with pytest.raises(ConfigError, match=r"export\.box_scale applies to format=hmr2"):
        cfg("format=crops", "export.box_scale=1.2")


def _people(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every ``data.pyd`` of an hmr2 export, unpickled (our own export, read back), by member name."""
    return {n: pickle.loads(d) for t in out.glob("*.tar") for n, d in _members(t).items() if n.endswith(".pyd")}


def test_launch_refuses_a_release_that_cannot_be_rebuilt_as_asked(corpus: dict[str, Any], tmp_path: Path) -> None:
    root = corpus["root"]
    refusals = {
        "drop input.labels": [*_from_release(corpus), f"input.labels={root / 'labels'}"],
        "needs input.images": [f"from_release={root / 'release'}"],
        "must be given": ["format=hmr2"],
        "read only with from_release": [*corpus["direct_args"], f"input.images={root / 'copy'}"],
        "not a labels release": _from_release(corpus, release=root / "direct-hmr2"),
        "not a finished labels release": _from_release(corpus, release=root / "labels"),
    }
    for message, args in refusals.items():
        with pytest.raises(ConfigError, match=message):
            export(tmp_path / "out", *args)
    with pytest.raises(ConfigError, match=r"lies inside input\.images"):
        export(root / "copy" / "out", *_from_release(corpus))
    assert not (tmp_path / "out").exists()

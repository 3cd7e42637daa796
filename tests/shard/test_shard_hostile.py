"""dpmesh-shard on the inputs a new user throws at it: every one ends as a one-line launch error naming the
field and the fix, or as an ``_errors.parquet`` row with a truthful reason (issue 11). In-memory runner."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import ConfigError, ShardJobConfig, compose_config
from pipelines.shard.job import run
from tests.fakes.corpus import coco_document, make_images, write_corpus


def _config(*overrides: str) -> ShardJobConfig:
    return compose_config("dpmesh_shard", ["log_level=WARNING", *overrides], ShardJobConfig)


def _errors(output: Path) -> dict[str, tuple[str, str]]:
    """``{file name: (reason, message)}`` of the run's error rows."""
    rows = pq.read_table(output / "_errors.parquet").to_pylist()
    return {Path(r["source_uri"]).name: (r["reason"], r["error"]) for r in rows}


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")  # 1-bit: a 95 MP image in a few kB
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder with a symlink loop, a dangling link, a FIFO, a link leading outside, a non-UTF-8 name, a dotfile
    that looks like a temp name, and a 95 MP PNG, next to 4 ordinary images."""
    root = tmp_path_factory.mktemp("hostile")
    images = make_images(4, seed=11, width=96, height=64)
    extra = {".storage-tmp-holiday.jpg": images[0].data, "big/huge.png": _png(9500, 10000)}
    write_corpus(str(root / "in"), images, extra=extra, subdir="ok")
    (root / "outside").mkdir()
    (root / "outside" / "elsewhere.jpg").write_bytes(images[1].data)
    os.symlink(root / "in", root / "in" / "loop")  # a folder linking to its own parent
    os.symlink(root / "in" / "missing.jpg", root / "in" / "dangling.jpg")
    os.symlink(root / "outside" / "elsewhere.jpg", root / "in" / "linked_out.jpg")
    os.symlink(root / "in" / "ok" / images[2].file_name, root / "in" / "alias.jpg")  # inside: an ordinary input
    os.mkfifo(root / "in" / "pipe.jpg")
    with open(os.path.join(os.fsencode(root / "in"), b"caf\xe9.jpg"), "wb") as f:  # Latin-1 name, not UTF-8
        f.write(images[3].data)
    return {"root": root, "in": root / "in"}


def test_hostile_folder_entries_become_truthful_error_rows(hostile: dict[str, Path]) -> None:
    output = hostile["root"] / "out"
    manifest = run(_config(f"input.images={hostile['in']}", f"output={output}"))
    counts = manifest["counts"]
    assert counts["reconciled"] is True
    errors = _errors(output)
    assert errors["loop"][0] == "broken_link"
    assert "loops back" in errors["loop"][1]
    assert errors["dangling.jpg"][0] == "broken_link"
    assert errors["pipe.jpg"] == ("not_a_file", "not a regular file but a FIFO")
    assert errors["linked_out.jpg"][0] == "outside_input"
    assert "input.follow_symlinks=true" in errors["linked_out.jpg"][1]
    assert errors["caf\\xe9.jpg"][0] == "invalid_file_name"
    assert counts["errors_by_reason"] == {
        "broken_link": 2,
        "invalid_file_name": 1,
        "not_a_file": 1,
        "outside_input": 1,
    }
    # 4 images + the temp-looking dotfile + the link inside the input + the 95 MP PNG (under the 100 M limit)
    assert counts["images_sharded"] == 7
    assert counts["files_in"] == 12


def test_follow_symlinks_reads_links_leading_outside(hostile: dict[str, Path], tmp_path: Path) -> None:
    manifest = run(_config(f"input.images={hostile['in']}", f"output={tmp_path}/out", "input.follow_symlinks=true"))
    assert manifest["counts"]["images_sharded"] == 8
    assert "outside_input" not in manifest["counts"]["errors_by_reason"]


def test_the_pixel_limit_is_shard_max_image_pixels_not_pillows(hostile: dict[str, Path], tmp_path: Path) -> None:
    images = f"input.images={hostile['in']}/big"
    assert run(_config(images, f"output={tmp_path}/a"))["counts"]["images_sharded"] == 1  # 95 MP < 100 M
    manifest = run(_config(images, f"output={tmp_path}/b", "shard.max_image_pixels=50000000"))
    assert manifest["counts"]["errors_by_reason"] == {"decompression_bomb": 1}
    assert "shard.max_image_pixels=50000000" in _errors(tmp_path / "b")["huge.png"][1]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda doc: doc.update(annotations=5), "'annotations' must be a list, got int"),
        (lambda doc: doc["images"][0].update(file_name=7), "images[0].file_name must be a non-empty string, got int"),
        (lambda doc: doc["images"][1].update(file_name=None), "images[1].file_name must be a non-empty string"),
        (lambda doc: doc["annotations"][0].update(id=[1, 2]), "annotations[0].id must be an integer or a string"),
        (lambda doc: doc["images"][1].update(id=doc["images"][0]["id"]), "images[1].id 1 repeats images[0].id"),
    ],
)
def test_malformed_annotation_files_fail_at_launch_in_one_line(tmp_path: Path, mutate, field: str) -> None:
    images = make_images(2, seed=3, width=96, height=64, persons=(1, 1))
    write_corpus(str(tmp_path / "in"), images)
    doc = coco_document(images)
    mutate(doc)
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    cfg = _config(
        f"input.images={tmp_path / 'in'}", f"input.annotations={tmp_path / 'coco.json'}", f"output={tmp_path}/o"
    )
    with pytest.raises(ConfigError) as caught:
        run(cfg)
    message = str(caught.value)
    assert field in message
    assert "\n" not in message
    assert "input.annotations=" in message
    assert not (tmp_path / "o").exists(), "nothing may be written before the launch checks pass"


def test_out_of_range_boxes_and_dangling_image_ids_are_reported(tmp_path: Path) -> None:
    images = make_images(2, seed=4, width=96, height=64, persons=(2, 2))
    write_corpus(str(tmp_path / "in"), images)
    doc = coco_document(images)
    doc["annotations"][0]["bbox"] = [1.0, 1.0, 1e300, 5.0]
    doc["annotations"].append({**doc["annotations"][1], "id": 999, "image_id": 4242})
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    output = tmp_path / "o"
    manifest = run(
        _config(f"input.images={tmp_path / 'in'}", f"input.annotations={tmp_path / 'coco.json'}", f"output={output}")
    )
    assert manifest["counts"]["annotation_problems"] == 1
    assert manifest["counts"]["persons"] == 3
    (row,) = pq.read_table(output / "_errors.parquet").to_pylist()
    assert row["reason"] == "invalid_annotation"
    assert "out of range" in row["error"]
    assert manifest["annotation_file"]["annotations_without_image"] == 1
    assert manifest["annotation_file"]["image_ids_without_image"] == ["4242"]


def test_bad_outputs_fail_at_launch(tmp_path: Path) -> None:
    write_corpus(str(tmp_path / "in"), make_images(1, seed=1, width=64, height=48))
    with pytest.raises(ConfigError, match="output must name a folder"):
        _config(f"input.images={tmp_path / 'in'}", "output=")
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ConfigError, match="is an existing file: give a folder"):
        run(_config(f"input.images={tmp_path / 'in'}", f"output={tmp_path / 'a_file'}"))


def test_unknown_keys_fail_also_when_added_with_plus(tmp_path: Path) -> None:
    write_corpus(str(tmp_path / "in"), make_images(1, seed=1, width=64, height=48))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.shard.job",
            f"input.images={tmp_path / 'in'}",
            f"output={tmp_path}/o",
            "+foo=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "dpmesh-shard: configuration error: unknown key foo" in result.stderr
    assert not (tmp_path / "o").exists()

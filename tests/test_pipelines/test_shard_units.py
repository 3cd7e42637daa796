"""Unit tests of the sharding building blocks: keys, image probing, COCO parsing, shard cutting, tar format."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipelines.coco_annotations import join_name, parse_coco
from pipelines.config import ShardConfig
from pipelines.image_probe import ImageRejectedError, probe_image
from pipelines.keys import make_key, shard_name, stable_bucket, validate_key
from pipelines.shard_format import ShardSample, ShardTarWriter, cut_into_shards, index_rows, shard_id_of_part
from pipelines.transforms.shard_manifest import build_manifest
from pipelines.transforms.sharding import num_buckets
from tests.fakes.corpus import coco_document, make_images


def _image_bytes(
    fmt: str, mode: str = "RGB", size: tuple[int, int] = (64, 48), orientation: int | None = None
) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


# --- keys -------------------------------------------------------------------------------------------


def test_make_key_is_dot_free_readable_and_distinguishes_similar_paths() -> None:
    key = make_key("cats/Tabby.01.jpg")
    assert "." not in key
    assert key.startswith("cats_Tabby_01-")
    assert validate_key(key) == key
    assert make_key("a/b.jpg") != make_key("a_b.jpg")
    assert make_key("cats/Tabby.01.jpg") == key


@pytest.mark.parametrize("relpath", ["x" * 300 + ".jpg", "...jpg", "ü/日本.png", "-.-", "a b/c d.webp"])
def test_make_key_is_always_valid(relpath: str) -> None:
    assert validate_key(make_key(relpath))


@pytest.mark.parametrize("bad", ["a.b", "", "a/b", "x" * 97])
def test_validate_key_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid sample key"):
        validate_key(bad)


def test_stable_bucket_does_not_depend_on_the_process_hash_seed() -> None:
    code = "from pipelines.keys import stable_bucket; print([stable_bucket(f'k{i}', 97) for i in range(20)])"
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout)
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([stable_bucket(f"k{i}", 97) for i in range(20)])
    assert shard_name(42) == "shard-000042"


# --- image probing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mode", "extension"),
    [
        ("JPEG", "RGB", "jpg"),
        ("JPEG", "L", "jpg"),
        ("JPEG", "CMYK", "jpg"),
        ("PNG", "I;16", "png"),
        ("PNG", "RGBA", "png"),
        ("WEBP", "RGB", "webp"),
    ],
)
def test_probe_accepts_image_modes(fmt: str, mode: str, extension: str) -> None:
    info = probe_image(_image_bytes(fmt, mode), max_image_pixels=10**6)
    assert (info.width, info.height, info.extension, info.exif_orientation) == (64, 48, extension, 1)


def test_probe_reports_display_size_for_rotated_exif() -> None:
    info = probe_image(_image_bytes("JPEG", orientation=6), max_image_pixels=10**6)
    assert (info.width, info.height, info.exif_orientation) == (48, 64, 6)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero_bytes"),
        (b"plain text, not an image", "not_an_image"),
        (_image_bytes("JPEG")[:300], "corrupt_image"),
        (_image_bytes("PNG")[:-40], "corrupt_image"),
        (_image_bytes("GIF", mode="P"), "unsupported_format"),
    ],
)
def test_probe_rejects_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejectedError) as info:
        probe_image(data, max_image_pixels=10**6)
    assert info.value.reason == reason


def test_probe_rejects_decompression_bombs_before_decoding() -> None:
    with pytest.raises(ImageRejectedError) as info:
        probe_image(_image_bytes("PNG", size=(200, 200)), max_image_pixels=10_000)
    assert info.value.reason == "decompression_bomb"


# --- COCO annotations --------------------------------------------------------------------------------


def test_parse_coco_lists_every_image_and_drops_crowds_and_other_categories() -> None:
    images = make_images(3, seed=3, width=96, height=64, persons=(1, 2))
    doc = coco_document(images)
    doc["categories"].append({"id": 2, "name": "dog"})
    doc["annotations"].append({**doc["annotations"][0], "id": 900, "category_id": 2})
    doc["annotations"].append({**doc["annotations"][0], "id": 901, "iscrowd": 1})
    parsed = {a.file_name: a for a in parse_coco(json.dumps(doc).encode())}
    assert sorted(parsed) == sorted(i.file_name for i in images)
    for image in images:
        persons = parsed[image.file_name].persons
        assert len(persons) == len(image.persons)
        assert all(len(p["keypoints"]) == 17 and len(p["keypoints"][0]) == 3 for p in persons)


def test_parse_coco_reports_malformed_persons_and_keeps_the_rest() -> None:
    images = make_images(1, seed=4, width=96, height=64, persons=(2, 2))
    doc = coco_document(images)
    doc["annotations"][0]["keypoints"] = doc["annotations"][0]["keypoints"][:30]
    (parsed,) = parse_coco(json.dumps(doc).encode())
    assert len(parsed.persons) == 1
    (problem,) = parsed.problems
    assert problem.reason == "invalid_annotation"
    assert "51" in problem.message


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"annotations": []}'])
def test_parse_coco_rejects_files_that_are_not_coco(content: bytes) -> None:
    with pytest.raises(ValueError, match="annotation file"):
        list(parse_coco(content))


def test_join_name_is_the_base_file_name() -> None:
    assert join_name("a/b/c.jpg") == join_name("c.jpg") == join_name("x\\c.jpg") == "c.jpg"


# --- shard cutting and format ------------------------------------------------------------------------


def _sample(key: str, size: int) -> ShardSample:
    return ShardSample(
        key=key,
        source_uri=f"/src/{key}.jpg",
        sha1="0" * 40,
        format="jpeg",
        extension="jpg",
        width=4,
        height=3,
        exif_orientation=1,
        bytes=size,
        relpath=f"{key}.jpg",
    )


def test_cut_into_shards_respects_both_caps_and_key_order() -> None:
    samples = [_sample(f"k{i:02d}", 10 + i) for i in reversed(range(20))]
    parts = cut_into_shards(samples, max_samples=4, max_bytes=60)
    flat = [s.key for part in parts for s in part]
    assert flat == sorted(flat)
    assert all(len(p) <= 4 and sum(s.bytes for s in p) <= 60 for p in parts)
    huge = cut_into_shards([_sample("big", 1000), _sample("a", 1)], max_samples=10, max_bytes=60)
    assert [[s.key for s in p] for p in huge] == [["a"], ["big"]]


def test_overflow_shard_ids_never_collide_with_buckets() -> None:
    ids = {shard_id_of_part(b, p, 7) for b in range(7) for p in range(3)}
    assert len(ids) == 21
    assert {shard_id_of_part(b, 0, 7) for b in range(7)} == set(range(7))


def test_num_buckets_plans_shards_below_the_caps() -> None:
    cfg = ShardConfig(max_samples=100, max_bytes=1000, fill_target=0.5)
    assert num_buckets((0, 0), cfg) == 1
    assert num_buckets((100, 10), cfg) == 2
    assert num_buckets((10, 5000), cfg) == 10


def test_tar_is_reproducible_and_offsets_point_at_the_image_data() -> None:
    payloads = {f"k{i}": os.urandom(700 + 13 * i) for i in range(5)}

    def write() -> tuple[bytes, list[dict]]:
        buffer = io.BytesIO()
        writer = ShardTarWriter(buffer)
        for key, data in payloads.items():
            writer.add(_sample(key, len(data)), data)
        writer.close()
        return buffer.getvalue(), index_rows(writer.members, 3)

    first, rows = write()
    second, _ = write()
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        names = tar.getnames()
        assert names[:2] == ["k0.jpg", "k0.json"]
        assert json.loads(tar.extractfile("k0.json").read())["key"] == "k0"
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o444 for m in tar.getmembers())
    for row in rows:
        data = payloads[row["key"]]
        assert first[row["tar_offset"] : row["tar_offset"] + len(data)] == data
        assert row["shard"] == "shard-000003"


def test_manifest_reconciles_counts() -> None:
    summaries = [
        {"shard": "shard-000001", "samples": 3, "image_bytes": 30, "persons": 4, "annotated": 2},
        {"shard": "shard-000000", "samples": 2, "image_bytes": 20, "persons": 0, "annotated": 0},
    ]
    errors = [{"stage": "shard.decode", "reason": "corrupt_image"}, {"stage": "shard.annotations", "reason": "x"}]
    manifest = build_manifest(
        summaries=summaries,
        errors=errors,
        duplicate_groups=[],
        join_report=[],
        files_listed=6,
        buckets=2,
        run_info={"config_hash": "h"},
    )
    counts = manifest["counts"]
    assert counts["reconciled"] is True
    assert (counts["images_sharded"], counts["files_errored"], counts["annotation_problems"]) == (5, 1, 1)
    assert [s["shard"] for s in manifest["shards"]] == ["shard-000000", "shard-000001"]
    short = build_manifest(
        summaries=summaries, errors=errors, duplicate_groups=[], join_report=[], files_listed=7, buckets=2, run_info={}
    )
    assert short["counts"]["reconciled"] is False


def test_header_validation_trusts_pixel_data_but_still_checks_headers() -> None:
    full = _image_bytes("JPEG")
    truncated = full[: len(full) // 2]
    assert probe_image(truncated, max_image_pixels=10**6, decode=False).width == 64
    with pytest.raises(ImageRejectedError, match="cannot decode pixels"):
        probe_image(truncated, max_image_pixels=10**6)
    with pytest.raises(ImageRejectedError, match="not a recognised"):
        probe_image(b"text", max_image_pixels=10**6, decode=False)


def test_error_rows_are_deterministic() -> None:
    from pipelines.error_rows import error_row

    row = error_row("label.decode", "corrupt_image", "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c>")
    assert row["error"] == "cannot identify image file <_io.BytesIO object>"

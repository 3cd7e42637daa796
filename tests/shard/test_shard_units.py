"""Unit tests of the sharding building blocks: keys, image probing, COCO parsing, shard cutting, tar format."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipelines.config import ShardConfig
from pipelines.shard.coco import join_name, parse_coco
from pipelines.shard.finish import build_manifest
from pipelines.shard.keys import make_key, shard_name, stable_bucket, validate_key
from pipelines.shard.listing import SourceFile
from pipelines.shard.plan import PlannedFile, num_buckets, plan_bucket
from pipelines.shard.probe import ImageRejectedError, probe_image
from pipelines.shard.tar_format import ShardSample, ShardTarWriter, index_rows
from pipelines.shard.write import ShardDone
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
    code = "from pipelines.shard.keys import stable_bucket; print([stable_bucket(f'k{i}', 97) for i in range(20)])"
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


def _planned(key: str, size: int) -> PlannedFile:
    return PlannedFile(key=key, source=SourceFile(uri=f"/src/{key}.jpg", relpath=f"{key}.jpg", size=size))


def test_plan_cuts_a_bucket_by_listed_sizes_within_both_caps_in_key_order() -> None:
    cfg = ShardConfig(max_samples=4, max_bytes=60)
    shards = plan_bucket(2, 7, [_planned(f"k{i:02d}", 10 + i) for i in reversed(range(20))], cfg)
    flat = [f.key for s in shards for f in s.files]
    assert flat == sorted(flat)
    assert all(len(s.files) <= 4 and sum(f.planned_bytes for f in s.files) <= 60 for s in shards)
    assert [s.shard_id for s in shards] == [2 + 7 * k for k in range(len(shards))]  # overflow ids never collide
    huge = plan_bucket(0, 1, [_planned("big", 1000), _planned("a", 1)], ShardConfig(max_samples=10, max_bytes=60))
    assert [[f.key for f in s.files] for s in huge] == [["a"], ["big"]]


def test_plan_identity_changes_with_the_files_it_covers() -> None:
    cfg = ShardConfig(max_samples=10)
    files = [_planned("a", 5), _planned("b", 6)]
    (first,) = plan_bucket(0, 3, files, cfg)
    assert plan_bucket(0, 3, list(reversed(files)), cfg)[0].identity == first.identity
    assert plan_bucket(0, 3, [_planned("a", 5), _planned("b", 7)], cfg)[0].identity != first.identity
    assert plan_bucket(0, 4, files, cfg)[0].identity != first.identity


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
        sha1 = writer.close()
        assert hashlib.sha1(buffer.getvalue()).hexdigest() == sha1
        assert writer.size == len(buffer.getvalue())
        return buffer.getvalue(), index_rows(writer.members, "shard-000003")

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


def _done(shard: str, files: int, samples: int, errors: dict[str, int], annotation_problems: int = 0) -> ShardDone:
    summary = {"shard": shard, "samples": samples, "image_bytes": 10 * samples, "persons": samples, "annotated": 1}
    file_errors = sum(errors.values())
    return ShardDone(shard, files, samples, file_errors + annotation_problems, file_errors, summary, errors, False)


def test_manifest_reconciles_counts() -> None:
    shards = [
        _done("shard-000001", 4, 3, {"corrupt_image": 1}, annotation_problems=1),
        _done("shard-000000", 2, 2, {}),
    ]
    duplicates = {"groups": 0, "files": 0, "listed": []}
    manifest = build_manifest(
        shards=shards, duplicates=duplicates, join_report=[], files_listed=6, buckets=2, run_info={"config_hash": "h"}
    )
    counts = manifest["counts"]
    assert counts["reconciled"] is True
    assert (counts["images_sharded"], counts["files_errored"], counts["annotation_problems"]) == (5, 1, 1)
    assert counts["errors_by_reason"] == {"corrupt_image": 1}
    assert [s["shard"] for s in manifest["shards"]] == ["shard-000000", "shard-000001"]
    short = build_manifest(
        shards=shards, duplicates=duplicates, join_report=[], files_listed=7, buckets=2, run_info={}
    )
    assert short["counts"]["reconciled"] is False


def test_header_validation_catches_truncation_and_non_images_without_decoding() -> None:
    full = {fmt: _image_bytes(fmt) for fmt in ("JPEG", "PNG", "WEBP")}
    for fmt, data in full.items():
        assert probe_image(data, max_image_pixels=10**6, decode=False).width == 64
        with pytest.raises(ImageRejectedError, match=r"truncated|cannot read image header") as caught:
            probe_image(data[: len(data) // 2], max_image_pixels=10**6, decode=False)
        assert caught.value.reason == "corrupt_image", fmt
    with pytest.raises(ImageRejectedError, match="not a recognised"):
        probe_image(b"text", max_image_pixels=10**6, decode=False)


def test_header_validation_leaves_corrupt_pixels_of_a_complete_file_to_decode_mode() -> None:
    data = bytearray(_image_bytes("JPEG", size=(256, 256)))
    sos = data.find(b"\xff\xda")
    data[sos + 40 : sos + 400] = b"\xff\x00" * 180  # garbage entropy data, still stuffed, still ends with EOI
    assert probe_image(bytes(data), max_image_pixels=10**6, decode=False).width == 256


def test_pillows_own_pixel_limit_does_not_preempt_ours() -> None:
    """A 95 MP PNG (under shard.max_image_pixels = 100 M, over Pillow's 89 M) is an image; at 10 M it is a bomb."""
    buffer = io.BytesIO()
    Image.new("1", (9500, 10000)).save(buffer, "PNG")
    data = buffer.getvalue()
    assert probe_image(data, max_image_pixels=100_000_000, decode=False).width == 9500
    with pytest.raises(ImageRejectedError) as caught:
        probe_image(data, max_image_pixels=10_000_000, decode=False)
    assert caught.value.reason == "decompression_bomb"
    huge = io.BytesIO()
    Image.new("1", (20000, 10000)).save(huge, "PNG")  # 200 MP: Pillow alone would raise its own error
    with pytest.raises(ImageRejectedError) as caught:
        probe_image(huge.getvalue(), max_image_pixels=100_000_000, decode=False)
    assert caught.value.reason == "decompression_bomb"


def test_label_decoding_follows_the_same_pixel_limit() -> None:
    from pipelines.common.image_decode import ImageDecodeError, decode_rgb

    buffer = io.BytesIO()
    Image.new("1", (20000, 10000)).save(buffer, "PNG")
    with pytest.raises(ImageDecodeError) as caught:
        decode_rgb(buffer.getvalue(), max_image_pixels=100_000_000)
    assert caught.value.reason == "decompression_bomb"


def test_error_rows_are_deterministic() -> None:
    from pipelines.error_rows import error_row

    row = error_row("label.decode", "corrupt_image", "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c>")
    assert row["error"] == "cannot identify image file <_io.BytesIO object>"


def test_ustar_headers_are_byte_identical_to_tarfiles() -> None:
    from pipelines.shard.tar_format import ustar_header

    for name, size in (("abc-1.jpg", 5), ("x" * 96 + ".jpg", 123_456_789), ("k.json", 0), ("é-1.jpg", 7)):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o444, 0, 0, "", ""
        assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        ustar_header("x" * 96 + ".webp", 1)


@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8])
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_header_fast_path_agrees_with_pillow(orientation: int | None, mode: str, progressive: bool) -> None:
    """Header mode reads JPEG headers itself; Pillow's reading of the same file is the reference."""
    from pipelines.shard.probe import _check

    pixels = np.random.default_rng(1).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    kwargs: dict = {"progressive": progressive}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", **kwargs)
    data = buffer.getvalue()
    for variant in (data, data + b"trailing bytes", data[: len(data) // 2], data[:120]):
        try:
            with Image.open(io.BytesIO(variant)) as image:
                expected: object = _check(image, variant, 10**6, False)
        except ImageRejectedError as exc:
            expected = exc.reason
        except Exception:  # Pillow cannot read the header: corrupt_image
            expected = "corrupt_image"
        try:
            got: object = probe_image(variant, max_image_pixels=10**6, decode=False)
        except ImageRejectedError as exc:
            got = exc.reason
        assert got == expected, len(variant)

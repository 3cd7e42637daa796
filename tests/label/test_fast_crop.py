"""input.crop_mode=fast against the official crop on awkward images, and decode at reduced size."""

import io

import numpy as np
import pytest
from PIL import Image

from dpmesh_core.config import official_config
from pipelines.common.image_decode import DecodedImage, ImageDecodeError, decode_rgb, open_image
from pipelines.config.label import CropMode
from pipelines.label.persons import PersonTask, PlannedImage, decode_for_crops, person_from_json, prepare_tasks


GEOMETRY = official_config().crop_geometry
MIN_PSNR_DB = 35.0


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth texture plus mild noise: the kind of content JPEG DCT scaling is made for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 120 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    image = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1) + rng.normal(0, 2, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, orientation: int | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _person(cx: float, top: float, side: float) -> dict[str, object]:
    layout = [(0, 0.05), (-0.03, 0.03), (0.03, 0.03), (-0.06, 0.05), (0.06, 0.05), (-0.15, 0.18), (0.15, 0.18),
              (-0.2, 0.35), (0.2, 0.35), (-0.22, 0.5), (0.22, 0.5), (-0.1, 0.52), (0.1, 0.52), (-0.1, 0.75),
              (0.1, 0.75), (-0.1, 0.98), (0.1, 0.98)]  # fmt: skip
    return {"keypoints": [[cx + dx * side, top + dy * side, 2] for dx, dy in layout]}


def _crops(data: bytes, persons: list[dict[str, object]], mode: CropMode) -> tuple[int, list[np.ndarray]]:
    decoded = decode_for_crops(open_image(data, max_image_pixels=10**8), persons, GEOMETRY, mode)
    indexed = [(i, person_from_json(p)) for i, p in enumerate(persons)]
    tasks = prepare_tasks(decoded, indexed, shard="s", image_key="k", source_uri="", source="annotations",
                          geometry=GEOMETRY, crop_mode=mode)  # fmt: skip
    return decoded.reduction, [t.inputs.image for _, t in tasks if isinstance(t, PersonTask)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean(((a - b) * 255.0) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


CASES = {
    "rgb_large_box": (_encode(_photo(1600, 1200)), [_person(800, 50, 1100)], 4),
    "huge_box_partly_outside": (_encode(_photo(1600, 1200)), [_person(1500, 300, 1150)], 4),
    "tiny_box": (_encode(_photo(640, 480)), [_person(300, 200, 60)], 1),
    "grayscale": (_encode(_photo(1024, 768), mode="L"), [_person(500, 100, 600)], 2),
    "cmyk": (_encode(_photo(1024, 768), mode="CMYK"), [_person(500, 100, 600)], 2),
    "exif_rotated": (_encode(_photo(1200, 800), orientation=6), [_person(400, 100, 1100)], 4),
    "png_alpha": (_encode(_photo(800, 600), fmt="PNG", mode="RGBA"), [_person(400, 50, 540)], 1),
    "two_persons_smallest_decides": (
        _encode(_photo(1600, 1200)),
        [_person(400, 50, 1100), _person(1200, 100, 300)],
        1,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_crops_match_the_official_crops(case: str) -> None:
    data, persons, reduction = CASES[case]
    used, fast = _crops(data, persons, CropMode.fast)
    _, reference = _crops(data, persons, CropMode.reference)
    assert used == reduction
    assert len(fast) == len(reference) == len(persons)
    for a, b in zip(fast, reference, strict=True):
        assert a.shape == b.shape == (3, 256, 256)
        assert _psnr(a, b) >= MIN_PSNR_DB


def test_reference_mode_decodes_what_decode_rgb_decodes() -> None:
    data = _encode(_photo(640, 480), orientation=3)
    decoded = decode_for_crops(open_image(data, max_image_pixels=10**8), [], GEOMETRY, CropMode.reference)
    assert decoded.reduction == 1
    np.testing.assert_array_equal(decoded.pixels, decode_rgb(data, max_image_pixels=10**8))


def test_a_reduced_decode_is_a_fraction_of_the_displayed_size() -> None:
    opened = open_image(_encode(_photo(1200, 800), orientation=6), max_image_pixels=10**8)
    assert opened.full_hw == (1200, 800)  # rotated: displayed height is the stored width
    decoded = opened.decode(4)
    assert (decoded.reduction, decoded.pixels.shape) == (4, (300, 200, 3))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_the_fast_decoder_gives_pillows_pixels_for_every_orientation(orientation: int, reduction: int) -> None:
    """OpenCV's decode (RGB out, EXIF orientation applied here) is Pillow's decode to the bit, at every scale."""
    data = _encode(_photo(96, 64, seed=orientation), orientation=orientation)
    fast = open_image(data, max_image_pixels=10**8).decode(reduction, fast=True)
    pillow = open_image(data, max_image_pixels=10**8).decode(reduction)
    assert fast.full_hw == pillow.full_hw
    assert fast.reduction == pillow.reduction == reduction
    assert fast.pixels.flags.c_contiguous
    np.testing.assert_array_equal(fast.pixels, pillow.pixels)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
@pytest.mark.parametrize("reduction", [1, 4])
def test_the_fast_decoder_gives_pillows_pixels_for_grey_and_cmyk(mode: str, reduction: int) -> None:
    """Grey JPEGs are OpenCV's (same pixels); CMYK ones stay with Pillow, whose conversion OpenCV does not share."""
    data = _encode(_photo(128, 96), mode=mode)
    fast = open_image(data, max_image_pixels=10**8).decode(reduction, fast=True)
    np.testing.assert_array_equal(fast.pixels, open_image(data, max_image_pixels=10**8).decode(reduction).pixels)
    assert fast.pixels.shape == (96 // reduction, 128 // reduction, 3)


@pytest.mark.parametrize("cut", ["truncated", "corrupt"])
def test_the_fast_decoder_refuses_broken_jpegs_as_pillow_does(cut: str) -> None:
    good = _encode(_photo(320, 240))
    data = good[: len(good) // 2] if cut == "truncated" else good[:200] + b"\xff\xd9"
    with pytest.raises(ImageDecodeError) as caught:
        decode_for_crops(open_image(data, max_image_pixels=10**8), [_person(160, 20, 200)], GEOMETRY, CropMode.fast)
    assert caught.value.reason == "corrupt_image"


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_fast_crops_of_rotated_images_match_the_official_crops(orientation: int) -> None:
    data = _encode(_photo(1600, 1200), orientation=orientation)
    persons = [_person(500, 80, 1100), _person(1100, 700, 1000)]  # the second partly outside the image
    used, fast = _crops(data, persons, CropMode.fast)
    _, reference = _crops(data, persons, CropMode.reference)
    assert used > 1  # a reduced decode, rotated after it
    for a, b in zip(fast, reference, strict=True):
        assert _psnr(a, b) >= MIN_PSNR_DB


def test_reused_plans_give_the_crops_of_fresh_plans() -> None:
    """``decode_for_crops`` hands its plans to ``prepare_tasks``: the same model inputs as planning again."""
    data = _encode(_photo(1600, 1200))
    persons = [_person(800, 50, 1100), _person(300, 400, 700), {"keypoints": [[0, 0, 0]] * 17}]
    decoded = decode_for_crops(open_image(data, max_image_pixels=10**8), persons, GEOMETRY, CropMode.fast)
    assert isinstance(decoded, PlannedImage)
    assert len(decoded.plans) == 3 - 1  # no valid keypoint: no plan
    bare = DecodedImage(decoded.pixels, decoded.reduction, decoded.full_hw)
    indexed = [(i, person_from_json(p)) for i, p in enumerate(persons)]
    runs = [
        list(
            prepare_tasks(
                image,
                indexed,
                shard="s",
                image_key="k",
                source_uri="",
                source="annotations",
                geometry=GEOMETRY,
                crop_mode=CropMode.fast,
            )
        )
        for image in (decoded, bare)
    ]
    assert [i for i, _ in runs[0]] == [i for i, _ in runs[1]] == [0, 1, 2]
    for (_, a), (_, b) in zip(*runs, strict=True):
        if isinstance(a, PersonTask):
            assert isinstance(b, PersonTask)
            np.testing.assert_array_equal(a.inputs.image, b.inputs.image)
            np.testing.assert_array_equal(a.inputs.joints, b.inputs.joints)
        else:
            assert type(a) is type(b)
            assert str(a) == str(b)

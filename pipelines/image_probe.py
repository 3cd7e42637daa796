"""Checking that bytes are a decodable image, cheaply, before they go into a shard.

A shard should only hold images the labeling job can decode, so every file is decoded once here.
JPEGs are decoded through libjpeg's DCT scaling (``Image.draft``), which reads the whole entropy
coded stream (truncation and corruption still surface) at a fraction of the cost of a full decode.
"""

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError


# Formats a shard may hold, by PIL format name, with the tar member extension used for each.
SHARDABLE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# EXIF tag 0x0112; values 5-8 are the transposed orientations, which swap width and height.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True)
class ImageInfo:
    """What the index records of one image.

    Attributes:
        format: ``jpeg``, ``png`` or ``webp``.
        extension: Tar member extension (``jpg``, ``png``, ``webp``).
        width: Width in pixels as displayed, i.e. after the EXIF orientation is applied.
        height: Height in pixels as displayed.
        exif_orientation: EXIF orientation tag, 1 (upright) when absent or invalid.
        mode: PIL mode of the stored pixels (``RGB``, ``L``, ``CMYK``, ``I;16``, ...).
    """

    format: str
    extension: str
    width: int
    height: int
    exif_orientation: int
    mode: str


class ImageRejectedError(Exception):
    """The bytes cannot go into a shard; ``reason`` is a short code from :mod:`schemas.errors`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def probe_image(data: bytes, *, max_image_pixels: int, decode: bool = True) -> ImageInfo:
    """Identify ``data`` and (with ``decode``) decode its pixels; return its :class:`ImageInfo`.

    Raises:
        ImageRejectedError: with reason ``zero_bytes``, ``not_an_image``, ``unsupported_format``,
            ``decompression_bomb`` or ``corrupt_image``.
    """
    if not data:
        raise ImageRejectedError("zero_bytes", "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejectedError("not_an_image", "not a recognised image format") from None
    except Exception as exc:  # PIL raises many types for malformed headers
        raise ImageRejectedError("corrupt_image", f"cannot read image header: {exc}") from None
    with image:
        return _check_and_decode(image, max_image_pixels, decode)


def _check_and_decode(image: Image.Image, max_image_pixels: int, decode: bool) -> ImageInfo:
    if image.format not in SHARDABLE_FORMATS:
        raise ImageRejectedError("unsupported_format", f"format {image.format} is not one of jpeg/png/webp")
    stored_width, stored_height = image.size
    if stored_width * stored_height > max_image_pixels:
        raise ImageRejectedError(
            "decompression_bomb",
            f"{stored_width}x{stored_height} exceeds shard.max_image_pixels={max_image_pixels}",
        )
    orientation = _exif_orientation(image)
    mode = image.mode
    if decode:
        _decode_pixels(image, stored_width, stored_height)
    transposed = orientation in _TRANSPOSED_ORIENTATIONS
    width, height = (stored_height, stored_width) if transposed else (stored_width, stored_height)
    return ImageInfo(
        format=str(image.format).lower(),
        extension=SHARDABLE_FORMATS[str(image.format)],
        width=width,
        height=height,
        exif_orientation=orientation,
        mode=mode,
    )


def _decode_pixels(image: Image.Image, width: int, height: int) -> None:
    try:
        if image.format == "JPEG":
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
    except Exception as exc:  # truncated / corrupt pixel data
        raise ImageRejectedError("corrupt_image", f"cannot decode pixels: {exc}") from None


def _exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1

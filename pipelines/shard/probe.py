"""Checking that bytes are an image a shard may hold, cheaply, before they go into a shard.

Two depths (``shard.validate``):

* ``header`` (default): format, size, EXIF orientation, and that the file is complete: a JPEG's first scan
  reaches its end-of-image marker, a PNG has its ``IEND`` chunk, a WebP is as long as its RIFF header says.
  That catches truncated copies and non-images at the cost of a header parse and one byte scan (C speed).
  Pixel corruption inside a complete file is left to labeling, which decodes every image anyway and reports
  it there as ``corrupt_image``.
* ``decode``: additionally decodes the pixels (JPEGs through libjpeg's DCT scaling, ``Image.draft``, which
  still reads the whole entropy-coded stream at a fraction of a full decode's cost), so that only decodable
  images are sharded.

The pixel limit is ours (``shard.max_image_pixels``), checked on the header before any pixel is decoded;
Pillow's own limit is turned off (:func:`pipelines.common.image_decode.use_own_pixel_limit`).
"""

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from pipelines.common.image_decode import use_own_pixel_limit
from schemas import ErrorReason


use_own_pixel_limit()

# Formats a shard may hold, by PIL format name, with the tar member extension used for each.
SHARDABLE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# EXIF tag 0x0112; values 5-8 are the transposed orientations, which swap width and height.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_JPEG_SOS, _JPEG_EOI = b"\xff\xda", b"\xff\xd9"
_PNG_IEND = b"\x00\x00\x00\x00IEND"  # the IEND chunk: zero length, then its type


@dataclass(frozen=True)
class ImageInfo:
    """What the index records of one image.

    Attributes:
        format: ``jpeg``, ``png`` or ``webp``.
        extension: Tar member extension (``jpg``, ``png``, ``webp``).
        width: Width in pixels as displayed, i.e. after the EXIF orientation is applied.
        height: Height in pixels as displayed.
        exif_orientation: EXIF orientation tag, 1 (upright) when absent or invalid.
    """

    format: str
    extension: str
    width: int
    height: int
    exif_orientation: int


class ImageRejectedError(Exception):
    """The bytes cannot go into a shard; ``reason`` is a short code from :mod:`schemas.errors`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def probe_image(data: bytes, *, max_image_pixels: int, decode: bool = True) -> ImageInfo:
    """Identify ``data``, check it is complete and (with ``decode``) decode its pixels; return its :class:`ImageInfo`.

    Raises:
        ImageRejectedError: with reason ``zero_bytes``, ``not_an_image``, ``unsupported_format``,
            ``decompression_bomb`` or ``corrupt_image``.
    """
    if not data:
        raise ImageRejectedError(ErrorReason.ZERO_BYTES.value, "file is empty")
    if not decode and data.startswith(b"\xff\xd8"):
        fast = _jpeg_fast_probe(data, max_image_pixels)
        if fast is not None:
            return fast
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejectedError(ErrorReason.NOT_AN_IMAGE.value, "not a recognised image format") from None
    except Exception as exc:  # PIL raises many types for malformed headers
        raise ImageRejectedError(ErrorReason.CORRUPT_IMAGE.value, f"cannot read image header: {exc}") from None
    with image:
        return _check(image, data, max_image_pixels, decode)


def _check(image: Image.Image, data: bytes, max_image_pixels: int, decode: bool) -> ImageInfo:
    if image.format not in SHARDABLE_FORMATS:
        raise ImageRejectedError(
            ErrorReason.UNSUPPORTED_FORMAT.value, f"format {image.format} is not one of jpeg/png/webp"
        )
    stored_width, stored_height = image.size
    if stored_width * stored_height > max_image_pixels:
        raise ImageRejectedError(
            ErrorReason.DECOMPRESSION_BOMB.value,
            f"{stored_width}x{stored_height} = {stored_width * stored_height} pixels exceeds "
            f"shard.max_image_pixels={max_image_pixels}",
        )
    orientation = _exif_orientation(image)
    problem = _incomplete(str(image.format), data)
    if problem:
        raise ImageRejectedError(ErrorReason.CORRUPT_IMAGE.value, problem)
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
    )


def _incomplete(fmt: str, data: bytes) -> str | None:
    """Why ``data`` is not a whole file of format ``fmt`` (truncated), or None when it is."""
    if fmt == "JPEG":
        sos = _jpeg_scan_start(data)
        # Inside entropy-coded data every 0xFF byte is stuffed (FF 00) or a restart marker (FF D0-D7), so an FF D9
        # after the scan start can only be an end-of-image marker: a truncated copy has none. Searched from the end,
        # where it almost always sits, so the search costs nothing.
        if sos < 0 or data.rfind(_JPEG_EOI, sos) < 0:
            return "truncated: the JPEG scan has no end-of-image marker"
    elif fmt == "PNG":
        if data.find(_PNG_IEND, 8) < 0:
            return "truncated: the PNG has no IEND chunk"
    elif fmt == "WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        if len(data) < declared:
            return f"truncated: the WebP holds {len(data)} of the {declared} bytes its header declares"
    return None


def _jpeg_scan_start(data: bytes) -> int:
    """Offset of the first start-of-scan segment, walking marker segments by their lengths; -1 if none."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if data[pos : pos + 2] == _JPEG_SOS:
            return pos
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return -1


# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are other tables.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_fast_probe(data: bytes, max_image_pixels: int) -> ImageInfo | None:
    """Header mode for a JPEG without Pillow: walk the marker segments for the frame size, the EXIF orientation
    and the scan start, then check the end-of-image marker. None when the file needs Pillow's judgement
    (malformed segments, no frame, no scan): the caller then takes the general path, whose reasons are Pillow's.

    Pillow's ``Image.open`` costs more than everything else header mode does to a 100 kB JPEG together.
    """
    pos, size, orientation = 2, None, 1
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            size = (int.from_bytes(data[pos + 7 : pos + 9], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big"))
        elif marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\0\0" and orientation == 1:
            orientation = _tiff_orientation(data[pos + 10 : pos + 2 + length])
        elif marker == 0xDA:
            break
        pos += 2 + length
    else:
        return None
    if size is None or not size[0] or not size[1]:
        return None
    width, height = size
    if width * height > max_image_pixels:
        raise ImageRejectedError(
            ErrorReason.DECOMPRESSION_BOMB.value,
            f"{width}x{height} = {width * height} pixels exceeds shard.max_image_pixels={max_image_pixels}",
        )
    if data.rfind(_JPEG_EOI, pos) < 0:  # see _incomplete
        raise ImageRejectedError(
            ErrorReason.CORRUPT_IMAGE.value, "truncated: the JPEG scan has no end-of-image marker"
        )
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(format="jpeg", extension="jpg", width=width, height=height, exif_orientation=orientation)


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation tag (0x0112) of the first IFD of an EXIF TIFF block; 1 when absent, invalid or unreadable."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)  # type: ignore[arg-type]
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd : ifd + 2], order)  # type: ignore[arg-type]
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry : entry + 2], order) == _EXIF_ORIENTATION:  # type: ignore[arg-type]
            if int.from_bytes(tiff[entry + 2 : entry + 4], order) != 3:  # type: ignore[arg-type]  # not SHORT
                return 1
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)  # type: ignore[arg-type]
            return value if 1 <= value <= 8 else 1
    return 1


def _decode_pixels(image: Image.Image, width: int, height: int) -> None:
    try:
        if image.format == "JPEG":
            # Grayscale at 1/8 scale: every coefficient of every component is still entropy-decoded (so corrupt
            # data still fails), but the colour conversion and most of the inverse DCT are skipped.
            image.draft("L" if image.mode == "RGB" else image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
    except Exception as exc:  # truncated / corrupt pixel data
        raise ImageRejectedError(ErrorReason.CORRUPT_IMAGE.value, f"cannot decode pixels: {exc}") from None


def _exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1

"""Decoding shard images to the RGB arrays the model's pre-processing expects.

Pixel coordinates everywhere in the pipeline (keypoints, boxes, reprojections) are in the image as
displayed, so the EXIF orientation is applied here, matching the width and height the shard index
records. Every storage mode PIL can produce (grayscale, CMYK, 16-bit, palette, alpha) becomes 8-bit RGB.
"""

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def use_own_pixel_limit() -> None:
    """Turn off Pillow's process-wide pixel limit: the jobs check their own (``max_image_pixels``) on the header.

    Pillow warns above 89 M pixels and raises above twice that, inside ``Image.open``, before any caller can
    look at the size: with it on, a 95 MP image under a configured limit of 100 M would be reported as
    ``corrupt_image`` and a real bomb never as ``decompression_bomb``. Every decode in these jobs compares the
    header's size with the configured limit before decoding a pixel, so the check is kept, only moved.
    """
    Image.MAX_IMAGE_PIXELS = None


use_own_pixel_limit()


class ImageDecodeError(Exception):
    """The bytes cannot be decoded into an image; ``reason`` is a code from :mod:`schemas.errors`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
# OpenCV decode flags: RGB out (no BGR swap to undo), the EXIF orientation left to us (Pillow's reading of it decides
# ``full_hw``, so both decoders apply the same one), DCT scaling by libjpeg's scale_denom (the REDUCED_GRAYSCALE_n
# flags are the bare scale bits; with COLOR_RGB they give reduced RGB).
_CV2_RGB = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
_CV2_REDUCED = {
    1: 0,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# JPEG storage modes whose OpenCV decode is Pillow's to the bit (libjpeg-turbo's YCbCr/RGB/grey conversions); CMYK
# and the rest stay with Pillow, whose conversions OpenCV does not share.
_CV2_MODES = {"RGB", "L"}


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``ImageOps.exif_transpose``'s pixels for EXIF ``orientation`` 2-8 (1 or unknown: unchanged), as views."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:  # transpose
        return pixels.transpose(1, 0, 2)
    if orientation == 6:  # rotate 90° clockwise
        return pixels.transpose(1, 0, 2)[:, ::-1]
    if orientation == 7:  # transverse
        return pixels.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:  # rotate 90° counter-clockwise
        return pixels.transpose(1, 0, 2)[::-1]
    return pixels


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded at 1/``reduction`` of its size (1: full size).

    Attributes:
        pixels: `(h, w, 3)` uint8 RGB, EXIF orientation applied; h = ceil(H / reduction), w likewise.
        reduction: 1, 2, 4 or 8.
        full_hw: (H, W) of the full-size image as displayed (px): the frame every coordinate is in.
    """

    pixels: np.ndarray
    reduction: int
    full_hw: tuple[int, int]


class OpenedImage:
    """An image whose header is read and checked, not yet decoded: its displayed size decides the decode scale.

    Decode at most once (a JPEG's DCT scale is fixed before its pixels are read).
    """

    def __init__(self, image: Image.Image, data: bytes = b"") -> None:
        self._image = image
        self._data = data
        try:
            self._orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
        except Exception:  # a broken EXIF block: ImageOps.exif_transpose ignores it too
            self._orientation = 1
        swap = self._orientation in _SWAPPING_ORIENTATIONS
        self.full_hw = (image.width, image.height) if swap else (image.height, image.width)

    def max_reduction(self) -> int:
        """The largest DCT reduction (8, 4, 2, else 1) this image can be decoded at with exact pixel geometry.

        Only JPEGs scale while decoding. An EXIF-rotated or flipped image must divide evenly: otherwise its partial
        last block of decoded pixels moves to the first row or column and shifts every other one.
        """
        if self._image.format != "JPEG":
            return 1
        width, height = self._image.size
        for d in (8, 4, 2):
            even = width % d == 0 and height % d == 0
            if min(width, height) >= 2 * d and (self._orientation == 1 or even):
                return d
        return 1

    def decode(self, reduction: int = 1, *, fast: bool = False) -> DecodedImage:
        """Decode at 1/``reduction`` (at most :meth:`max_reduction`; 1 gives exactly :func:`decode_rgb`'s pixels).

        With ``fast``, a colour or grey JPEG is decoded by OpenCV's libjpeg-turbo straight to RGB (no Pillow image
        and no copy out of it: 1.2-1.3x faster), the EXIF orientation applied here; anything else, or a JPEG OpenCV
        refuses (truncated, corrupt), goes through Pillow, whose error is the one raised.

        Raises:
            ImageDecodeError: ``corrupt_image`` if the pixels cannot be decoded.
        """
        if fast and self._data and self._image.format == "JPEG" and self._image.mode in _CV2_MODES:
            decoded = self._decode_cv2(reduction)
            if decoded is not None:
                return decoded
        image = self._image
        used = 1
        try:
            if reduction > 1:
                stored_width = image.width
                drafted = image.draft("RGB", (image.width // reduction, image.height // reduction))
                used = round(stored_width / drafted[1][2]) if drafted else 1  # box width = stored width / scale
            image.load()
            if self._orientation != 1:  # exif_transpose copies even an upright image: a full-size copy saved
                image = ImageOps.exif_transpose(image) or image
        except Exception as exc:  # PIL raises many types for broken data
            raise ImageDecodeError("corrupt_image", f"cannot decode image: {type(exc).__name__}: {exc}") from None
        return DecodedImage(_to_rgb8(image), used, self.full_hw)

    def _decode_cv2(self, reduction: int) -> DecodedImage | None:
        """The JPEG at 1/``reduction`` through OpenCV, or None where OpenCV cannot decode it as Pillow would."""
        if reduction not in _CV2_REDUCED:
            return None
        pixels = cv2.imdecode(np.frombuffer(self._data, np.uint8), _CV2_RGB | _CV2_REDUCED[reduction])
        width, height = self._image.size  # stored, before the orientation
        expected = (-(-height // reduction), -(-width // reduction), 3)
        if pixels is None or pixels.shape != expected or pixels.dtype != np.uint8:
            return None
        if self._orientation != 1:
            pixels = np.ascontiguousarray(_orient(pixels, self._orientation))
        return DecodedImage(pixels, reduction, self.full_hw)


def open_image(data: bytes, *, max_image_pixels: int) -> OpenedImage:
    """Read ``data``'s header and check its size; no pixel is decoded.

    Raises:
        ImageDecodeError: ``decompression_bomb`` if the image has more than ``max_image_pixels`` pixels,
            ``corrupt_image`` if it is no image.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_image_pixels:
            raise ImageDecodeError(
                "decompression_bomb", f"{image.width}x{image.height} exceeds max_image_pixels={max_image_pixels}"
            )
        return OpenedImage(image, data)
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL raises many types for broken data
        raise ImageDecodeError("corrupt_image", f"cannot decode image: {type(exc).__name__}: {exc}") from None


def decode_rgb(data: bytes, *, max_image_pixels: int) -> np.ndarray:
    """Decode ``data`` into an `(H, W, 3)` uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageDecodeError: ``decompression_bomb`` if the image has more than ``max_image_pixels`` pixels,
            ``corrupt_image`` if it cannot be decoded.
    """
    return open_image(data, max_image_pixels=max_image_pixels).decode().pixels


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own I;16 -> RGB conversion clips at 255 instead of scaling: keep the 8 high bits.
        wide = np.asarray(image, dtype=np.int64)
        gray = np.clip(wide >> 8 if wide.max() > 255 else wide, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)

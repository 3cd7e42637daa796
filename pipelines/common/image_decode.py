"""Decoding shard images to the RGB arrays the model's pre-processing expects.

Pixel coordinates everywhere in the pipeline (keypoints, boxes, reprojections) are in the image as
displayed, so the EXIF orientation is applied here, matching the width and height the shard index
records. Every storage mode PIL can produce (grayscale, CMYK, 16-bit, palette, alpha) becomes 8-bit RGB.
"""

import io

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


def decode_rgb(data: bytes, *, max_image_pixels: int) -> np.ndarray:
    """Decode ``data`` into an `(H, W, 3)` uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageDecodeError: ``decompression_bomb`` if the image has more than ``max_image_pixels`` pixels,
            ``corrupt_image`` if it cannot be decoded.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_image_pixels:
            raise ImageDecodeError(
                "decompression_bomb", f"{image.width}x{image.height} exceeds max_image_pixels={max_image_pixels}"
            )
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL raises many types for broken data
        raise ImageDecodeError("corrupt_image", f"cannot decode image: {type(exc).__name__}: {exc}") from None
    return _to_rgb8(image)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own I;16 -> RGB conversion clips at 255 instead of scaling: keep the 8 high bits.
        wide = np.asarray(image, dtype=np.int64)
        gray = np.clip(wide >> 8 if wide.max() > 255 else wide, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)

"""A 128-bit perceptual hash of an image, robust to resizing, recompression and small crops.

**The hash** ("colour DCT hash", version 2). The image is decoded small (JPEGs through libjpeg's DCT scaling to
about 64 px, ``Image.draft``), turned upright by its EXIF orientation, converted to YCbCr and resized to 32x32
(area averaging). Each channel gets a 2-D DCT-II (orthonormal, OpenCV's ``cv2.dct``); the hash keeps the signs,
relative to the channel's median, of its lowest-frequency coefficients, the DC term excluded, lowest first
(by the larger of the two frequencies, then their sum):

* bits 0-63: luma (Y), its 64 lowest coefficients (the 8x8 block less DC, and one of frequency 8),
* bits 64-95: blue-difference chroma (Cb), its 32 lowest,
* bits 96-127: red-difference chroma (Cr), its 32 lowest,

each set when the coefficient exceeds the median of its channel's selected coefficients, bit 0 the most significant
bit of the 128-bit integer. A grey image (no chroma coefficient above 1.0) gets the 64 next luma coefficients in
bits 64-127 instead, so that its hash still has 128 informative bits.

**Why this shape.** A crop of a few percent moves and rescales the content: the phase of a DCT coefficient of
frequency ``u`` half-cycles per image moves by about ``pi * u * crop``, so the lowest frequencies are the robust
ones, and the chroma channels' lowest frequencies carry information luma has not. The hash is long because a
sign bit is a coin toss for a coefficient near its median: at 64 bits the distances of copies and of unrelated
images overlap in their tails, at 128 the gap between them is twice as wide in standard deviations. Measured
(``benchmarks/append.py``, README "Growing a corpus"): planted near-duplicates (resized 0.5-0.9x, JPEG quality
60-95, crops up to 5%) lie at a median of 6 bits from their original (95% within 14), while no two of 20,000
unrelated images came within 24 bits; the version-1 hash (64 bits) could not reach 98% recall and 99% precision
at any threshold.

The hash is a pure function of the decoded pixels: the same bytes give the same hash on every machine with the
same Pillow and OpenCV. It is stored as 16 big-endian bytes (:func:`to_bytes`) and written in 32 hex digits
(:func:`to_hex`).
"""

from __future__ import annotations

import io
from functools import cache

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from pipelines.common.image_decode import use_own_pixel_limit


use_own_pixel_limit()

HASH_BITS = 128
HASH_BYTES = HASH_BITS // 8
HASH_NAME = "colour-dct-v2"  # recorded in the manifest: hashes of another version are not comparable
_SIZE = 32  # px: the side every image is resized to before the DCT
_DRAFT = 64  # px: JPEGs are decoded at the smallest DCT scale that keeps at least this many pixels a side
_FLAT_CHROMA = 1.0  # DCT units (pixel values 0-255): below this every chroma coefficient is taken as flat
_LUMA_BITS, _CHROMA_BITS = 64, 32  # per channel; the chroma bits are Cb's then Cr's


class UnhashableImageError(Exception):
    """The image could not be decoded for hashing (corrupt pixels); the caller records no hash."""


@cache
def _zigzag(n: int) -> tuple[tuple[int, int], ...]:
    """DCT coefficients of an ``n`` x ``n`` block less DC, lowest first: by the larger of the two frequencies,
    then by their sum, then by row. The first ``k*k - 1`` are the ``k`` x ``k`` block less DC."""
    cells = [(u, v) for u in range(n) for v in range(n) if (u, v) != (0, 0)]
    return tuple(sorted(cells, key=lambda c: (max(c), c[0] + c[1], c[0])))


def _signs(coefficients: np.ndarray, cells: tuple[tuple[int, int], ...]) -> np.ndarray:
    rows, cols = zip(*cells, strict=True)
    values = coefficients[list(rows), list(cols)]
    return values > np.median(values)


def hash_pixels(ycbcr: np.ndarray) -> int:
    """The hash of an upright ``(H, W, 3)`` YCbCr image (any size, uint8 or float)."""
    small = cv2.resize(np.asarray(ycbcr, dtype=np.float32), (_SIZE, _SIZE), interpolation=cv2.INTER_AREA)
    luma, cb, cr = (cv2.dct(np.ascontiguousarray(small[:, :, c])) for c in range(3))
    order = _zigzag(12)
    bits = [_signs(luma, order[:_LUMA_BITS])]
    chroma_cells = order[:_CHROMA_BITS]
    if max(np.abs(c[tuple(zip(*chroma_cells, strict=True))]).max() for c in (cb, cr)) < _FLAT_CHROMA:
        bits.append(_signs(luma, order[_LUMA_BITS:HASH_BITS]))
    else:
        bits += [_signs(cb, chroma_cells), _signs(cr, chroma_cells)]
    return int.from_bytes(np.packbits(np.concatenate(bits)).tobytes(), "big")


def perceptual_hash(data: bytes) -> int:
    """The hash of encoded image bytes (JPEG, PNG, WebP; any mode Pillow reads).

    The caller has checked the header (size within ``shard.max_image_pixels``) before: this decodes pixels.

    Raises:
        UnhashableImageError: the pixels cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and image.mode in ("RGB", "YCbCr", "L"):
                image.draft("YCbCr" if image.mode != "L" else "L", (_DRAFT, _DRAFT))
            upright = ImageOps.exif_transpose(image)
            if upright.mode not in ("RGB", "L", "YCbCr"):  # palette, alpha, CMYK, 16-bit: as 8-bit RGB (alpha dropped)
                upright = upright.convert("RGB")
            pixels = np.asarray(upright.convert("YCbCr"))
    except Exception as exc:  # Pillow raises many types for corrupt pixel data
        raise UnhashableImageError(f"cannot decode pixels for the perceptual hash: {exc}") from None
    return hash_pixels(pixels)


def hamming(a: int, b: int) -> int:
    """Bits in which two hashes differ."""
    return (a ^ b).bit_count()


def to_hex(value: int) -> str:
    """The 32-digit hex spelling of a hash (how hash lists and messages write it)."""
    return f"{value:032x}"


def to_bytes(value: int) -> bytes:
    """The 16 big-endian bytes of a hash, as the shard index stores it (``phash``, ``binary(16)``)."""
    return value.to_bytes(HASH_BYTES, "big")


def stored_words(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``phash`` column as the shard index stores it, as arrays: ``(high, low, hashed)``, the hashes' most and least
    significant 64 bits (uint64; 0 where null) and whether each sample has a hash (bool), without a Python object
    per hash."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    hashed = array.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    data = array.buffers()[1]
    if data is None or n == 0:
        return np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, bool)
    words = np.frombuffer(data, dtype=">u8", count=2 * n, offset=array.offset * HASH_BYTES).reshape(n, 2)
    words = np.where(hashed[:, None], words, 0).astype(np.uint64)
    return words[:, 0].copy(), words[:, 1].copy(), hashed


def from_stored(value: bytes | None) -> int | None:
    """A hash as the shard index stores it (16 bytes, or null) back to an integer."""
    return None if value is None else int.from_bytes(value, "big")

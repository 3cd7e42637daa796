"""Varied synthetic photos and planted near-duplicates of them, for the near-duplicate tests and benchmark.

``tests.fakes.corpus`` scenes share one layout (a horizontal gradient and stick figures), which no perceptual hash
can tell apart at scale. These scenes vary the way photos do at low frequencies: a sum of random colour waves,
a few filled shapes, sensor noise. A planted near-duplicate is a crop of at most 5% of each side's total, resized
to 0.5-0.9x and re-encoded as JPEG at quality 60-95. Everything is seeded.
"""

import io

import numpy as np
from PIL import Image, ImageDraw


def varied_scene(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """One scene: four random colour waves, two to five filled rectangles or ellipses, noise."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    field = np.zeros((height, width, 3))
    for _ in range(4):
        fx, fy = rng.uniform(0.5, 3.0, 2)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)[..., None] * rng.uniform(20, 60, 3)
    field += rng.integers(60, 190, 3)
    image = Image.fromarray(np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0, side = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.1, 0.4) * width
        box = [x0, y0, x0 + side, y0 + side * rng.uniform(0.5, 1.5)]
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=fill)
    return image


def varied_jpegs(n: int, *, seed: int, width: int = 320, height: int = 240) -> list[bytes]:
    """``n`` scenes as JPEG bytes (quality 90)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        varied_scene(rng, width, height).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def near_duplicate(data: bytes, rng: np.random.Generator, max_crop: float = 0.05) -> bytes:
    """A near-duplicate of encoded image ``data``: cropped (up to ``max_crop`` of each dimension, split at random
    between the two sides), resized to 0.5-0.9x, JPEG quality 60-95."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    crop_x, crop_y = rng.uniform(0, max_crop, 2)
    left, top = rng.uniform(0, crop_x), rng.uniform(0, crop_y)
    box = (round(left * w), round(top * h), w - round((crop_x - left) * w), h - round((crop_y - top) * h))
    image = image.crop(box)
    scale = rng.uniform(0.5, 0.9)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(60, 96)))
    return buffer.getvalue()

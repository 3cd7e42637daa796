"""Synthetic image corpora: people drawn as limbs with known COCO-17 keypoints, plus broken files.

Used by the tests, the sharding benchmark and to regenerate the bundled sample corpus. Everything
is seeded, so a corpus is the same bytes on every run.
"""

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


# A standing person in a unit box (x right, y down), COCO-17 order:
# nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles (left before right).
_TEMPLATE = np.array(
    [
        [0.50, 0.08],
        [0.53, 0.06],
        [0.47, 0.06],
        [0.56, 0.08],
        [0.44, 0.08],
        [0.65, 0.22],
        [0.35, 0.22],
        [0.72, 0.38],
        [0.28, 0.38],
        [0.75, 0.52],
        [0.25, 0.52],
        [0.60, 0.55],
        [0.40, 0.55],
        [0.62, 0.76],
        [0.38, 0.76],
        [0.63, 0.97],
        [0.37, 0.97],
    ]
)
_LIMBS = [(5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (11, 12), (5, 11), (6, 12), (11, 13), (13, 15), (12, 14), (14, 16)]


@dataclass
class SyntheticImage:
    """One generated image and the persons drawn on it (COCO bbox x, y, w, h and 17 x (x, y, v))."""

    file_name: str
    data: bytes
    width: int
    height: int
    persons: list[dict[str, Any]] = field(default_factory=list)


def draw_scene(rng: np.random.Generator, width: int, height: int, n_persons: int) -> tuple[Image.Image, list[dict]]:
    """A textured background with ``n_persons`` stick figures; returns the image and their annotations."""
    base = rng.integers(40, 200, size=3)
    gradient = np.linspace(0, 1, width)[None, :, None] * rng.integers(-40, 40, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(base + gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    persons = []
    for _ in range(n_persons):
        box_h = rng.uniform(0.4, 0.9) * height
        box_w = box_h * 0.45
        x0 = rng.uniform(0, max(1.0, width - box_w))
        y0 = rng.uniform(0, max(1.0, height - box_h))
        points = _TEMPLATE * [box_w, box_h] + [x0, y0] + rng.normal(0, box_h * 0.01, size=_TEMPLATE.shape)
        color = tuple(int(c) for c in rng.integers(0, 255, size=3))
        for a, b in _LIMBS:
            draw.line([tuple(points[a]), tuple(points[b])], fill=color, width=max(2, int(box_h / 40)))
        head_r = box_h * 0.06
        draw.ellipse(
            [points[0][0] - head_r, points[0][1] - head_r, points[0][0] + head_r, points[0][1] + head_r],
            outline=color,
            width=2,
        )
        visible = [(0 <= x < width and 0 <= y < height) for x, y in points]
        keypoints = [
            [round(float(x), 2), round(float(y), 2), 2 if v else 0] for (x, y), v in zip(points, visible, strict=True)
        ]
        persons.append(
            {
                "bbox": [round(float(x0), 2), round(float(y0), 2), round(box_w, 2), round(box_h, 2)],
                "keypoints": keypoints,
            }
        )
    return image, persons


def encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """``image`` encoded as ``fmt`` (JPEG, PNG or WEBP) bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def make_images(
    n: int,
    *,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
    persons: tuple[int, int] = (0, 3),
    formats: tuple[str, ...] = ("JPEG",),
) -> list[SyntheticImage]:
    """``n`` synthetic images named ``img_00000.jpg`` ...; formats cycle through ``formats``."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        fmt = formats[i % len(formats)]
        image, people = draw_scene(rng, width, height, int(rng.integers(persons[0], persons[1] + 1)))
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
        images.append(SyntheticImage(f"img_{i:05d}.{ext}", encode(image, fmt), width, height, people))
    return images


def broken_files(good_jpeg: bytes) -> dict[str, bytes]:
    """Files that must be reported, not sharded: truncated and corrupt JPEGs, an empty file, a non-image."""
    corrupt = bytearray(good_jpeg)
    corrupt[len(corrupt) // 3 : len(corrupt) // 3 + 400] = b"\x00" * 400
    return {
        "broken/truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "broken/corrupt.jpg": bytes(corrupt[:200]) + b"\xff\xd9",
        "broken/empty.jpg": b"",
        "broken/notes.txt": b"this is not an image\n",
    }


def coco_document(images: list[SyntheticImage]) -> dict[str, Any]:
    """A COCO person-keypoints document for ``images`` (every image listed, persons as annotations)."""
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    ann_id = 1
    for image_id, img in enumerate(images, start=1):
        doc["images"].append({"id": image_id, "file_name": img.file_name, "width": img.width, "height": img.height})
        for person in img.persons:
            flat = [v for kp in person["keypoints"] for v in kp]
            doc["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": person["bbox"],
                    "keypoints": flat,
                    "num_keypoints": sum(1 for kp in person["keypoints"] if kp[2] > 0),
                    "area": person["bbox"][2] * person["bbox"][3],
                }
            )
            ann_id += 1
    return doc


def write_corpus(
    root: str, images: list[SyntheticImage], *, extra: dict[str, bytes] | None = None, subdir: str = ""
) -> list[str]:
    """Writes ``images`` (under ``subdir``) and ``extra`` files below ``root``; returns the relative paths."""
    written = []
    files = {os.path.join(subdir, img.file_name): img.data for img in images} | (extra or {})
    for relpath, data in sorted(files.items()):
        path = os.path.join(root, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        written.append(relpath)
    return written


def write_coco(path: str, images: list[SyntheticImage]) -> None:
    """Writes the COCO document of ``images`` to ``path``."""
    with open(path, "w") as f:
        json.dump(coco_document(images), f)


@dataclass(frozen=True)
class Corpus:
    """A corpus on disk: its image folder, its COCO file and what it holds."""

    root: str
    images: str  # the folder dpmesh-shard reads (input.images)
    annotations: str  # the COCO file (input.annotations)
    n_images: int  # distinct good images
    n_annotated: int  # of them listed in the COCO file
    n_broken: int  # files that are reported, not sharded
    n_duplicates: int  # exact copies of an image under another name: sharded, and reported as duplicates

    @property
    def n_files(self) -> int:
        return self.n_images + self.n_broken + self.n_duplicates


def write_annotated(root: str, images: list[SyntheticImage], *, annotated: int | None = None) -> Corpus:
    """``images`` in ``root/images``, the first ``annotated`` (all by default) in ``root/coco.json``."""
    write_corpus(os.path.join(root, "images"), images)
    write_coco(os.path.join(root, "coco.json"), images[:annotated])
    n_annotated = len(images[:annotated])
    return Corpus(root, os.path.join(root, "images"), os.path.join(root, "coco.json"), len(images), n_annotated, 0, 0)


def write_mixed_corpus(root: str) -> Corpus:
    """The tests' one corpus of every input kind dpmesh-shard meets: 24 images (160 x 120 JPEG, PNG and WEBP, 0-3
    people) under ``images/people``, 16 of them annotated, 4 broken files (truncated, corrupt, empty, not an image)
    and an exact duplicate under ``images/copies``."""
    images = make_images(24, seed=7, width=160, height=120, formats=("JPEG", "PNG", "WEBP"))
    broken = broken_files(images[0].data)
    extra = broken | {"copies/again.jpg": images[0].data}
    write_corpus(os.path.join(root, "images"), images, extra=extra, subdir="people")
    write_coco(os.path.join(root, "coco.json"), images[:16])
    return Corpus(root, os.path.join(root, "images"), os.path.join(root, "coco.json"), 24, 16, len(broken), 1)

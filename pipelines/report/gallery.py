"""The gallery: a seeded draw of persons per quality tier, each drawn as its crop with the SMPL mesh over it.

A tile is the square crop the model saw (``crop_bbox_xywh``, padded grey where it leaves the image), with

* the SMPL mesh of the row rendered through the row's camera (translucent blue),
* the input keypoints (``keypoints_2d``, green, with the COCO skeleton; hollow below the keypoint threshold),
* the reprojected joints (``joints_2d_proj``, red crosses),
* an inset (bottom right) with the mesh framed on its own, which shows pose and shape even when the row's camera
  puts the body outside the crop (the tiny model's random weights do).
"""

import dataclasses
import io
import logging
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dpmesh_core.confidence import ConfidenceSignals
from dpmesh_core.joints import COCO17_JOINTS
from pipelines.common.label_set import ROW_FOLDERS
from pipelines.common.label_stats import gallery_problem
from pipelines.common.safe_paths import UnsafeName, check_segment
from pipelines.report import html
from pipelines.report.mesh import Body, pose_vertices, project
from pipelines.report.render import MESH_RGB, MeshRenderer, composite, front_view_window


logger = logging.getLogger(__name__)

INVALID_LOCATION = "the shard or folder of a gallery sample cannot name a label file"

SIGNALS = tuple(f.name for f in dataclasses.fields(ConfidenceSignals))
_SKELETON_NAMES = (
    ("L_Ankle", "L_Knee"), ("L_Knee", "L_Hip"), ("R_Ankle", "R_Knee"), ("R_Knee", "R_Hip"), ("L_Hip", "R_Hip"),
    ("L_Shoulder", "L_Hip"), ("R_Shoulder", "R_Hip"), ("L_Shoulder", "R_Shoulder"), ("L_Shoulder", "L_Elbow"),
    ("R_Shoulder", "R_Elbow"), ("L_Elbow", "L_Wrist"), ("R_Elbow", "R_Wrist"), ("Nose", "L_Eye"), ("Nose", "R_Eye"),
    ("L_Eye", "L_Ear"), ("R_Eye", "R_Ear"),
)  # fmt: skip
SKELETON = tuple((COCO17_JOINTS.index(a), COCO17_JOINTS.index(b)) for a, b in _SKELETON_NAMES)
KEYPOINT_RGB = (60, 220, 90)
REPROJECTED_RGB = (235, 50, 50)
_PAD_RGB = (96, 96, 96)
# Input keypoints below this confidence are drawn hollow (the label job's default ``filter.kp_conf_threshold``
# decides validity; the report only marks weak ones).
_WEAK_KP_CONF = 0.3


@dataclasses.dataclass(frozen=True)
class Pick:
    """A gallery person: where its row lives (``row``: its position in ``<folder>/<shard>.parquet``)."""

    tier: str
    sample_id: str
    shard: str
    folder: str
    row: int


def _one_segment(name: str) -> bool:
    try:
        check_segment(name, "shard name")
    except UnsafeName:
        return False
    return True


def usable_pool(
    pool: dict[str, list[tuple[int, str, str, int, str]]],
) -> tuple[dict[str, list[tuple[int, str, str, int, str]]], dict[str, int]]:
    """The pool's entries that can name files, and the others counted by problem.

    The pool comes from markers, which are data like any other: an entry whose sample id or tier cannot name a
    tile's file, or whose shard or folder cannot name a label file, is never drawn.
    """
    usable: dict[str, list[tuple[int, str, str, int, str]]] = {}
    refused: dict[str, int] = {}
    for tier, entries in pool.items():
        for entry in entries:
            _, shard, folder, _, sample_id = entry
            problem = gallery_problem({"sample_id": sample_id, "quality_tier": tier})
            if problem is None and (folder not in ROW_FOLDERS or not _one_segment(f"{shard}.parquet")):
                problem = INVALID_LOCATION
            if problem is None:
                usable.setdefault(tier, []).append(entry)
            else:
                refused[problem] = refused.get(problem, 0) + 1
    return usable, refused


def draw_picks(
    pool: dict[str, list[tuple[int, str, str, int, str]]], per_tier: int, seed: int
) -> dict[str, list[Pick]]:
    """``per_tier`` persons per tier (all of a smaller tier), drawn with ``seed``; picks sorted by ``sample_id``.

    ``pool`` is the label output's uniform sample of each tier
    (`pipelines.common.label_stats.MergedStats.pool`: ``(priority, shard, folder, row, sample_id)``). The draw is
    over candidates sorted by ``sample_id``, so it does not depend on the order shards were merged in; rows whose
    sample id or tier cannot name a tile's file never enter the pool (the statistics count them).
    """
    rng = np.random.default_rng(seed)
    picks: dict[str, list[Pick]] = {}
    for tier in sorted(pool):
        candidates = sorted((Pick(tier, sid, shard, folder, row) for _, shard, folder, row, sid in pool[tier]),
                            key=lambda p: p.sample_id)  # fmt: skip
        chosen = rng.choice(len(candidates), size=min(per_tier, len(candidates)), replace=False)
        picks[tier] = sorted((candidates[i] for i in chosen), key=lambda p: p.sample_id)
    return picks


def crop_square(image: np.ndarray | None, crop_xywh: np.ndarray, size: int) -> np.ndarray:
    """The window ``crop_xywh`` (full-image px) of ``image`` resized to `(size, size, 3)` uint8; padding grey.

    ``None`` (the image could not be read) gives a grey tile.
    """
    x, y, w, h = (float(v) for v in crop_xywh)
    if image is None or w <= 0 or h <= 0:
        return np.full((size, size, 3), _PAD_RGB, np.uint8)
    pil = Image.fromarray(image)
    # PIL pads outside the image with the fill colour; BILINEAR keeps it cheap.
    tile = pil.transform((size, size), Image.Transform.EXTENT, (x, y, x + w, y + h), Image.Resampling.BILINEAR,
                         fillcolor=_PAD_RGB)  # fmt: skip
    return np.asarray(tile.convert("RGB"), np.uint8)


def _to_tile(points: np.ndarray, crop_xywh: np.ndarray, size: int) -> np.ndarray:
    """`(N, 2)` full-image px -> tile px."""
    x, y, w, h = (float(v) for v in crop_xywh)
    return (np.asarray(points, np.float64) - [x, y]) * [size / w, size / h]


def draw_keypoints(tile: np.ndarray, row: dict[str, Any], size: int) -> np.ndarray:
    """Input keypoints (with skeleton) and reprojected joints over ``tile``."""
    crop = np.asarray(row["crop_bbox_xywh"], np.float64)
    image = Image.fromarray(tile)
    draw = ImageDraw.Draw(image)
    radius = max(2, size // 80)
    keypoints = np.asarray(row["keypoints_2d"], np.float64)
    uv = _to_tile(keypoints[:, :2], crop, size)
    visible = np.isfinite(uv).all(axis=1) & (keypoints[:, 2] > 0)
    for a, b in SKELETON:
        if visible[a] and visible[b]:
            draw.line([tuple(uv[a]), tuple(uv[b])], fill=KEYPOINT_RGB, width=max(1, size // 128))
    for (u, v), ok, conf in zip(uv, visible, keypoints[:, 2], strict=True):
        if ok:
            box = (u - radius, v - radius, u + radius, v + radius)
            draw.ellipse(box, outline=KEYPOINT_RGB, fill=KEYPOINT_RGB if conf >= _WEAK_KP_CONF else None)
    for u, v in _to_tile(np.asarray(row["joints_2d_proj"], np.float64), crop, size):
        if np.isfinite([u, v]).all() and -size < u < 2 * size and -size < v < 2 * size:
            draw.line([(u - radius, v - radius), (u + radius, v + radius)], fill=REPROJECTED_RGB, width=2)
            draw.line([(u - radius, v + radius), (u + radius, v - radius)], fill=REPROJECTED_RGB, width=2)
    return np.asarray(image, np.uint8)


def mesh_in_crop(vertices: np.ndarray, row: dict[str, Any]) -> float:
    """Fraction of the mesh's vertices that project inside the row's crop (0..1)."""
    uv = project(vertices, float(row["focal_length"]), np.asarray(row["principal_point"], np.float64))
    x, y, w, h = (float(v) for v in row["crop_bbox_xywh"])
    inside = (uv[:, 0] >= x) & (uv[:, 0] < x + w) & (uv[:, 1] >= y) & (uv[:, 1] < y + h)
    return float(inside.mean()) if len(uv) else 0.0


@dataclasses.dataclass
class Tile:
    """One gallery entry: the drawn tile and what its caption shows.

    Attributes:
        image: `(size, size, 3)` uint8 RGB.
        mesh_in_crop: Fraction of mesh vertices inside the crop, or ``None`` without a mesh.
        crop_found: False when the image could not be read from its shard (grey tile).
    """

    row: dict[str, Any]
    image: np.ndarray
    mesh_in_crop: float | None
    crop_found: bool


def make_tiles(
    rows: list[dict[str, Any]],
    images: dict[str, np.ndarray],
    body: Body | None,
    renderer: MeshRenderer | None,
    size: int,
) -> list[Tile]:
    """One tile per row; meshes rendered when ``body`` and ``renderer`` are given."""
    vertices = pose_vertices(body, rows) if body is not None and renderer is not None else None
    tiles = []
    for i, row in enumerate(rows):
        image = images.get(row["image_key"])
        crop = np.asarray(row["crop_bbox_xywh"], np.float64)
        tile = crop_square(image, crop, size)
        fraction = None
        if vertices is not None and renderer is not None and body is not None:
            focal, principal = float(row["focal_length"]), np.asarray(row["principal_point"], np.float64)
            rgba = renderer.render(vertices[i], body.faces, focal, principal, crop, size)
            tile = composite(tile, rgba)
            fraction = mesh_in_crop(vertices[i], row)
            tile = _with_inset(tile, renderer, vertices[i], body, focal, size)
        tiles.append(Tile(row, draw_keypoints(tile, row, size), fraction, image is not None))
    return tiles


def _with_inset(
    tile: np.ndarray, renderer: MeshRenderer, vertices: np.ndarray, body: Body, focal: float, size: int
) -> np.ndarray:
    inset = size // 3
    moved, principal, window = front_view_window(vertices, focal)
    rgba = renderer.render(moved, body.faces, focal, principal, window, inset)
    background = np.full((inset, inset, 3), 24, np.uint8)
    out = tile.copy()
    out[size - inset - 2 : size - 2, size - inset - 2 : size - 2] = composite(background, rgba, opacity=1.0)
    return out


def signals_of(row: dict[str, Any], extra: list[str]) -> list[tuple[str, Any]]:
    """The caption's ``(name, value)`` pairs: the confidence signals, then ``extra`` columns (occlusion)."""
    return [(name, row.get(name)) for name in (*SIGNALS, *extra) if name in row]


def png_bytes(image: np.ndarray) -> bytes:
    """`(H, W, 3)` uint8 RGB as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def legend_html() -> str:
    """What the marks on a tile mean, in the colours they are drawn with."""

    def swatch(rgb: tuple[int, ...], what: str) -> str:
        colour = "#" + "".join(f"{c:02x}" for c in rgb)
        return f'<span><i class="swatch" style="background:{colour}"></i>{html.text(what)}</span>'

    mesh = tuple(round(255 * c) for c in MESH_RGB)
    return (
        '<p class="legend">'
        + swatch(mesh, "SMPL mesh (the row's camera)")
        + swatch(KEYPOINT_RGB, f"input keypoints (hollow: confidence below {_WEAK_KP_CONF})")
        + swatch(REPROJECTED_RGB, "reprojected joints")
        + "<span>inset: the mesh framed on its own</span></p>"
    )

"""``dpmesh-report review=<n>``: the review page's persons drawn (`pipelines.report.review_sample`), their rows and
images read (only theirs, by position, as the gallery's), each drawn large as the crop with the mesh and keypoints
over it and as the bare photo, and the page made (`pipelines.report.review_page`).

The cost is fixed by ``n``: at most ``n`` rows and the images they stand on, whatever the size of the output.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from PIL import Image

from pipelines.common.label_stats import REVIEW_POOL, REVIEW_STRATA
from pipelines.common.merged_stats import MergedStats
from pipelines.common.reviews import LabelRun, browser_storage_key, review_header
from pipelines.config import ReportJobConfig
from pipelines.report import gallery, review_page
from pipelines.report.assets import Assets
from pipelines.report.data import read_picked
from pipelines.report.mesh import Body
from pipelines.report.render import MeshRenderer
from pipelines.report.review_sample import draw_review, usable_review_pool
from pipelines.report.sections import OCCLUSION_COLUMNS
from pipelines.storage import Storage


logger = logging.getLogger(__name__)

JPEG_QUALITY = 90
"""Review images are photographs with drawing over them: JPEG at this quality is a tenth of a PNG's size and shows
the mesh's edges and the keypoints as sharply as a reviewer needs."""


def jpeg_bytes(image: np.ndarray) -> bytes:
    """`(H, W, 3)` uint8 RGB as JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def json_value(value: Any) -> Any:
    """A row value as the page's JSON holds it: numbers as numbers (NaN and infinities as null, which JSON lacks),
    text as text, anything else as its text."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        return (int(value) if isinstance(value, int | np.integer) else number) if math.isfinite(number) else None
    return str(value)


def render_review(
    cfg: ReportJobConfig,
    storage: Storage,
    run: LabelRun,
    summary: dict[str, Any] | None,
    stats: MergedStats,
    body_model: Body | None,
    renderer: MeshRenderer | None,
    assets: Assets,
) -> tuple[str, dict[str, Any]]:
    """``review.html`` for ``cfg.review`` persons of the label output (images added to ``assets``), and what it holds
    (persons drawn and shown, by stratum)."""
    pool, refused = usable_review_pool(stats.review_pool)
    picks = draw_review(pool, cfg.review, cfg.report.seed)
    wanted: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for p in picks:
        wanted[(p.folder, p.shard)][p.row] = p.sample_id
    rows, images, missing_shards = read_picked(storage, cfg.input.labels, cfg.input.shards, summary, wanted)
    shown = [p for p in picks if p.sample_id in rows]
    size = cfg.report.review_px
    tiles = gallery.make_tiles([rows[p.sample_id] for p in shown], images, body_model, renderer, size)
    extra = [c for c in OCCLUSION_COLUMNS if c in next(iter(rows.values()), {})]
    persons = []
    for pick, tile in zip(shown, tiles, strict=True):
        row = tile.row
        photo = gallery.crop_square(images.get(row["image_key"]), np.asarray(row["crop_bbox_xywh"], np.float64), size)
        persons.append({
            "sample_id": pick.sample_id,
            "shard": pick.shard,
            "model_id": row.get("model_id"),
            "stratum": pick.stratum,
            "overlay": assets.add(f"{pick.sample_id}.jpg", jpeg_bytes(tile.image), folder=("review", "overlay")),
            "photo": assets.add(f"{pick.sample_id}.jpg", jpeg_bytes(photo), folder=("review", "photo")),
            "tier": row.get("quality_tier"),
            "confidence": json_value(row.get("confidence")),
            "reasons": [str(r) for r in row.get("reasons") or []],
            "signals": [[name, json_value(value)] for name, value in gallery.signals_of(row, extra)],
            "crop_found": tile.crop_found,
            "mesh_in_crop": json_value(tile.mesh_in_crop),
        })  # fmt: skip
    drawn = Counter(p.stratum for p in shown)
    strata = {s: {"rows": stats.strata.get(s, 0), "drawn": drawn.get(s, 0)} for s in REVIEW_STRATA
              if stats.strata.get(s, 0) or drawn.get(s, 0)}  # fmt: skip
    sample = {"seed": cfg.report.seed, "size": len(shown), "strata": strata}
    data = review_page.page_data(browser_storage_key(run), review_header(run, sample), persons)
    notes = []
    if len(shown) < cfg.review:
        notes.append(
            f"{len(shown)} persons of the {cfg.review} asked for: the output's review sample holds no more (at most "
            f"{REVIEW_POOL} per stratum of confidence band and occlusion level)."
            if len(shown) == len(picks)
            else f"{len(picks) - len(shown)} drawn persons are no longer at their place in the Parquet: left out."
        )
    if refused:
        problems = "; ".join(f"{why}: {n}" for why, n in sorted(refused.items()))
        notes.append(f"{sum(refused.values())} entries of the markers' review sample are left out ({problems}).")
    if missing_shards:
        notes.append(f"Images unavailable for {', '.join(missing_shards)} (shard tar not found): grey.")
    about = (
        f"{len(shown)} persons drawn with seed {cfg.report.seed}, stratified by confidence band and occlusion level "
        f"({len(strata)} {'stratum' if len(strata) == 1 else 'strata'})"
    )
    return review_page.render(run, cfg.input.labels, data, about, notes), {
        "persons": len(shown),
        "requested": cfg.review,
        "strata": {s: v["drawn"] for s, v in strata.items() if v["drawn"]},
        "label_run": run.to_json(),
    }

"""The report's gallery section: the drawn persons' rows and crops read (only theirs), tiles drawn, per tier.

The draw is from the label output's uniform sample of each tier (`pipelines.common.label_stats`), so the gallery
reads at most ``per_tier`` rows per tier, each from its shard's file by position, and the images of those rows
from their shard tars: a fixed cost, whatever the size of the output.
"""

import logging
from collections import defaultdict
from typing import Any

from pipelines.common.merged_stats import MergedStats
from pipelines.config import ReportJobConfig
from pipelines.report import gallery, html
from pipelines.report.assets import Assets
from pipelines.report.data import ordered_tiers, read_picked
from pipelines.report.mesh import Body
from pipelines.report.render import MeshRenderer
from pipelines.report.sections import OCCLUSION_COLUMNS
from pipelines.storage import Storage


logger = logging.getLogger(__name__)


def _confidence_text(value: Any) -> str:
    """A row's confidence for a tile's headline (a null or non-numeric value from an edited Parquet shows as –)."""
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def render_gallery(
    cfg: ReportJobConfig,
    storage: Storage,
    summary: dict[str, Any] | None,
    stats: MergedStats,
    body_model: Body | None,
    renderer: MeshRenderer | None,
    assets: Assets,
) -> tuple[str, dict[str, int]]:
    """The gallery's HTML (tiles written to ``assets``) and the persons shown per tier."""
    if not stats.n_rows or cfg.report.per_tier == 0:
        return html.note("No persons to show."), {}
    pool, refused = gallery.usable_pool(stats.pool)
    picks = gallery.draw_picks(pool, cfg.report.per_tier, cfg.report.seed)
    wanted: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for tier_picks in picks.values():
        for p in tier_picks:
            wanted[(p.folder, p.shard)][p.row] = p.sample_id
    rows, images, missing_shards = read_picked(storage, cfg.input.labels, cfg.input.shards, summary, wanted)
    extra = [c for c in OCCLUSION_COLUMNS if c in next(iter(rows.values()), {})]
    body = gallery.legend_html()
    if stats.gallery_left_out:
        problems = "; ".join(f"{why}: {n}" for why, n in sorted(stats.gallery_left_out.items()))
        body += html.note(
            f"{sum(stats.gallery_left_out.values())} rows are left out of the gallery, never used as file names "
            f"({problems}). dpmesh-label writes no such rows: the Parquet was made or edited elsewhere."
        )
    if refused:
        problems = "; ".join(f"{why}: {n}" for why, n in sorted(refused.items()))
        body += html.note(
            f"{sum(refused.values())} entries of the markers' gallery sample are left out, never used as file names "
            f"({problems}). dpmesh-label writes no such markers: they were made or edited elsewhere."
        )
    if missing_shards:
        body += html.note(f"Crops unavailable for {', '.join(missing_shards)} (shard tar not found): grey tiles.")
    shown: dict[str, int] = {}
    for tier in ordered_tiers(picks):
        tier_rows = [rows[p.sample_id] for p in picks[tier] if p.sample_id in rows]
        tiles = gallery.make_tiles(tier_rows, images, body_model, renderer, cfg.report.crop_px)
        entries = []
        for t in tiles:
            src = assets.add(f"{t.row['sample_id']}.png", gallery.png_bytes(t.image), folder=("gallery", tier))
            headline = f"{tier} · confidence {_confidence_text(t.row.get('confidence'))}"
            if t.mesh_in_crop is not None:
                headline += f" · mesh in crop {100 * t.mesh_in_crop:.0f} %"
            entries.append(
                html.tile(
                    src, t.row["sample_id"], headline, t.row.get("reasons") or [], gallery.signals_of(t.row, extra)
                )
            )
        shown[tier] = len(entries)
        total = stats.rows.get(tier, 0)
        body += f"<h3>{html.text(tier)}: {len(entries)} of {total}</h3><div class='tiles'>{''.join(entries)}</div>"
    return body, shown

"""The export's ``stats.json``, dataset card (``README.md``) and marker index, from its per-shard markers and the
label run: the run's last step.

``stats.json`` adds up the ``_done/`` markers of every exported shard (this run's and earlier runs'), so a resumed
export reports the whole dataset. The markers of earlier runs come from the export's marker index,
``_done_index.json.gz`` (:data:`EXPORT_INDEX`: every field planning and the card use, see
:mod:`pipelines.common.marker_index`), and only those it lacks are read one by one; this step then rewrites the index
to cover every marker, before ``stats.json``. The card states where the labels came from (label run, model, config
hashes, thresholds; for a rebuild, the labels release and the images folder; the shard set's benchmark overlap
guard), what was selected, which box the format's ``center`` / ``scale`` come from, the counts by tier and occlusion
level, the splits (``split=``: sizes, groups, the groups grouping kept from straddling splits), what was not exported
and why (persons by reason, the shards refused whole), how a labels release is rebuilt, and the licence terms a user
inherits.
"""

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

import pipelines
from pipelines.common.label_set import LABEL_RUN, SUMMARY_NAME, read_summary
from pipelines.common.marker_index import MarkerIndex, read_markers, write_index
from pipelines.common.reviews import with_applied
from pipelines.config import ExportJobConfig, config_to_dict
from pipelines.export.export_shard import NEAR_DUPS, export_config_hash
from pipelines.export.splits import GROUP_BY, GROUP_KEY, GROUP_NEAR_DUPLICATE, Splitter, merge_split_blocks
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)


STATS_NAME = "stats.json"
CARD_NAME = "README.md"

EXPORT_INDEX = MarkerIndex(
    (
        "shard",
        "format",  # a rebuild's planning reads a labels release's markers through its index
        "config_hash",
        "label",  # the label lineage: planning compares it with the label markers'
        "release",
        NEAR_DUPS,
        "shard_error",
        # What the card adds up (:func:`aggregate`, :func:`~pipelines.export.splits.merge_split_blocks`).
        "counts",
        "reconciled",
        "skipped_by_reason",
        "tiers",
        "occlusion_levels",
        "model_ids",
        "body_models",
        "errors",
        "skipped_images",
        "splits",
        "review",  # with review=: what the shard's decisions did (pipelines.common.reviews.APPLIED_COUNTS)
    )
)
"""What the export's marker index keeps: every marker field planning and the card read (not ``files`` nor
``pipeline_version``), so a card made from the index is the card made from the markers."""

LICENCE_NOTES = (
    "- **Images** keep the licence and terms of their sources (each person's `source_uri` is in the labels and in "
    "the export's per-person metadata); exporting re-encodes them upright and changes none of their terms.",
    "- **SMPL**: the pose and shape parameters are meaningful only with the SMPL body model, whose licence "
    "(Max Planck Institute for Intelligent Systems, https://smpl.is.tue.mpg.de) restricts use, commonly to "
    "non-commercial research; this dataset contains parameters, not the body model.",
    "- **Model weights**: the labels were made by the DPMesh checkpoint named under Provenance (official release: "
    "RammusLeo/DPMesh; it builds on Stable Diffusion 1.5 and ControlNet); check that checkpoint's terms, and those "
    "of the detector / keypoint models if `keypoint_source` is `vitpose`, before training on its outputs.",
)


def aggregate(markers: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over every shard marker: images, persons, tiers, occlusion levels, persons not exported by reason,
    refused shards, error rows, skipped images, model ids."""
    counts: Counter[str] = Counter()
    tiers: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    shard_errors: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    reconciled = True
    occlusion: Counter[str] = Counter()
    occlusion_recorded = bool(markers)
    model_ids: set[str] = set()
    body_models: set[str] = set()
    skipped: list[dict[str, Any]] = []
    for marker in markers:
        counts.update(marker["counts"])
        tiers.update(marker["tiers"])
        by_reason.update(marker.get("skipped_by_reason") or {})
        reconciled = reconciled and marker.get("reconciled", True)
        if marker.get("shard_error"):
            shard_errors.append({"shard": marker["shard"], **marker["shard_error"]})
        errors.extend({"shard": marker["shard"], **e} for e in marker.get("errors", []))
        if marker.get("occlusion_levels") is None:
            occlusion_recorded = False
        else:
            occlusion.update(marker["occlusion_levels"])
        model_ids.update(marker.get("model_ids", []))
        body_models.update(marker.get("body_models", []))
        skipped.extend({"shard": marker["shard"], **s} for s in marker.get("skipped_images", []))
    return {
        "shards": len(markers),
        "counts": dict(sorted(counts.items())),
        "tiers": dict(sorted(tiers.items())),
        # None, not {}: labels without the occlusion columns say nothing about occlusion, which is not "no occlusion".
        "occlusion_levels": dict(sorted(occlusion.items())) if occlusion_recorded else None,
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "reconciled": reconciled,
        "shard_errors": shard_errors,
        "model_ids": sorted(model_ids),
        "body_models": sorted(body_models),
        "errors": errors,
        "skipped_images": skipped,
    }


def reasons_line(stats: dict[str, Any]) -> str:
    """``"invalid_key 2, lineage_mismatch 4"``: persons not exported, by reason ("none" when all were)."""
    return ", ".join(f"{reason} {n}" for reason, n in stats.get("skipped_by_reason", {}).items()) or "none"


def refused_line(stats: dict[str, Any], limit: int = 5) -> str:
    """``"shard-000002 (lineage_mismatch), ..."``: the shards that exported nothing, the first ``limit`` named."""
    refused = stats.get("shard_errors") or []
    named = ", ".join(f"{e['shard']} ({e['reason']})" for e in refused[:limit])
    return named + (f" and {len(refused) - limit} more" if len(refused) > limit else "")


def build_stats(
    markers: list[dict[str, Any]],
    provenance: dict[str, Any],
    splitter: Splitter | None = None,
    review: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``stats.json``: the aggregate of ``markers``, with ``split=`` the splits' (``splitter``), with ``review=``
    the review files and what their decisions did (``review``: `pipelines.common.reviews.review_record`, the
    markers' counts added by `with_applied`), and the run's provenance."""
    stats = {**aggregate(markers), "provenance": provenance}
    if splitter is not None:
        stats["splits"] = merge_split_blocks((m.get("splits") for m in markers), splitter)
    if review is not None:
        applied: Counter[str] = Counter()
        for marker in markers:
            applied.update(marker.get("review") or {})
        stats["review"] = with_applied(review, applied)
    return stats


def _review_lines(stats: dict[str, Any]) -> list[str]:
    """The card's reviews: each file, the agreed decisions and what they did, the conflicts left to the filter."""
    review = stats.get("review")
    if not review:
        return []
    applied = review["applied"]
    lines = ["## Reviews", ""]
    for f in review["files"]:
        lines.append(
            f"- `{f['uri']}` (sha256 `{f['sha256']}`, reviewer {f['reviewer']}, saved {f['saved_at']}; "
            f"{f['matched']}): decisions {f['decisions']}"
        )
    conflicts = review["conflicts"]
    lines += [
        f"- agreed decisions {review['decisions']}: {applied['applied_reject']} reviewed rejects left out (reason "
        f"`reviewed_reject`), {applied['applied_accept']} reviewed accepts kept ({applied['accept_over_filter']} of "
        f"them over the filter), {applied['applied_accept_not_kept']} accepts of non-finite labels not kept, "
        f"{applied['not_found']} persons not found; counts reconcile: {review['reconciled']}",
        f"- conflicting decisions ({conflicts['mode']}): {conflicts['count']} persons, left to the filter and listed "
        "in `stats.json`",
        "- each exported person's decision is in its row's `review` column",
        "",
    ]
    return lines


def _refused_lines(stats: dict[str, Any]) -> list[str]:
    """Card lines naming the shards that exported nothing, and the index rows never used."""
    lines = []
    if stats.get("shard_errors"):
        lines.append(f"- shards refused whole (nothing exported from them): {refused_line(stats, limit=20)}")
    invalid = stats["counts"].get("index_keys_invalid", 0)
    if invalid:
        lines.append(f"- shard index rows with an invalid key, never used: {invalid}")
    return lines


def box_line(export: dict[str, Any]) -> str:
    """The card's statement of which person box the format writes (``export`` is the provenance's ``export``)."""
    fmt = export.get("format")
    scale = float((export.get("options") or {}).get("box_scale", 1.0))
    if fmt in ("hmr2", "camerahmr"):
        size = "width, height" if fmt == "hmr2" else "max(width, height)"
        padding = (
            "the tight box (4D-Humans' and SPIN's preprocessing pad keypoint boxes by 1.2: export with "
            "`export.box_scale=1.2` to match)"
            if scale == 1.0
            else f"padded x{scale:g} about its centre"
        )
        return (
            f"- boxes: `center` is the centre of the person box `bbox_xyxy`, `scale` its {size} x {scale:g} / 200: "
            f"{padding}"
        )
    if fmt == "crops":
        return "- boxes: each crop is the label's square `crop_bbox_xywh` (DPMesh's crop), not the person box"
    return (
        "- boxes: the rows keep `bbox_xyxy` (the tight person box) and `crop_bbox_xywh`; a rebuild's "
        "`export.box_scale` decides the padding of its hmr2 / camerahmr `scale`"
    )


def _release_lines(stats: dict[str, Any]) -> list[str]:
    """The card's section on rebuilding a labels release (empty for other formats)."""
    if stats["provenance"]["export"].get("format") != "labels":
        return []
    return [
        "## Rebuilding",
        "",
        "This release holds labels, not images: per shard, `shard-NNNNNN.labels.parquet` (the annotation rows) and "
        "`shard-NNNNNN.images.parquet` (each image's `path` relative to the corpus root, `source_uri`, `bytes`, "
        "`sha1`). With a copy of the corpus laid out as it was sharded, rebuild any format:",
        "",
        "```bash",
        "dpmesh-export from_release=<this folder> input.images=<the corpus copy> format=hmr2 output=<new folder>",
        "```",
        "",
        "Every image is checked against its size and sha1 before a label is paired with it; a missing or changed "
        "image is counted (`image_missing`, `image_mismatch`), never exported.",
        "",
    ]


def _rebuild_lines(prov: dict[str, Any]) -> list[str]:
    """The card's provenance line of a rebuild: the release and the images folder it read (none otherwise)."""
    if not prov.get("release"):
        return []
    return [
        f"- rebuilt from the labels release `{prov['release']}` with the images of `{prov['images']}` (each checked "
        "against the release's sha1)"
    ]


def _split_lines(stats: dict[str, Any]) -> list[str]:
    """The card's section on the splits (empty without ``split=``)."""
    splits = stats.get("splits")
    if not splits:
        return []
    by = splits["group_sources"]
    group_by = f"`split.group_by` `{splits['group_by']}`" if splits["group_by"] else "no `split.group_by`"
    lines = [
        "## Splits",
        "",
        "Each split is a sub-folder laid out as an export without splits (`<split>/shard-NNNNNN.tar`; for "
        "`camerahmr` `<split>/shard-NNNNNN.npz` and `<split>/images/`). Whole groups go to one split: an image's "
        f"group is its near-duplicate group, else its match of {group_by} in `source_uri`, else the image itself; "
        "a group's split is BLAKE2b of its id against the cumulative fractions, so it does not change as the corpus "
        'grows (project README, "Splits").',
        "",
        "| split | fraction | persons | images | groups |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {splits['fractions'][name]:g} | {n['persons']} | {n['images']} | {n['groups']} |"
            for name, n in splits["splits"].items()
        ),
        "",
        f"- images grouped by near-duplicate group: {by[GROUP_NEAR_DUPLICATE]}, by `split.group_by`: {by[GROUP_BY]}, "
        f"alone: {by[GROUP_KEY]}",
        f"- groups of more than one image or named by a rule: {splits['shared_groups']}; "
        f"**{splits['groups_straddling']}** of them would have straddled splits without grouping (their images, each "
        "split by its own key, would not all have landed in one split)",
        *(
            [
                f"- `split.group_by` groups with an image a near-duplicate group took into another split: "
                f"{splits['group_by_groups_split_by_near_duplicates']} (a near-duplicate group wins over `group_by`)"
            ]
            if splits["group_by"]
            else []
        ),
        "",
    ]
    return lines


def _shard_set_lines(prov: dict[str, Any]) -> list[str]:
    """The card's provenance lines on the shard set's benchmark overlap guard (none when its manifest says nothing
    of it, e.g. for a rebuild)."""
    record = prov.get("shard_set")
    if not record:
        return []
    overlap = record.get("benchmark_overlap", 0)
    if not record.get("exclude"):
        return [f"- benchmark overlap guard: no benchmark list when the shard set was made ({overlap} left out)"]
    lists = "; ".join(", ".join(f"{k} `{v}`" for k, v in sorted(e.items())) for e in record["exclude"])
    return [
        f"- benchmark overlap guard: {overlap} corpus images left out of the shard set as copies of benchmark images "
        f"(reason `benchmark_overlap`, every generation); list: {lists}"
    ]


def _table(title: str, counts: dict[str, int] | None, missing: str) -> list[str]:
    if counts is None:
        return [f"**{title}**: {missing}", ""]
    lines = [f"| {title} | persons |", "|---|---:|"]
    lines += [f"| {name} | {n} |" for name, n in counts.items()] or ["| (none) | 0 |"]
    return [*lines, ""]


def render_card(stats: dict[str, Any]) -> str:
    """The dataset card (Markdown)."""
    prov = stats["provenance"]
    label = prov.get("label_run") or {}
    export = prov["export"]
    counts = stats["counts"]
    model = label.get("model") or {}
    lines = [
        f"# Pseudo-labeled human mesh dataset ({export['format']})",
        "",
        "SMPL pseudo-labels made by DPMesh with `dpmesh-label`, exported for training by `dpmesh-export` "
        f"(pipeline {export['pipeline_version']}). Format, keys and conventions: the project README, "
        '"Exporting for training".',
        "",
    ]
    if model.get("name") == "tiny":
        lines += [
            "> **Not for training**: these labels come from `model=tiny` (the DPMesh architecture at tiny widths "
            "with random weights, used by tests and the demo) and its synthetic body model.",
            "",
        ]
    lines += [
        "## Contents",
        "",
        f"- shards: {stats['shards']}; images: {counts.get('images', 0)}; persons: {counts.get('persons', 0)} "
        f"(of {counts.get('rows_in', 0)} accepted label rows, {counts.get('rows_selected', 0)} selected; "
        f"{counts.get('persons_skipped', 0)} not exported, by reason: {reasons_line(stats)}; each listed in "
        "`stats.json`)",
        *_refused_lines(stats),
        "- `has_body_pose` / `has_betas`: 1 for `gold` and `silver`, 0 for `bronze` (2D keypoints only)",
        box_line(export),
        "",
        *_table("tier", stats["tiers"], ""),
        *_table(
            "occlusion level",
            stats["occlusion_levels"],
            "not recorded (these labels predate the occlusion columns; relabel to get them)",
        ),
        *_split_lines(stats),
        *_review_lines(stats),
        *_release_lines(stats),
        "## Provenance",
        "",
        f"- labels: `{prov['labels']}` (made by `{label.get('created_by', 'unknown')}`, pipeline "
        f"{label.get('pipeline_version', 'unknown')}, config hash `{label.get('config_hash', 'unknown')}`)",
        f"- shards: `{prov['shards']}`",
        *_shard_set_lines(prov),
        *_rebuild_lines(prov),
        f"- model: `{model.get('name', 'unknown')}` "
        f"(checkpoint `{model.get('checkpoint') or model.get('pretrained') or 'random weights'}`); "
        f"model ids (weights hash): {', '.join(f'`{m}`' for m in stats['model_ids']) or 'none'}",
        f"- body model: {', '.join(stats.get('body_models') or []) or prov.get('body_model') or 'not recorded'}",
        f"- filter thresholds: `{label.get('thresholds', 'not recorded')}`",
        f"- export config hash `{export['config_hash']}`; selection: `{export['select']}`",
        "",
        "## Licences",
        "",
        *LICENCE_NOTES,
        "",
    ]
    return "\n".join(lines)


def export_provenance(cfg: ExportJobConfig) -> dict[str, Any]:
    """The provenance's ``export``: what this export is (format, version, config hash, selection, options)."""
    return {
        "format": cfg.format.value,
        "pipeline_version": pipelines.__version__,
        "config_hash": export_config_hash(cfg),
        "select": config_to_dict(cfg.select),
        "options": config_to_dict(cfg.export),
    }


def rebuild_provenance(cfg: ExportJobConfig, release_stats: dict[str, Any]) -> dict[str, Any]:
    """A rebuild's provenance: the release's (where its labels came from, the label run, the pixel limit), then
    the release and the images folder this rebuild read, and this export."""
    return {
        **(release_stats.get("provenance") or {}),
        "release": cfg.from_release,
        "images": cfg.input.images,
        "export": export_provenance(cfg),
    }


def provenance(cfg: ExportJobConfig, storage: Storage, schema: pa.Schema) -> dict[str, Any]:
    """What the card and stats record about where the dataset came from (no secrets: configs hold none)."""
    summary = read_summary(storage, str(cfg.input.labels))
    if summary is None:
        logger.warning("%s has no readable %s: the card lacks the label run's lineage", cfg.input.labels, SUMMARY_NAME)
        summary = {}
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    # A dpmesh-refilter output keeps the labeling run under "label_run"; its own top level is the refilter's.
    label_run = summary.get(LABEL_RUN) or summary
    config = label_run.get("config") or {}
    body_models = label_run.get("body_models") or {}
    return {
        "labels": cfg.input.labels,
        "shards": cfg.input.shards,
        "label_run": {
            "created_by": label_run.get("created_by"),
            "pipeline_version": label_run.get("pipeline_version"),
            "config_hash": label_run.get("config_hash"),
            "model": config.get("model"),
            "model_ids": label_run.get("model_ids"),
            "detector": (config.get("detector") or {}).get("name"),
            "thresholds": summary.get("thresholds"),  # the tiers' filter: the refilter's own after a refilter
            "refiltered_by": summary.get("created_by") if LABEL_RUN in summary else None,
            "max_image_pixels": (config.get("input") or {}).get("max_image_pixels"),
        },
        "body_model": ", ".join(f"{name} (sha256 {digest})" for name, digest in sorted(body_models.items())) or None,
        "labels_schema_version": meta.get("schema_version"),
        "export": export_provenance(cfg),
    }


class WriteCardFn(beam.DoFn):
    """Input: the markers this run wrote (once). Writes ``stats.json`` and ``README.md`` over every exported shard."""

    def __init__(self, cfg: ExportJobConfig, provenance: dict[str, Any], review: dict[str, Any] | None = None) -> None:
        self._cfg = cfg
        self._provenance = provenance
        self._review = review

    def process(self, written: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        storage, output = Storage(self._cfg.storage), self._cfg.output
        # This run's markers as written, earlier runs' from the index (one GET) and only those it lacks read.
        markers = read_markers(storage, output, EXPORT_INDEX, known={m["shard"]: m for m in written})
        write_index(storage, output, EXPORT_INDEX, markers)  # before stats.json: the index never leads the markers
        splitter = Splitter(self._cfg.split) if self._cfg.split.enabled else None
        stats = build_stats([markers[k] for k in sorted(markers)], self._provenance, splitter, self._review)
        storage.write_bytes(join(output, STATS_NAME), json.dumps(stats, indent=1, sort_keys=True).encode())
        storage.write_bytes(join(output, CARD_NAME), render_card(stats).encode())
        yield stats

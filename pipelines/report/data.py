"""Reading a ``dpmesh-label`` output for the report: run summary, markers, label rows, error rows, shard crops.

Everything is read through :class:`pipelines.storage.Storage`, so a report is made the same way over a local folder,
``s3://`` or ``gs://``. Counts come from every row; the distribution plots read a seeded sample of at most
``report.max_rows`` rows (column-projected: a million rows with their 69 pose values fit in memory, but need not).
"""

import dataclasses
import io
import json
import logging
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common.label_set import marker_uri, read_markers, read_summary
from pipelines.common.label_stats import gallery_problem
from pipelines.common.safe_paths import check_segment
from pipelines.common.shard_members import MemberError, MemberRef, check_member, decode_upright, iter_members
from pipelines.common.shard_set import index_uri_of
from pipelines.config import ConfigError
from pipelines.config.shard import DEFAULT_MAX_IMAGE_PIXELS
from pipelines.storage import ObjectNotFoundError, Storage, join
from schemas.annotations import QualityTier


logger = logging.getLogger(__name__)

# The label output's row folders: accepted persons, rejected persons (same schema), per-element failures.
ROW_FOLDERS = ("annotations", "rejected")
ERRORS_FOLDER = "errors"
# The shard set's own failures (dpmesh-shard), beside its manifest.
SHARD_ERRORS_NAME = "_errors.parquet"
# Tiers best first; a tier a future schema adds is listed after these.
TIER_ORDER = tuple(t.value for t in QualityTier)
# Columns the plots read when present. Occlusion columns (schema wave 2) are found by name, see ``is_occlusion``.
PLOT_COLUMNS = (
    "sample_id", "shard", "quality_tier", "reasons", "confidence", "box_size_px", "betas", "global_orient",
    "body_pose", "reproj_err_norm", "n_kp_valid", "truncation", "crowding_iou", "keypoint_source",
)  # fmt: skip
_OCCLUSION_HINTS = ("occlusion", "occluded", "visible", "missing", "crowd_index", "in_image", "max_iou")


def is_occlusion(name: str) -> bool:
    """True for the occlusion columns (``occlusion_level``, visible / occluded / missing keypoint counts, fraction of
    keypoints in the image, max IoU with another person, crowd index), whatever their exact names."""
    return any(hint in name for hint in _OCCLUSION_HINTS)


@dataclasses.dataclass
class LabelOutput:
    """What the report shows of one label output.

    Attributes:
        uri: The label output folder.
        summary: ``_summary.json``, or ``None`` when the run never wrote one (it died before its last step).
        markers: ``_done/<shard>.json`` by shard name (the fields the marker index keeps, at least).
        rows: The plotted columns of every accepted and rejected row (column ``folder``: ``annotations`` or
            ``rejected``; column ``shard``: the shard file the row was read from, whatever the row says), in shard,
            then row order; at most ``max_rows`` rows (a seeded sample) when ``sampled`` is true.
        n_rows: Accepted plus rejected rows in the output (before sampling).
        tier_counts / reason_counts: Over every row (never sampled).
        errors: ``errors/`` rows (``shard``, ``stage``, ``reason``) of every shard.
        shard_errors: The shard set's ``_errors.parquet`` (``stage``, ``reason``), or ``None`` when unreachable.
        columns: Every column name the annotation files hold (for "absent column" notes).
        gallery_left_out: Rows (of every row) whose sample id or tier cannot name a gallery file, by problem
            (`pipelines.common.label_stats.gallery_problem`).
    """

    uri: str
    summary: dict[str, Any] | None
    markers: dict[str, dict[str, Any]]
    rows: pa.Table
    n_rows: int
    sampled: bool
    tier_counts: dict[str, int]
    reason_counts: dict[str, int]
    errors: pa.Table
    shard_errors: pa.Table | None
    columns: list[str]
    gallery_left_out: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def occlusion_columns(self) -> list[str]:
        """The occlusion columns this output has, in schema order."""
        return [c for c in self.columns if is_occlusion(c)]


def ordered_tiers(tiers: list[str] | set[str] | dict[str, Any]) -> list[str]:
    """The given tiers best first (unknown names last, sorted)."""
    known = [t for t in TIER_ORDER if t in tiers]
    return known + sorted((t for t in tiers if t not in TIER_ORDER), key=str)  # a null tier sorts too


def _shard_file(base: str, folder: str, shard: str, suffix: str) -> str:
    """``<base>/<folder>/<shard><suffix>``; the shard name (from the marker listing) must be one plain segment.

    Reads only, so symbolic links inside the user's input are followed as before.

    Raises:
        UnsafeName: a shard name that is not one segment.
    """
    return join(base, folder, check_segment(f"{shard}{suffix}", "shard name"))


def _read_table(storage: Storage, uri: str, columns: list[str] | None = None) -> pa.Table:
    table: pa.Table = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns)
    return table


def _read_optional(storage: Storage, uri: str) -> bytes | None:
    """The object's bytes, or None when there is none (one request: no existence check before the read)."""
    try:
        return storage.read_bytes(uri)
    except (ObjectNotFoundError, FileNotFoundError):
        return None


def _read_tables(storage: Storage, uris: list[str], columns: list[str]) -> list[pa.Table]:
    """``columns`` of each Parquet object of ``uris`` that exists (a shard without errors has no errors file)."""
    tables = []
    for uri in uris:
        data = _read_optional(storage, uri)
        if data is not None:
            tables.append(pq.read_table(io.BytesIO(data), columns=columns))
    return tables


def load_label_output(storage: Storage, uri: str, *, max_rows: int, seed: int) -> LabelOutput:
    """Reads what the report plots from the label output at ``uri``.

    Raises:
        ConfigError: ``uri`` holds no labeled shards (no ``_done/`` markers).
    """
    markers = read_markers(storage, uri)
    if not markers:
        raise ConfigError(
            f"input.labels={uri!r} holds no labeled shards (no _done/ markers): is it a dpmesh-label output?"
        )
    summary = read_summary(storage, uri)
    parts: list[pa.Table] = []
    columns: list[str] = []
    for shard in sorted(markers):
        for folder in ROW_FOLDERS:
            data = _read_optional(storage, _shard_file(uri, folder, shard, ".parquet"))
            if data is None:
                continue  # a shard whose every person errored may have no rows here
            schema = pq.read_schema(io.BytesIO(data))
            columns = columns or list(schema.names)
            wanted = [c for c in schema.names if (c in PLOT_COLUMNS or is_occlusion(c)) and c != "shard"]
            table = pq.read_table(io.BytesIO(data), columns=wanted)
            # Where the gallery reads the full row again: the file's shard, never a name taken from the row.
            for name, value in (("folder", folder), ("shard", shard)):
                table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
            parts.append(table)
    rows = _concat(parts)
    gallery_left_out: dict[str, int] = defaultdict(int)
    if rows.num_rows and {"sample_id", "quality_tier"} <= set(rows.column_names):
        for row in rows.select(["sample_id", "quality_tier"]).to_pylist():
            problem = gallery_problem(row)
            if problem is not None:
                gallery_left_out[problem] += 1
    tier_counts = _value_counts(rows, "quality_tier")
    reason_counts: dict[str, int] = defaultdict(int)
    if rows.num_rows and "reasons" in rows.column_names:
        for reason, n in _value_counts(pa.table({"r": pc.list_flatten(rows.column("reasons"))}), "r").items():
            reason_counts[reason] += n
    n_rows = rows.num_rows
    sampled = n_rows > max_rows
    if sampled:
        keep = np.sort(np.random.default_rng(seed).choice(n_rows, size=max_rows, replace=False))
        rows = rows.take(pa.array(keep))
    error_files = [_shard_file(uri, ERRORS_FOLDER, shard, ".parquet") for shard in sorted(markers)]
    errors = _concat(_read_tables(storage, error_files, ["shard", "stage", "reason"]))
    return LabelOutput(
        uri=uri,
        summary=summary,
        markers=markers,
        rows=rows,
        n_rows=n_rows,
        sampled=sampled,
        tier_counts=tier_counts,
        reason_counts=dict(sorted(reason_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        errors=errors,
        shard_errors=_shard_set_errors(storage, summary),
        columns=columns,
        gallery_left_out=dict(gallery_left_out),
    )


def _concat(parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="default")


def _value_counts(table: pa.Table, column: str) -> dict[str, int]:
    if not table.num_rows or column not in table.column_names:
        return {}
    counts = table.group_by(column).aggregate([([], "count_all")]).to_pylist()
    return {str(r[column]): int(r["count_all"]) for r in counts}


def shard_set_uri(summary: dict[str, Any] | None) -> str | None:
    """The folder of the shard set the labels came from (the label run's ``input.shards``), if it names a folder."""
    shards = ((summary or {}).get("config") or {}).get("input", {}).get("shards")
    return str(shards).rstrip("/") if shards and not any(c in str(shards) for c in "*?[") else None


def _shard_set_errors(storage: Storage, summary: dict[str, Any] | None) -> pa.Table | None:
    folder = shard_set_uri(summary)
    if folder is None:
        return None
    try:
        return _read_table(storage, join(folder, SHARD_ERRORS_NAME), ["stage", "reason"])
    except (ObjectNotFoundError, FileNotFoundError, OSError) as exc:
        logger.info("no shard-set errors at %s: %s", folder, exc)
        return None


def read_rows(storage: Storage, uri: str, wanted: dict[tuple[str, str], set[str]]) -> dict[str, dict[str, Any]]:
    """Full rows by ``sample_id`` for ``wanted``: ``{(folder, shard): {sample_id, ...}}``."""
    found: dict[str, dict[str, Any]] = {}
    for (folder, shard), ids in sorted(wanted.items()):
        table = _read_table(storage, _shard_file(uri, folder, shard, ".parquet"))
        mask = pc.is_in(table.column("sample_id"), value_set=pa.array(sorted(ids), pa.string()))
        for row in table.filter(mask).to_pylist():
            found[row["sample_id"]] = row
    return found


def shard_tar_uri(storage: Storage, labels: str, shards: str | None, shard: str) -> str:
    """Where a labeled shard's tar is: under ``shards`` (``input.shards``) when given, else where its marker says it
    was read from (``shard_uri``; the marker index does not keep it, so the marker itself is read).

    Raises:
        ObjectNotFoundError: the marker names no tar.
    """
    if shards:
        return _shard_file(shards, "", shard, ".tar")
    marker = json.loads(storage.read_bytes(marker_uri(labels, shard)))
    if not marker.get("shard_uri"):
        raise ObjectNotFoundError(f"the marker of {shard} names no shard_uri; pass input.shards=<shard set>")
    return str(marker["shard_uri"])


def read_images(
    storage: Storage, tar_uri: str, keys: set[str], *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> dict[str, np.ndarray]:
    """The images ``keys`` of one shard as `(H, W, 3)` uint8 RGB, EXIF orientation applied (as labeled).

    The shard's index gives each member's data offset, size and sha1 (``tar_offset``, ``bytes``, ``sha1``); the
    tar is read once, front to back, skipping to those offsets (:func:`pipelines.common.shard_members.iter_members`),
    and every member is checked against its sha1. Images above ``max_image_pixels`` (the label run's
    ``input.max_image_pixels`` when it set one) are not decoded, as labeling did not.
    """
    index = _read_table(storage, index_uri_of(tar_uri), ["key", "tar_offset", "bytes", "sha1"]).to_pylist()
    refs = [MemberRef.from_index_row(r) for r in index if r["key"] in keys]
    images: dict[str, np.ndarray] = {}
    with storage.open_read(tar_uri) as stream:
        try:
            for ref, data in iter_members(stream, refs):
                try:
                    images[ref.key] = decode_upright(check_member(ref, data), max_image_pixels=max_image_pixels)
                except Exception as exc:  # labeling reported it already; the gallery shows the row without a crop
                    logger.warning("cannot decode %s from %s: %s", ref.key, tar_uri, exc)
        except MemberError as exc:  # a truncated tar: the members before the cut are shown
            logger.warning("%s: %s", tar_uri, exc)
    return images

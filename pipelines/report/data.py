"""Reading a label output's rows and crops for the report's gallery, and the shard set's own error rows.

Everything is read through :class:`pipelines.storage.Storage`, so a report is made the same way over a local folder,
``s3://`` or ``gs://``. Only the gallery reads rows: the few it shows, by their position in their shard's file.
"""

import io
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common.label_set import marker_uri
from pipelines.common.safe_paths import check_segment
from pipelines.common.shard_members import MemberError, MemberRef, check_member, decode_upright, iter_members
from pipelines.common.shard_set import index_uri_of
from pipelines.config.shard import DEFAULT_MAX_IMAGE_PIXELS
from pipelines.storage import ObjectNotFoundError, Storage, join
from schemas.annotations import QualityTier


logger = logging.getLogger(__name__)

# The shard set's own failures (dpmesh-shard), beside its manifest.
SHARD_ERRORS_NAME = "_errors.parquet"
# Tiers best first; a tier a future schema adds is listed after these.
TIER_ORDER = tuple(t.value for t in QualityTier)


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


def shard_set_uri(summary: dict[str, Any] | None) -> str | None:
    """The folder of the shard set the labels came from (the label run's ``input.shards``), if it names a folder."""
    shards = ((summary or {}).get("config") or {}).get("input", {}).get("shards")
    return str(shards).rstrip("/") if shards and not any(c in str(shards) for c in "*?[") else None


def read_shard_set_errors(storage: Storage, summary: dict[str, Any] | None) -> pa.Table | None:
    """The shard set's ``_errors.parquet`` (``stage``, ``reason``), or None when the summary names no shard set or
    it cannot be read."""
    folder = shard_set_uri(summary)
    if folder is None:
        return None
    try:
        return _read_table(storage, join(folder, SHARD_ERRORS_NAME), ["stage", "reason"])
    except (ObjectNotFoundError, FileNotFoundError, OSError) as exc:
        logger.info("no shard-set errors at %s: %s", folder, exc)
        return None


def read_rows(storage: Storage, uri: str, wanted: dict[tuple[str, str], dict[int, str]]) -> dict[str, dict[str, Any]]:
    """Full rows by ``sample_id`` for ``wanted``: ``{(folder, shard): {row position: sample_id}}``.

    A row whose ``sample_id`` is not the one expected at its position (the file was rewritten after the markers'
    statistics were made) is left out: the gallery shows fewer persons rather than another person's label.
    """
    found: dict[str, dict[str, Any]] = {}
    for (folder, shard), positions in sorted(wanted.items()):
        table = _read_table(storage, _shard_file(uri, folder, shard, ".parquet"))
        indices = sorted(p for p in positions if 0 <= p < table.num_rows)
        for position, row in zip(indices, table.take(pa.array(indices, pa.int64())).to_pylist(), strict=True):
            if row.get("sample_id") == positions[position]:
                found[row["sample_id"]] = row
            else:
                logger.warning("%s/%s row %d is no longer %s: left out", folder, shard, position, positions[position])
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


def read_picked(
    storage: Storage,
    labels: str,
    shards: str | None,
    summary: dict[str, Any] | None,
    wanted: dict[tuple[str, str], dict[int, str]],
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], list[str]]:
    """The rows ``wanted`` (``{(folder, shard): {row position: sample_id}}``, see :func:`read_rows`) with the images
    they stand on, read from their shard tars (under ``shards`` when given, else where each marker says), and the
    shards whose tar could not be found (their rows have no image: grey tiles). Images above the label run's
    ``input.max_image_pixels`` are not decoded, as labeling did not."""
    rows = read_rows(storage, labels, wanted)
    keys_by_shard: dict[str, set[str]] = {}
    for row in rows.values():
        keys_by_shard.setdefault(row["shard"], set()).add(row["image_key"])
    label_input = ((summary or {}).get("config") or {}).get("input") or {}
    max_pixels = int(label_input.get("max_image_pixels") or DEFAULT_MAX_IMAGE_PIXELS)
    images: dict[str, np.ndarray] = {}
    missing = []
    for shard, keys in sorted(keys_by_shard.items()):
        try:
            tar = shard_tar_uri(storage, labels, shards, shard)
            images.update(read_images(storage, tar, keys, max_image_pixels=max_pixels))
        except (ObjectNotFoundError, FileNotFoundError) as exc:
            logger.warning("crops of %s unavailable: %s", shard, exc)
            missing.append(shard)
    return rows, images, missing

"""What a shard set is on storage, the one home of its names: what ``dpmesh-shard`` writes, what jobs read.

A shard set is a folder of ``shard-NNNNNN.tar`` (WebDataset samples), a ``shard-NNNNNN.parquet`` index beside
each tar (a row per sample: key, sha1 of the image bytes, perceptual hash, persons, ...), and ``_manifest.json``,
written last, which lists every shard with its tar's size and sha1: the set is complete only once it exists.

A set grows by **generations** (``dpmesh-shard mode=append``): each adds shards numbered after the last and never
rewrites a finished one. The manifest lists the generations; a generation that saw files change or disappear names
its ``retired`` file (schema ``schemas.SHARD_RETIRED_SCHEMA``): the samples it took out of the set. **What is
live**: every sample of the manifest's shards, less the ``(shard, key)`` pairs of every generation's retired file
(:func:`retired_keys_by_shard`). A key is live in at most one shard. ``_near_duplicates.parquet`` groups the live
samples whose images are near-duplicates (schema ``schemas.NEAR_DUPLICATES_SCHEMA``).
"""

import io
import re
from typing import Any

import pyarrow.parquet as pq

from pipelines.storage import Storage, join


MANIFEST_NAME = "_manifest.json"
SHARD_TAR = re.compile(r"shard-\d{6}\.tar$")
NEAR_DUPLICATES_NAME = "_near_duplicates.parquet"
GENERATIONS_FOLDER = "_generations"


def shard_name_of(uri: str) -> str:
    """``shard-000003`` for ``.../shard-000003.tar``."""
    return uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar")


def index_uri_of(shard_uri: str) -> str:
    """The shard's index Parquet, next to its tar."""
    return shard_uri.removesuffix(".tar") + ".parquet"


def folder_of(uri: str) -> str:
    """The folder (prefix) holding an object: where its shard set's manifest lives."""
    return uri.rstrip("/").rsplit("/", 1)[0]


def manifest_pixel_limit(manifest: dict[str, Any]) -> int | None:
    """The ``shard.max_image_pixels`` a shard set was made with, from its parsed manifest; None when not recorded.

    Readers of the set's images (labeling, export) follow it, so that one limit decides ``decompression_bomb``.
    """
    limit = ((manifest.get("config") or {}).get("shard") or {}).get("max_image_pixels")
    return int(limit) if limit else None


def generation_file(generation: int, name: str) -> str:
    """Where (relative to the set's folder) generation ``generation`` keeps its file ``name`` (``retired.parquet``,
    ``errors.parquet``); generation 0's errors are ``_errors.parquet`` at the top, as before generations existed."""
    return f"{GENERATIONS_FOLDER}/{generation:06d}/{name}"


def manifest_generations(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The generations a parsed manifest lists, oldest first; a manifest written before generations existed is one
    generation (0) of all its shards."""
    listed = manifest.get("generations")
    if isinstance(listed, list) and listed:
        return listed
    shards = [s["shard"] for s in manifest.get("shards", [])]
    return [{"generation": 0, "shards": shards, "retired_file": None}]


def retired_keys_by_shard(storage: Storage, folder: str, manifest: dict[str, Any]) -> dict[str, frozenset[str]]:
    """``{shard: keys}`` of the samples that later generations retired (superseded or removed), read once from every
    generation's retired file. A reader of the live set leaves these rows of those shards out."""
    retired: dict[str, set[str]] = {}
    for generation in manifest_generations(manifest):
        name = generation.get("retired_file")
        if not name:
            continue
        table = pq.read_table(io.BytesIO(storage.read_bytes(join(folder, name))), columns=["shard", "key"])
        for shard, key in zip(table.column("shard").to_pylist(), table.column("key").to_pylist(), strict=True):
            retired.setdefault(shard, set()).add(key)
    return {shard: frozenset(keys) for shard, keys in retired.items()}


def near_duplicate_groups(storage: Storage, folder: str) -> dict[str, dict[str, str]]:
    """``{shard: {key: group}}`` of the live samples in a near-duplicate group, from the set's
    ``_near_duplicates.parquet`` (one read, three columns); empty for a set made before near-duplicates were grouped.
    """
    try:
        data = storage.read_bytes(join(folder, NEAR_DUPLICATES_NAME))
    except FileNotFoundError:
        return {}
    table = pq.read_table(io.BytesIO(data), columns=["shard", "key", "group"])
    groups: dict[str, dict[str, str]] = {}
    columns = (table.column(name).to_pylist() for name in ("shard", "key", "group"))
    for shard, key, group in zip(*columns, strict=True):
        groups.setdefault(shard, {})[key] = group
    return groups

"""What a shard set is on storage, the one home of its names: what ``dpmesh-shard`` writes, what jobs read.

A shard set is a folder of ``shard-NNNNNN.tar`` (WebDataset samples), a ``shard-NNNNNN.parquet`` index beside
each tar (a row per sample: key, sha1 of the image bytes, persons, ...), and ``_manifest.json``, written last,
which lists every shard with its tar's size and sha1: the set is complete only once it exists.
"""

import re
from typing import Any


MANIFEST_NAME = "_manifest.json"
SHARD_TAR = re.compile(r"shard-\d{6}\.tar$")


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

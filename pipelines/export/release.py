"""A labels-only release (``format=labels``) and what a rebuild from one (``from_release=``) stands on.

A release is an export whose shards hold no image bytes: per labeled shard ``shard-NNNNNN``,

* ``shard-NNNNNN.labels.parquet``: the selected annotation rows a direct export of the same config would write
  (same columns, types and file metadata as the labels; rows that fail the export's checks, or whose image cannot
  be read, are not in it and are counted in its marker like any export's);
* ``shard-NNNNNN.images.parquet``: one row per image of those rows (``schemas.RELEASE_IMAGES_SCHEMA``): its
  ``path`` relative to the corpus root, ``source_uri``, ``bytes`` and ``sha1`` of the original file;

and, as every export, ``_done/shard-NNNNNN.json`` (the marker: counts, the label lineage of the shard), ``stats.json``
and the card ``README.md``. It can be published where images cannot (the image licences stay with their owners).

``dpmesh-export from_release=<release> input.images=<a copy of the corpus> format=hmr2|camerahmr|crops`` rebuilds an
export from it without the shard set: its units are the release's shards, each committed by its marker as any
export's; an image is read from ``<input.images>/<path>`` (each path segment through the safe join) and used only
if its size and sha1 are the release's (else ``image_missing`` / ``image_mismatch``, counted, never a wrong label).
The same images give the same pixels, so the rebuild writes the bytes a direct export writes.
"""

from typing import Any

from pipelines.common.safe_paths import safe_join
from pipelines.storage import parse_uri
from pipelines.storage.uri import literal_prefix


LABELS_SUFFIX = ".labels.parquet"
IMAGES_SUFFIX = ".images.parquet"


def labels_uri(release: str, shard: str) -> str:
    """``<release>/<shard>.labels.parquet`` (``shard`` through the safe join)."""
    return safe_join(release, f"{shard}{LABELS_SUFFIX}", what="shard name")


def images_uri(release: str, shard: str) -> str:
    """``<release>/<shard>.images.parquet`` (``shard`` through the safe join)."""
    return safe_join(release, f"{shard}{IMAGES_SUFFIX}", what="shard name")


def corpus_root(manifest: dict[str, Any]) -> str | None:
    """The root a shard set's images were listed under, ``/``-terminated, from its parsed ``_manifest.json``: the
    ``input.images`` folder or prefix, or a glob's literal folder; None for a corpus listed from a manifest of URIs
    or a manifest that does not say. (The rule is ``dpmesh-shard``'s listing: a sample's relative path is its URI
    after this root.)"""
    images = ((manifest.get("config") or {}).get("input") or {}).get("images")
    if not isinstance(images, str) or not images:
        return None
    literal = literal_prefix(images)
    if literal != images:  # a glob: its paths are relative to the folder its literal part names
        literal = literal.rsplit("/", 1)[0] if "/" in literal else ""
    return literal.rstrip("/") + "/"


def image_path(source_uri: str, root: str | None) -> str:
    """An image's path relative to its corpus root: ``source_uri`` after ``root`` when it starts with it, else the
    URI without its scheme (``bucket/key``, or a local path without its leading ``/``), as ``dpmesh-shard`` names
    images listed from a manifest of URIs."""
    if root and source_uri.startswith(root):
        return source_uri[len(root) :]
    parsed = parse_uri(source_uri)
    return f"{parsed.bucket}/{parsed.key}" if parsed.bucket else parsed.key.lstrip("/")


def release_label_marker(release_marker: Any) -> dict[str, Any]:
    """The label marker a rebuild's unit stands on, from the release's marker of that shard.

    It holds what the release recorded of the labels (``shard_uri`` and the label lineage, so the rebuild's marker
    records what a direct export's does), ``counts.persons_accepted`` (the persons the release holds; for a shard
    the release refused, the rows it refused), ``release`` (the release's config hash: a release remade with
    another config is exported again) and ``release_error`` (the release's refusal of the shard, or None).

    Raises:
        ValueError: not a marker of a labels release.
    """
    if not isinstance(release_marker, dict) or release_marker.get("format") != "labels":
        raise ValueError("the release marker is not a JSON object of a format=labels export")
    label, counts = release_marker.get("label"), release_marker.get("counts")
    if not isinstance(label, dict) or not isinstance(counts, dict):
        raise ValueError("the release marker lacks its label lineage or its counts")
    error = release_marker.get("shard_error")
    if error is not None and not (isinstance(error, dict) and isinstance(error.get("reason"), str)):
        raise ValueError("the release marker's shard_error is not a refusal with a reason")
    return {
        **label,
        "counts": {"persons_accepted": counts.get("rows_in") if error else counts.get("persons")},
        "release": {"config_hash": release_marker.get("config_hash")},
        "release_error": error,
    }

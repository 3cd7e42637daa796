"""Listing the files of a corpus: a directory, glob or object-store prefix, or a manifest of URIs.

Listing is lazy (the storage layer pages through object stores) so that a corpus of millions of
objects never has to fit in one process's memory; the pipeline runs it on a worker and fans out.
"""

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipelines.config import InputConfig
from pipelines.storage import Storage, join, parse_uri


_GLOB_CHARS = ("*", "?", "[")
_MANIFEST_COLUMNS = ("uri", "source_uri")


@dataclass(frozen=True)
class SourceFile:
    """One input file.

    Attributes:
        uri: Where to read it.
        relpath: Its path relative to the corpus root (or, for manifest entries, the URI without scheme);
            the sample key is derived from it.
        size: Size in bytes when the listing knows it, else ``None``.
    """

    uri: str
    relpath: str
    size: int | None


def list_corpus(storage: Storage, cfg: InputConfig) -> Iterator[SourceFile]:
    """Every input file of the corpus described by ``cfg``, lazily."""
    files = _list_manifest(storage, cfg.manifest) if cfg.manifest else _list_images(storage, str(cfg.images))
    if not cfg.extensions:
        yield from files
        return
    wanted = set(cfg.extensions)
    yield from (f for f in files if _extension(f.relpath) in wanted)


def _extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _list_images(storage: Storage, images: str) -> Iterator[SourceFile]:
    if any(ch in images for ch in _GLOB_CHARS):
        root = images[: min(images.find(ch) for ch in _GLOB_CHARS if ch in images)].rsplit("/", 1)[0] + "/"
        objects = storage.glob(images)
    else:
        root = images.rstrip("/") + "/"
        objects = storage.list(root)
    for obj in objects:
        yield SourceFile(uri=obj.uri, relpath=obj.uri[len(root) :], size=obj.size)


def _list_manifest(storage: Storage, manifest: str) -> Iterator[SourceFile]:
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    for entry in _manifest_entries(storage, manifest):
        uri = entry if "://" in entry or entry.startswith("/") else join(base, entry)
        parsed = parse_uri(uri)
        relpath = f"{parsed.bucket}/{parsed.key}" if parsed.bucket else parsed.key.lstrip("/")
        yield SourceFile(uri=uri, relpath=relpath, size=None)


def _manifest_entries(storage: Storage, manifest: str) -> Iterator[str]:
    content = storage.read_bytes(manifest)
    if manifest.lower().endswith(".parquet"):
        table = pq.read_table(io.BytesIO(content))
        column = next((c for c in _MANIFEST_COLUMNS if c in table.column_names), None)
        if column is None:
            raise ValueError(f"manifest {manifest} has no column named one of {_MANIFEST_COLUMNS}")
        yield from (str(v) for v in table.column(column).to_pylist() if v)
        return
    for line in content.decode("utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield entry

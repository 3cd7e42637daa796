"""``format=labels``: a labels-only release, ``<shard>.labels.parquet`` + ``<shard>.images.parquet`` per shard.

The rows are the annotation rows of the persons this export selected and could write, exactly as the labels hold
them (columns, Arrow types, the labels' file metadata); the image table has one row per image of those rows
(``schemas.RELEASE_IMAGES_SCHEMA``: ``key``, ``path``, ``source_uri``, ``sha1``, ``bytes``), sorted by key. No image
bytes are written. Layout and rebuild: :mod:`pipelines.export.release`.

An image whose ``path`` a rebuild could not follow (empty, or a segment that is not one plain name) is refused here
(:class:`~pipelines.common.safe_paths.UnsafeName`, counted as ``unsafe_path``), so a release never names an image
that no rebuild can find.
"""

import dataclasses
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

import pipelines
from pipelines.common.safe_paths import UnsafeName, check_segment
from pipelines.export.formats.base import ShardWriter
from pipelines.export.records import ExportImage, ImageRecord
from pipelines.export.release import images_uri, labels_uri
from pipelines.parquet_io import parquet_bytes
from pipelines.storage import Storage
from schemas import RELEASE_IMAGES_SCHEMA, table_from_rows, with_file_metadata


def check_path(path: str) -> str:
    """``path`` if every ``/``-separated segment is one plain name (what a rebuild safe-joins), else
    :class:`UnsafeName`."""
    if not path or PurePosixPath(path).is_absolute():
        raise UnsafeName(f"release image path {path!r} is empty or absolute")
    for segment in path.split("/"):
        check_segment(segment, "release image path segment")
    return path


class LabelsWriter(ShardWriter):
    """Writes ``<output>/<shard>.images.parquet`` then ``<output>/<shard>.labels.parquet``."""

    SHARD_SUFFIX = ".labels.parquet"
    WRITES_IMAGES = False
    WRITES_ROWS = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._labels_uri = labels_uri(self.output, self.shard)
        self._images_uri = images_uri(self.output, self.shard)
        self._records: list[ImageRecord] = []
        self._rows: pa.Table | None = None

    def add(self, image: ExportImage) -> None:
        if image.record is None:
            raise UnsafeName(f"image {image.image_key!r} has no record of its original file")
        check_path(image.record.path)
        self._records.append(image.record)

    def add_rows(self, rows: pa.Table) -> None:
        self._rows = rows

    def close(self) -> list[str]:
        if self._rows is None:
            raise RuntimeError("LabelsWriter.close before add_rows: the job passes the rows of every shard")
        records = sorted(self._records, key=lambda r: r.key)
        schema = with_file_metadata(
            RELEASE_IMAGES_SCHEMA, pipeline_version=pipelines.__version__, config_hash=self.config_hash or "unknown"
        )
        images = table_from_rows([dataclasses.asdict(r) for r in records], schema)
        # The image table first: rows never name an image the release cannot say how to find.
        self.storage.write_bytes(self._images_uri, parquet_bytes(images))
        self.storage.write_bytes(self._labels_uri, parquet_bytes(self._rows))
        return [self._labels_uri, self._images_uri]

    @classmethod
    def withdraw(cls, storage: Storage, output: str, shard: str, image_keys: set[str]) -> None:
        """Removes the shard's rows, then its image table."""
        storage.delete(labels_uri(output, shard))
        storage.delete(images_uri(output, shard))

"""The run's work files: rows written by bucket (ground-truth partitions, label pieces), streamed to local Parquet
files one record batch at a time and uploaded when complete, so memory holds one batch whatever a bucket's size.

Work files are uncompressed (each is read once and deleted at the end of the run; compressing float arrays costs
more time than it saves) and live under ``<output>/_work/<run>/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import Storage, join


class BucketWriters:
    """Writes tables by bucket to ``<folder>/b<bucket>/<name>-<k>.parquet`` (``k`` counts the files of one bucket:
    a table whose columns or types differ from the file's, as a hand-edited label file's may, starts a new one).

    Use as a context manager; `finish` uploads every file and returns each bucket's URIs.
    """

    def __init__(self, storage: Storage, folder: str, name: str) -> None:
        self._storage, self._folder, self._name = storage, folder, name
        self._scratch = tempfile.mkdtemp(prefix="dpmesh-eval-")
        self._open: dict[int, tuple[pq.ParquetWriter, pa.Schema]] = {}
        self._files: dict[int, list[str]] = {}

    def __enter__(self) -> BucketWriters:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        for writer, _ in self._open.values():
            writer.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def write(self, bucket: int, table: pa.Table) -> None:
        """Appends ``table``'s rows to the bucket's current file."""
        current = self._open.get(bucket)
        if current is not None and not table.schema.equals(current[1]):
            try:
                table = table.cast(current[1])
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError):
                current[0].close()
                current = None
        if current is None:
            files = self._files.setdefault(bucket, [])
            local = os.path.join(self._scratch, f"b{bucket:05d}-{len(files):03d}.parquet")
            files.append(local)
            current = (pq.ParquetWriter(local, table.schema, compression="none"), table.schema)
            self._open[bucket] = current
        current[0].write_table(table)

    def finish(self) -> dict[int, tuple[str, ...]]:
        """Closes and uploads every file; returns bucket -> its URIs."""
        for writer, _ in self._open.values():
            writer.close()
        self._open.clear()
        uris: dict[int, tuple[str, ...]] = {}
        for bucket, files in sorted(self._files.items()):
            names = [f"{self._name}-{k:03d}.parquet" for k in range(len(files))]
            targets = tuple(join(self._folder, f"b{bucket:05d}", name) for name in names)
            for local, uri in zip(files, targets, strict=True):
                self._storage.upload_file(local, uri)
            uris[bucket] = targets
        return uris

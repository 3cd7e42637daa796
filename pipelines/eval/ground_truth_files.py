"""Reading ground-truth files a batch at a time: Parquet of the documented layout (one record batch at a time, so
a large file never sits in memory whole) and 3DPW sequence pickles (small: one batch). `parquet_file` opens any
Parquet file of the evaluation that way: local files directly, objects through ranged reads.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.eval.ground_truth import GroundTruthPerson, GroundTruthRowError, ground_truth_uris
from pipelines.eval.ground_truth_table import GroundTruthTable, read_table
from pipelines.eval.pw3d import sequence_file_persons
from pipelines.storage import Storage
from pipelines.storage.uri import parse_uri


SUFFIXES = (".parquet", ".pkl")
# Rows per record batch of a ground-truth Parquet: ~10 MB of float64 arrays (joints and SMPL parameters). Parquet
# decodes a whole row group at once: a file written with huge row groups costs their size while read.
BATCH_ROWS = 8192


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over ``storage.read_range`` (Parquet reads its footer, then the columns it needs)."""

    def __init__(self, storage: Storage, uri: str) -> None:
        super().__init__()
        self._storage, self._uri = storage, uri
        self._size = storage.size(uri)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        length = min(len(buffer), self._size - self._pos)
        if length <= 0:
            return 0
        data = self._storage.read_range(self._uri, self._pos, length)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def parquet_file(storage: Storage, uri: str) -> pq.ParquetFile:
    """A Parquet file to read by record batches: a local path as such, an object through `RangedFile`."""
    parsed = parse_uri(uri)
    return pq.ParquetFile(parsed.key if parsed.scheme == "file" else RangedFile(storage, uri))


@dataclass(frozen=True)
class GroundTruthBatch:
    """Part of one ground-truth file: its usable persons and the problems of its other rows (in row order)."""

    persons: GroundTruthTable
    problems: list[GroundTruthRowError]


def list_sources(storage: Storage, uri: str) -> list[str]:
    """The ground-truth files ``uri`` names (a file, a folder, a glob), in name order.

    Raises:
        ValueError: none found.
    """
    uris = ground_truth_uris(storage, uri, SUFFIXES)
    if not uris:
        raise ValueError(f"no ground truth (*.parquet or 3DPW *.pkl) at {uri!r}")
    return uris


def read_batches(storage: Storage, uri: str, batch_rows: int = BATCH_ROWS) -> Iterator[GroundTruthBatch]:
    """The persons of one ground-truth file, batch by batch; problems name the file and row (or frame and actor).

    Raises:
        ValueError: a file that cannot be read as its format (a pickle that would run code is one); the message
            names the file.
    """
    if uri.endswith(".pkl"):
        read = sequence_file_persons(uri, storage.read_bytes(uri))
        persons = [p for p in read if isinstance(p, GroundTruthPerson)]
        yield GroundTruthBatch(
            GroundTruthTable.from_persons(persons), [p for p in read if isinstance(p, GroundTruthRowError)]
        )
        return
    try:
        parquet = parquet_file(storage, uri)
    except (OSError, ValueError) as exc:  # not Parquet, truncated
        raise ValueError(f"{uri}: not a readable Parquet file ({exc})") from exc
    start = 0
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield GroundTruthBatch(*read_table(pa.Table.from_batches([batch]), uri, start))
        start += batch.num_rows

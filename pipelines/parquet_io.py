"""Serialising Arrow tables to Parquet bytes, the same way everywhere, so reruns give identical files."""

import io

import pyarrow as pa
import pyarrow.parquet as pq


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet bytes: zstd, one row group up to 64k rows, no wall-clock fields (reproducible)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=65536)
    return buffer.getvalue()


def read_parquet_bytes(data: bytes) -> pa.Table:
    """The table in Parquet ``data``."""
    return pq.read_table(io.BytesIO(data))

"""Shard index: one row per sample stored in a WebDataset shard tar (``<output>/shard-NNNNNN.parquet``).

Only samples that were read and decoded successfully are indexed; the others are rows of
:data:`schemas.errors.ERROR_SCHEMA`. Rows are sorted by ``key``, the order of the tar members.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.metadata import FRAME_IMAGE, make_field, make_schema


SHARD_INDEX_SCHEMA_NAME = "shard_index"

SHARD_INDEX_SCHEMA: pa.Schema = make_schema(
    SHARD_INDEX_SCHEMA_NAME,
    [
        make_field("key", pa.string(), "Dot-free sample key (WebDataset __key__), unique across the corpus."),
        make_field("source_uri", pa.string(), "URI or path of the original image file."),
        make_field("sha1", pa.string(), "Lower-case hex SHA-1 of the original image bytes."),
        make_field("format", pa.string(), "Image format of the stored member: jpeg, png or webp."),
        make_field(
            "width", pa.int32(), "Image width after EXIF orientation is applied.", unit="px", frame=FRAME_IMAGE
        ),
        make_field(
            "height", pa.int32(), "Image height after EXIF orientation is applied.", unit="px", frame=FRAME_IMAGE
        ),
        make_field(
            "exif_orientation",
            pa.int8(),
            "EXIF Orientation tag of the original (1..8); 1 when absent. width/height are already upright.",
        ),
        make_field("bytes", pa.int64(), "Size of the image member in the tar.", unit="byte"),
        make_field(
            "n_persons",
            pa.int32(),
            "Persons listed in the input annotations for this image; 0 when none or unannotated.",
            unit="count",
        ),
        make_field("annotated", pa.bool_(), "True when the input annotations cover this image (even with 0 persons)."),
        make_field("shard", pa.string(), "Shard name without extension, e.g. 'shard-000003'."),
        make_field("tar_member", pa.string(), "Name of the image member in the tar, '<key>.<ext>', e.g. 'k.jpg'."),
        make_field(
            "tar_offset",
            pa.int64(),
            "Byte offset of the image member's data (after its tar header) in the tar, for random access.",
            unit="byte",
        ),
    ],
)
"""Arrow schema of the shard index written next to every shard tar."""

"""Shard index: one row per sample stored in a WebDataset shard tar (``<output>/shard-NNNNNN.parquet``).

Only samples that were read and decoded successfully are indexed; the others are rows of
:data:`schemas.errors.ERROR_SCHEMA`. Rows are sorted by ``key``, the order of the tar members.

Beside the index, a shard set holds two more tables about its samples: which samples later generations retired
(:data:`SHARD_RETIRED_SCHEMA`, one file per generation) and which live samples are near-duplicates of each other
(:data:`NEAR_DUPLICATES_SCHEMA`, ``_near_duplicates.parquet``). See ``pipelines.common.shard_set``.
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
        make_field(
            "phash",
            pa.binary(16),
            "128-bit perceptual hash of the upright image, 16 big-endian bytes (colour DCT hash v2, "
            "pipelines.shard.perceptual_hash); near-duplicates differ in few bits. Null when the pixels could not be "
            "decoded.",
            nullable=True,
        ),
    ],
)
"""Arrow schema of the shard index written next to every shard tar."""

SHARD_RETIRED_SCHEMA_NAME = "shard_retired"

SHARD_RETIRED_SCHEMA: pa.Schema = make_schema(
    SHARD_RETIRED_SCHEMA_NAME,
    [
        make_field("key", pa.string(), "Sample key of the retired sample."),
        make_field("shard", pa.string(), "Shard (of an earlier generation) that holds the retired sample."),
        make_field("sha1", pa.string(), "SHA-1 of the retired sample's bytes, as its index recorded it."),
        make_field("source_uri", pa.string(), "Where the retired sample was read from."),
        make_field("generation", pa.int32(), "Generation whose run retired it.", unit="count"),
        make_field(
            "reason",
            pa.string(),
            "'superseded': the file at its key changed (the new bytes are a sample of this generation, or one of "
            "its error rows); 'removed': the file is gone from the listing (input.record_removals=true).",
        ),
    ],
)
"""One row per sample a generation retired: ``_generations/NNNNNN/retired.parquet``."""

NEAR_DUPLICATES_SCHEMA_NAME = "near_duplicates"

NEAR_DUPLICATES_SCHEMA: pa.Schema = make_schema(
    NEAR_DUPLICATES_SCHEMA_NAME,
    [
        make_field("key", pa.string(), "Sample key of a live sample that has at least one near-duplicate."),
        make_field("shard", pa.string(), "Shard holding the sample."),
        make_field(
            "group",
            pa.string(),
            "Near-duplicate group: the smallest sample key in it. Groups are connected components of the pairs "
            "whose phash differ in at most near_duplicates.threshold bits (recorded in the manifest).",
        ),
        make_field("group_size", pa.int32(), "Samples in the group (>= 2).", unit="count"),
    ],
)
"""One row per live sample in a near-duplicate group, sorted by group then key: ``_near_duplicates.parquet``."""

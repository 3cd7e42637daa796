"""Release images: one row per image a labels-only release labels (``<release>/shard-NNNNNN.images.parquet``).

``dpmesh-export format=labels`` writes the selected annotation rows without any image bytes; this table says which
image each row was labeled on, so that ``dpmesh-export from_release=<release> input.images=<a copy of the corpus>``
can find each image again and prove it is the same one (size and sha1 of the original bytes, as sharded) before a
label is paired with it. Rows are sorted by ``key``.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.metadata import make_field, make_schema


RELEASE_IMAGES_SCHEMA_NAME = "release_images"

RELEASE_IMAGES_SCHEMA: pa.Schema = make_schema(
    RELEASE_IMAGES_SCHEMA_NAME,
    [
        make_field("key", pa.string(), "Dot-free sample key: the image_key of the annotation rows of this image."),
        make_field(
            "path",
            pa.string(),
            "Path of the image relative to the corpus root as dpmesh-shard listed it ('/'-separated; for a "
            "corpus listed from a manifest of URIs, the URI without its scheme). A rebuild reads "
            "<input.images>/<path>, every segment through the safe join.",
        ),
        make_field("source_uri", pa.string(), "URI or path of the original image file when it was sharded."),
        make_field("sha1", pa.string(), "Lower-case hex SHA-1 of the original image bytes."),
        make_field("bytes", pa.int64(), "Size of the original image file.", unit="byte"),
    ],
)
"""Arrow schema of a labels release's per-shard image table."""

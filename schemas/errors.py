"""Per-element failures of any stage (``<output>/errors/shard-NNNNNN.parquet`` and the sharding job's errors).

A failure is an element that produced no output row: an unreadable input image, or a person the
model could not label. Labels that were produced but judged bad are rows of ``rejected/``
(:data:`schemas.annotations.ANNOTATION_SCHEMA`), not errors. ``stage`` and ``reason`` take values from
:class:`ErrorStage` and :class:`ErrorReason`, the one place writers, metrics and tests share.
"""

from __future__ import annotations

from enum import Enum

import pyarrow as pa

from schemas.metadata import make_field, make_schema


ERRORS_SCHEMA_NAME = "errors"


class ErrorStage(str, Enum):
    """Where a failure happened: ``<job>.<step>``."""

    SHARD_READ = "shard.read"
    SHARD_DECODE = "shard.decode"
    SHARD_ANNOTATIONS = "shard.annotations"
    SHARD_DEDUP = "shard.dedup"
    SHARD_WRITE = "shard.write"
    LABEL_READ = "label.read"
    LABEL_DECODE = "label.decode"
    LABEL_PREPROCESS = "label.preprocess"
    LABEL_INFERENCE = "label.inference"
    LABEL_POSTPROCESS = "label.postprocess"


class ErrorReason(str, Enum):
    """Short machine-readable failure codes (the ``reason`` column)."""

    READ_FAILED = "read_failed"
    """The bytes could not be read from storage (after retries). Labeling never writes it: a storage fault there
    fails the work item, which the runner retries."""
    TRUNCATED_SHARD = "truncated_shard"
    """The shard tar ends early or is damaged: samples its index lists are missing from it."""
    NOT_IN_INDEX = "not_in_index"
    """A shard member whose key the shard's index does not list (the tar was changed after sharding)."""
    CHECKSUM_MISMATCH = "checksum_mismatch"
    """The bytes differ from the sha1 recorded when they were sharded (an image against its index row, or a
    whole tar against the manifest)."""
    FILE_TOO_LARGE = "file_too_large"
    """The file is larger than the configured per-file byte limit (checked before reading it)."""
    CHANGED_DURING_RUN = "changed_during_run"
    """The bytes read when writing the shard differ (sha1) from those probed earlier in the run."""
    ZERO_BYTES = "zero_bytes"
    NOT_A_FILE = "not_a_file"
    """A listed entry that is not a regular file (a FIFO, socket or device): never read, it could block forever."""
    BROKEN_LINK = "broken_link"
    """A symbolic link whose target is missing, or that loops back to one of its own parent folders."""
    OUTSIDE_INPUT = "outside_input"
    """A symbolic link to a file or folder outside the input folder, with ``input.follow_symlinks=false``."""
    INVALID_FILE_NAME = "invalid_file_name"
    """The file name is not valid UTF-8, so no URI in the UTF-8 index and JSON could name it (shown escaped)."""
    NOT_AN_IMAGE = "not_an_image"
    """No decoder recognises the bytes."""
    CORRUPT_IMAGE = "corrupt_image"
    """Recognised format, but truncated or undecodable."""
    UNSUPPORTED_FORMAT = "unsupported_format"
    """A decodable image in a format other than jpeg, png or webp."""
    DECOMPRESSION_BOMB = "decompression_bomb"
    """More pixels than the configured limit."""
    DUPLICATE = "duplicate"
    """Same key (or same sha1 when deduplicating) as an earlier sample."""
    BENCHMARK_OVERLAP = "benchmark_overlap"
    """An exact or near duplicate (perceptual hash) of an image of the benchmark set given to ``exclude.*``."""
    INVALID_KEY = "invalid_key"
    """A sample key (tar member or index row) outside the key grammar: 1-96 of [A-Za-z0-9_-]; never labeled."""
    INVALID_ANNOTATION = "invalid_annotation"
    """The person's input annotation is malformed (NaN/inf, wrong length)."""
    BBOX_OUTSIDE_IMAGE = "bbox_outside_image"
    NO_VALID_KEYPOINTS = "no_valid_keypoints"
    """No keypoint has a confidence above the model's validity threshold (0.05)."""
    NONFINITE_KEYPOINTS = "nonfinite_keypoints"
    """A keypoint coordinate or confidence is NaN or infinite."""
    DEGENERATE_BBOX = "degenerate_bbox"
    """The crop box built from the keypoints has no extent."""
    NAN_OUTPUT = "nan_output"
    """The model returned NaN/inf parameters."""
    INFERENCE_FAILED = "inference_failed"
    """The model raised (e.g. out of memory on one element)."""
    INTERNAL_ERROR = "internal_error"
    """Any other unexpected exception; ``error`` holds the message."""


ERROR_STAGES: frozenset[str] = frozenset(stage.value for stage in ErrorStage)
ERROR_REASONS: frozenset[str] = frozenset(reason.value for reason in ErrorReason)

ERROR_SCHEMA: pa.Schema = make_schema(
    ERRORS_SCHEMA_NAME,
    [
        make_field("key", pa.string(), "Sample (image) key when known.", nullable=True),
        make_field("source_uri", pa.string(), "URI of the input image or shard when known.", nullable=True),
        make_field("shard", pa.string(), "Shard name when known, e.g. 'shard-000003'.", nullable=True),
        make_field("person_idx", pa.int32(), "Person index within the image for per-person failures.", nullable=True),
        make_field("stage", pa.string(), "Stage that failed, one of schemas.errors.ErrorStage."),
        make_field("reason", pa.string(), "Machine-readable code, one of schemas.errors.ErrorReason."),
        make_field("error", pa.string(), "Human-readable message (exception type and text); may be empty."),
        make_field("schema_version", pa.string(), "schemas.SCHEMA_VERSION of the writer."),
    ],
)
"""Arrow schema of the errors tables of both jobs."""

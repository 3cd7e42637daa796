"""Arrow schemas: the single source of truth for every column the pipelines write.

Imports pyarrow and the standard library only. ``ALL_SCHEMAS`` lists every schema by name; each
has a golden snapshot under ``tests/golden/schemas/``.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.annotations import (
    ANNOTATION_SCHEMA,
    COCO17_KEYPOINT_NAMES,
    QUALITY_TIERS,
    SMPL24_JOINT_NAMES,
    KeypointSource,
    QualityTier,
)
from schemas.arrays import fixed_list_shape, fixed_list_to_numpy
from schemas.errors import ERROR_REASONS, ERROR_SCHEMA, ERROR_STAGES, ErrorReason, ErrorStage
from schemas.metadata import SCHEMA_VERSION, empty_table, table_from_rows, with_file_metadata
from schemas.occlusion import COCO_VISIBILITY_CONFIDENCE, OCCLUSION_LEVELS, OcclusionLevel
from schemas.release_images import RELEASE_IMAGES_SCHEMA
from schemas.shard_index import NEAR_DUPLICATES_SCHEMA, SHARD_INDEX_SCHEMA, SHARD_RETIRED_SCHEMA


ALL_SCHEMAS: dict[str, pa.Schema] = {
    "shard_index": SHARD_INDEX_SCHEMA,
    "annotations": ANNOTATION_SCHEMA,
    "errors": ERROR_SCHEMA,
    "shard_retired": SHARD_RETIRED_SCHEMA,
    "near_duplicates": NEAR_DUPLICATES_SCHEMA,
    "release_images": RELEASE_IMAGES_SCHEMA,
}
"""Every schema, keyed by its ``schema_name`` metadata."""

__all__ = [
    "ALL_SCHEMAS",
    "ANNOTATION_SCHEMA",
    "COCO17_KEYPOINT_NAMES",
    "COCO_VISIBILITY_CONFIDENCE",
    "ERROR_REASONS",
    "ERROR_SCHEMA",
    "ERROR_STAGES",
    "NEAR_DUPLICATES_SCHEMA",
    "OCCLUSION_LEVELS",
    "QUALITY_TIERS",
    "RELEASE_IMAGES_SCHEMA",
    "SCHEMA_VERSION",
    "SHARD_INDEX_SCHEMA",
    "SHARD_RETIRED_SCHEMA",
    "SMPL24_JOINT_NAMES",
    "ErrorReason",
    "ErrorStage",
    "KeypointSource",
    "OcclusionLevel",
    "QualityTier",
    "empty_table",
    "fixed_list_shape",
    "fixed_list_to_numpy",
    "table_from_rows",
    "with_file_metadata",
]

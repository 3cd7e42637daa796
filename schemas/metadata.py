"""Schema version, field/schema metadata conventions and row validation shared by every table.

Every field carries bytes metadata with a ``description`` key, a ``unit`` key where a unit applies
(``"1"`` marks a dimensionless float, as in UDUNITS) and a ``frame`` key for coordinates and
rotations. Every schema carries ``schema_name`` and ``schema_version``; Parquet writers add
``pipeline_version`` and ``config_hash`` with :func:`with_file_metadata`.

List children are named ``element`` and are non-null, which is what Parquet's compliant nested
types store, so a schema read back from Parquet equals the one written (metadata included).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pyarrow as pa


SCHEMA_VERSION = "2.0.0"
"""Version of every schema in this package. Bump the minor for added nullable columns, the major otherwise."""

UNIT_KEY = b"unit"
FRAME_KEY = b"frame"
DESCRIPTION_KEY = b"description"
SCHEMA_NAME_KEY = b"schema_name"
SCHEMA_VERSION_KEY = b"schema_version"
PIPELINE_VERSION_KEY = b"pipeline_version"
CONFIG_HASH_KEY = b"config_hash"

FRAME_IMAGE = "image"
"""Full-image pixel coordinates: origin at the top-left corner of the (EXIF-upright) image, x right, y down."""
FRAME_CAMERA = "camera_opencv"
"""Full-image camera frame with OpenCV axes: x right, y down, z forward (into the scene), metres."""
FRAME_SMPL_PARENT = "smpl_parent"
"""Each SMPL joint rotation is relative to its parent joint in the SMPL kinematic tree."""


def fixed_list(value_type: pa.DataType, size: int) -> pa.DataType:
    """Fixed-size list of non-null ``value_type`` elements, e.g. ``fixed_list(pa.float32(), 69)``."""
    return pa.list_(pa.field("element", value_type, nullable=False), size)


def fixed_matrix(value_type: pa.DataType, rows: int, cols: int) -> pa.DataType:
    """Row-major ``rows x cols`` matrix as a fixed list of ``rows`` fixed lists of ``cols`` elements."""
    return fixed_list(fixed_list(value_type, cols), rows)


def string_list() -> pa.DataType:
    """Variable-length list of non-null strings."""
    return pa.list_(pa.field("element", pa.string(), nullable=False))


def make_field(
    name: str,
    type_: pa.DataType,
    description: str,
    *,
    unit: str | None = None,
    frame: str | None = None,
    nullable: bool = False,
) -> pa.Field:
    """Build a field with ``description`` / ``unit`` / ``frame`` bytes metadata. Non-null unless stated."""
    metadata = {DESCRIPTION_KEY: description.encode()}
    if unit is not None:
        metadata[UNIT_KEY] = unit.encode()
    if frame is not None:
        metadata[FRAME_KEY] = frame.encode()
    return pa.field(name, type_, nullable=nullable, metadata=metadata)


def make_schema(name: str, fields: Sequence[pa.Field], extra_metadata: Mapping[str, str] | None = None) -> pa.Schema:
    """Build a schema carrying ``schema_name`` and ``schema_version`` (plus ``extra_metadata``)."""
    metadata = {SCHEMA_NAME_KEY: name.encode(), SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()}
    for key, value in (extra_metadata or {}).items():
        metadata[key.encode()] = value.encode()
    return pa.schema(fields, metadata=metadata)


def with_file_metadata(schema: pa.Schema, *, pipeline_version: str, config_hash: str) -> pa.Schema:
    """Return ``schema`` with the file-level metadata a Parquet writer must record.

    Args:
        schema: one of this package's schemas (keeps its ``schema_name`` / ``schema_version``).
        pipeline_version: version of the code that wrote the file (package version or git describe).
        config_hash: stable digest of the resolved job config.

    Raises:
        ValueError: if either value is empty or the schema has no ``schema_version``.
    """
    for key, value in (("pipeline_version", pipeline_version), ("config_hash", config_hash)):
        if not value:
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    metadata = dict(schema.metadata or {})
    if SCHEMA_VERSION_KEY not in metadata:
        raise ValueError("schema has no schema_version metadata; build it with schemas.metadata.make_schema")
    metadata[PIPELINE_VERSION_KEY] = pipeline_version.encode()
    metadata[CONFIG_HASH_KEY] = config_hash.encode()
    return schema.with_metadata(metadata)


def empty_table(schema: pa.Schema) -> pa.Table:
    """Zero-row table with ``schema`` (metadata kept), for shards that produce no rows."""
    return schema.empty_table()


def table_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Validate ``rows`` (one dict per row) against ``schema`` and build a table.

    Missing keys become null. Numpy arrays are accepted for list fields. NaN is a value, not a null.

    Raises:
        ValueError: naming the row index and field for an unknown key, a null or missing value in a
            non-nullable field (or list element), or a fixed-size list of the wrong length; naming the
            field when Arrow cannot convert a column.
    """
    names = set(schema.names)
    for index, row in enumerate(rows):
        unknown = sorted(set(row) - names)
        if unknown:
            raise ValueError(f"row {index}: field(s) {unknown} are not in schema {_schema_name(schema)!r}")
        for field in schema:
            _check_value(field.type, field.nullable, row.get(field.name), field.name, index)
    arrays = []
    for field in schema:
        values = [_to_python(row.get(field.name)) for row in rows]
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"field {field.name!r}: cannot convert to {field.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def _schema_name(schema: pa.Schema) -> str:
    return bytes((schema.metadata or {}).get(SCHEMA_NAME_KEY, b"?")).decode()


def _to_python(value: Any) -> Any:
    """Turn numpy arrays and scalars into Python objects (pyarrow rejects 2-D arrays in list cells)."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def _check_value(type_: pa.DataType, nullable: bool, value: Any, path: str, index: int) -> None:
    """Recursively check nulls and fixed-size list lengths; ``path`` names the field in messages."""
    if value is None:
        if not nullable:
            raise ValueError(f"row {index}: missing or null value for non-nullable field {path!r}")
        return
    if not pa.types.is_fixed_size_list(type_) and not pa.types.is_list(type_):
        return
    if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
        raise ValueError(f"row {index}: field {path!r} expects a list, got {type(value).__name__}")
    if pa.types.is_fixed_size_list(type_) and len(value) != type_.list_size:
        raise ValueError(f"row {index}: field {path!r} needs exactly {type_.list_size} elements, got {len(value)}")
    child = type_.value_field
    is_leaf = not (pa.types.is_fixed_size_list(child.type) or pa.types.is_list(child.type))
    if is_leaf and (child.nullable or all(element is not None for element in value)):
        return  # fast path: for leaf elements only a null matters; pa.array checks their types
    for position, element in enumerate(value):
        _check_value(child.type, child.nullable, element, f"{path}[{position}]", index)

"""Which annotation rows an export keeps: by tier, minimum confidence, occlusion level and a DuckDB expression.

Only ``annotations/`` (accepted rows) is read; ``rejected/`` rows never reach a training set. The structured
conditions are Arrow compute filters; ``select.where`` is run by DuckDB over the shard's Arrow table (zero-copy) and
returns row numbers, so the kept rows keep their (image key, person index) order and their exact Arrow types.

``select.where`` is user text that reaches a SQL engine, so it is held to **one expression** before anything runs
(:func:`parse_where`): DuckDB's own expression parser must read it as exactly one expression (``true); COPY ...``
is a syntax error there, ``a; b`` two statements), it may hold no ``;`` and no subquery (the only way an expression
reaches a table function such as ``read_text``), and it is then applied through the relational API
(``filter(SQLExpression)``), never pasted into a statement. The connection itself runs with external access off
(no files, no network, no extension downloads) and a locked configuration, as a second wall.
:func:`check_selection` parses the expression first, then runs every condition once on an empty table of the
labels' schema at launch, so a typo in a column name or in the SQL fails before any shard is read.
"""

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import ConfigError, SelectConfig


_ROW = "__export_row"
# External access off: no file or network reads or writes, no extension installs or loads; then locked, so nothing
# run on the connection can turn it back on.
_DUCKDB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}
# AST node classes an export filter never needs and that reach beyond the row: a subquery can scan a table function.
_REFUSED_NODES = {"SUBQUERY": "a subquery"}


def _connect() -> Any:
    import duckdb  # imported only when a WHERE is given: structured selections need no SQL engine

    return duckdb.connect(config=_DUCKDB_CONFIG)


def parse_where(where: str) -> str:
    """``where`` as DuckDB prints it back, once it is known to be one side-effect-free expression.

    Parsing runs no query on any data and touches no file: it is safe before every other launch check.

    Raises:
        ConfigError: one line naming ``select.where`` and what makes it unacceptable.
    """
    import duckdb

    refuse = f"select.where={where!r} "
    if ";" in where:
        raise ConfigError(refuse + "holds ';': it must be one SQL expression over the annotation columns")
    try:
        canonical = str(duckdb.SQLExpression(where))
    except duckdb.Error as exc:
        message = str(exc).splitlines()[0]
        raise ConfigError(refuse + f"is not one SQL expression ({message})") from None
    connection = _connect()
    try:
        tree = connection.execute("SELECT json_serialize_sql(?)", [f"SELECT {canonical}"]).fetchone()[0]
    finally:
        connection.close()
    document = json.loads(tree)
    if document.get("error"):
        raise ConfigError(refuse + f"is not one SQL expression ({document.get('error_message')})")
    found = _refused_node(document)
    if found:
        raise ConfigError(refuse + f"holds {found}: only expressions over the row's own columns are allowed")
    return canonical


def _refused_node(node: Any) -> str | None:
    """The description of the first refused AST node under ``node`` (DuckDB's JSON form of a statement), or None."""
    children: list[Any]
    if isinstance(node, dict):
        if node.get("class") in _REFUSED_NODES:
            return _REFUSED_NODES[node["class"]]
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _refused_node(child)
        if found:
            return found
    return None


def check_selection(select: SelectConfig, schema: pa.Schema) -> None:
    """Fails fast when the selection cannot run on labels of ``schema``.

    Raises:
        ConfigError: ``select.occlusion_levels`` on labels without ``occlusion_level`` (written before the
            occlusion columns existed), or a ``select.where`` that is not one expression (:func:`parse_where`) or
            that DuckDB cannot run on these columns.
    """
    if select.where:
        parse_where(select.where)  # before the expression meets even an empty table
    if select.occlusion_levels and "occlusion_level" not in schema.names:
        raise ConfigError(
            "select.occlusion_levels needs labels with an occlusion_level column; these labels predate it. "
            "Relabel (or refilter) them with this version, or drop select.occlusion_levels"
        )
    select_rows(schema.empty_table(), select)


def select_rows(table: pa.Table, select: SelectConfig) -> pa.Table:
    """The rows of ``table`` that meet every condition of ``select``, in their order.

    Raises:
        ConfigError: ``select.where`` is not one expression, or fails in DuckDB (message included).
    """
    mask = pa.array([True] * table.num_rows, type=pa.bool_())
    if select.tiers:
        mask = pc.and_(mask, pc.is_in(table["quality_tier"], value_set=pa.array(select.tiers)))
    if select.min_confidence is not None:
        mask = pc.and_(mask, pc.greater_equal(table["confidence"], pa.scalar(select.min_confidence, pa.float32())))
    if select.occlusion_levels:
        mask = pc.and_(mask, pc.is_in(table["occlusion_level"], value_set=pa.array(select.occlusion_levels)))
    kept = table.filter(pc.fill_null(mask, False))
    if select.where:
        kept = kept.take(_where_rows(kept, select.where))
    return kept


def _where_rows(table: pa.Table, where: str) -> pa.Array:
    """Row numbers of ``table`` where the expression ``where`` is true (parsed by :func:`parse_where` first)."""
    import duckdb

    expression = duckdb.SQLExpression(parse_where(where))
    numbered = table.append_column(_ROW, pa.array(range(table.num_rows), type=pa.int64()))
    connection = _connect()
    try:
        relation = connection.from_arrow(numbered).filter(expression).project(duckdb.ColumnExpression(_ROW))
        rows = [int(r[0]) for r in relation.order(_ROW).fetchall()]
    except duckdb.Error as exc:
        message = str(exc).splitlines()[0]
        raise ConfigError(f"select.where={where!r} does not run on the annotation columns: {message}") from None
    finally:
        connection.close()
    return pa.array(rows, type=pa.int64())

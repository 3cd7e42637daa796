"""Which annotation rows an export keeps: by tier, minimum confidence, occlusion level and a DuckDB ``WHERE``.

Only ``annotations/`` (accepted rows) is read; ``rejected/`` rows never reach a training set. The structured
conditions are Arrow compute filters; ``select.where`` is run by DuckDB over the shard's Arrow table (zero-copy) and
returns row numbers, so the kept rows keep their (image key, person index) order and their exact Arrow types.
:func:`check_selection` runs every condition once on an empty table of the labels' schema at launch, so a typo in
a column name or in the SQL fails before any shard is read.
"""

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import ConfigError, SelectConfig


_ROW = "__export_row"


def check_selection(select: SelectConfig, schema: pa.Schema) -> None:
    """Fails fast when the selection cannot run on labels of ``schema``.

    Raises:
        ConfigError: ``select.occlusion_levels`` on labels without ``occlusion_level`` (written before the
            occlusion columns existed), or a ``select.where`` DuckDB cannot run on these columns.
    """
    if select.occlusion_levels and "occlusion_level" not in schema.names:
        raise ConfigError(
            "select.occlusion_levels needs labels with an occlusion_level column; these labels predate it. "
            "Relabel (or refilter) them with this version, or drop select.occlusion_levels"
        )
    select_rows(schema.empty_table(), select)


def select_rows(table: pa.Table, select: SelectConfig) -> pa.Table:
    """The rows of ``table`` that meet every condition of ``select``, in their order.

    Raises:
        ConfigError: ``select.where`` fails in DuckDB (message included).
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
    """Row numbers of ``table`` where the DuckDB expression ``where`` is true."""
    import duckdb  # imported only when a WHERE is given: structured selections need no SQL engine

    numbered = table.append_column(_ROW, pa.array(range(table.num_rows), type=pa.int64()))
    connection = duckdb.connect()
    try:
        connection.register("labels", numbered)
        query = (
            f"SELECT {_ROW} FROM labels WHERE ({where}) ORDER BY {_ROW}"  # the user's own filter, on their own data
        )
        rows = [int(r[0]) for r in connection.execute(query).fetchall()]
    except duckdb.Error as exc:
        raise ConfigError(f"select.where={where!r} does not run on the annotation columns: {exc}") from None
    finally:
        connection.close()
    return pa.array(rows, type=pa.int64())

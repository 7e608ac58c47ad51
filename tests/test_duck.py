"""ctx.query and ctx.load_data on a fresh in-memory DuckDB per test."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from analysis.context import Context
from analysis.duck import LoadDataError, QueryResult


@pytest.fixture
def ctx() -> Iterator[Context]:
    context = Context()
    yield context
    context.close()


def test_query_binds_positional_and_named_parameters(ctx: Context) -> None:
    assert ctx.query("SELECT ? + 1 AS a, $2 AS b", [1, "x"]).rows == [{"a": 2, "b": "x"}]
    assert ctx.query("SELECT $n AS n", {"n": "'; DROP TABLE t; --"}).rows == [{"n": "'; DROP TABLE t; --"}]


def test_query_result_api(ctx: Context) -> None:
    result = ctx.query("SELECT range AS i, range * 2 AS j FROM range(3)")
    assert isinstance(result, QueryResult)
    assert result.columns == ["i", "j"]
    assert result.row_count == len(result) == 3
    assert list(result)[1] == {"i": 1, "j": 2}
    assert result.df()["j"].tolist() == [0, 2, 4]
    assert result.arrow().num_rows == 3
    assert result.pl()["i"].to_list() == [0, 1, 2]
    assert "3 rows × 2 columns" in result._repr_html_()


def test_query_logs_the_sql(ctx: Context, capsys: pytest.CaptureFixture[str]) -> None:
    ctx.query("SELECT\n   42")
    assert "[query:duckdb] SELECT 42\n" in capsys.readouterr().err


def test_load_dicts_unions_keys_and_infers_types_over_all_rows(
    ctx: Context, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"a": 1}, {"b": "x", "a": None}, {"c": 2.5, "a": 3, "when": dt.date(2024, 3, 1)}]
    assert ctx.load_data("t", rows) == 3
    assert "[load_data] Loaded 3 rows into t" in capsys.readouterr().err
    described = ctx.query("DESCRIBE t").rows
    assert [(r["column_name"], r["column_type"]) for r in described] == [
        ("a", "BIGINT"),
        ("b", "VARCHAR"),
        ("c", "DOUBLE"),
        ("when", "DATE"),
    ]
    assert ctx.query("SELECT count(*) AS n FROM t WHERE a IS NULL").rows == [{"n": 1}]


def test_load_mixed_types_names_the_column(ctx: Context) -> None:
    with pytest.raises(LoadDataError, match="column 'a'"):
        ctx.load_data("t", [{"a": 1}, {"a": "one"}])


@pytest.mark.parametrize(
    "make",
    [
        lambda: pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        lambda: pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        lambda: pa.table({"a": [1, 2], "b": ["x", "y"]}),
        lambda: pa.RecordBatchReader.from_batches(
            pa.schema([("a", pa.int64()), ("b", pa.string())]),
            [pa.record_batch({"a": [1], "b": ["x"]}), pa.record_batch({"a": [2], "b": ["y"]})],
        ),
    ],
    ids=["pandas", "polars", "arrow", "reader"],
)
def test_load_frames_and_arrow(ctx: Context, make: object) -> None:
    assert ctx.load_data("t", make()) == 2  # type: ignore[operator]
    assert ctx.query("SELECT b FROM t ORDER BY a").rows == [{"b": "x"}, {"b": "y"}]


def test_load_a_query_result_and_append(ctx: Context) -> None:
    ctx.load_data("t", ctx.query("SELECT 1 AS a, 'x' AS b"))
    assert ctx.load_data("t", [{"b": "y", "a": 2}], mode="append") == 1
    assert ctx.query("SELECT a, b FROM t ORDER BY a").rows == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert ctx.load_data("fresh", [{"a": 1}], mode="append") == 1  # append creates a missing table


def test_load_a_relation_of_the_connection(ctx: Context, tmp_path: Path) -> None:
    """What a cached result's Parquet file is loaded as (README, "Result cache")."""
    ctx.duckdb.execute(f"COPY (SELECT range AS n FROM range(5)) TO '{tmp_path / 'n.parquet'}'")
    assert ctx.load_data("t", ctx.duckdb.read_parquet(str(tmp_path / "n.parquet"))) == 5
    assert ctx.query("SELECT sum(n) AS s FROM t").rows == [{"s": 10}]


def test_table_names_are_identifiers_never_sql(ctx: Context) -> None:
    ctx.load_data("keep", [{"a": 1}])
    evil = 'x" AS SELECT 1; DROP TABLE keep; --'
    ctx.load_data(evil, [{"a": 2}])
    assert ctx.query(f'SELECT a FROM "{evil.replace(chr(34), chr(34) * 2)}"').rows == [{"a": 2}]
    assert ctx.query("SELECT a FROM keep").rows == [{"a": 1}]


@pytest.mark.parametrize(
    ("table", "data", "mode", "message"),
    [
        ("", [{"a": 1}], "replace", "non-empty"),
        ("t", [{"a": 1}], "upsert", "mode 'upsert'"),
        ("t", [], "replace", "empty list"),
        ("t", [1, 2], "replace", "row 0 is int"),
        ("t", "a,b\n1,2", "replace", "got str"),
    ],
)
def test_load_data_rejects_bad_input_clearly(
    ctx: Context, table: str, data: object, mode: str, message: str
) -> None:
    with pytest.raises(LoadDataError, match=message):
        ctx.load_data(table, data, mode=mode)


def test_context_close_is_idempotent() -> None:
    context = Context()
    context.query("SELECT 1")
    context.close()
    context.close()


def test_df_types_decimals_and_dates_as_duckdb_does(ctx: Context) -> None:
    frame = ctx.query("SELECT 1.25::DECIMAL(10, 2) AS amount, DATE '2024-03-01' AS day, 'x' AS s").df()
    assert str(frame["amount"].dtype) == "float64" and frame["amount"][0] == 1.25
    assert str(frame["day"].dtype).startswith("datetime64")
    assert frame["s"][0] == "x"


@pytest.mark.parametrize(
    "rows",
    [
        [{"a": 1, "b": "x"}, {"a": 2, "c": 2.5}],  # as many keys as the first row, not the same ones
        [{"a": 1, "b": "x"}, {"b": "y", "a": 2, "c": 2.5}],  # a key the first row lacks
        [{"a": 1, "b": "x", "c": None}, {"a": 2, "b": "y"}],  # fewer keys
    ],
)
def test_load_dicts_with_differing_keys_keeps_every_column(
    ctx: Context, rows: list[dict[str, object]]
) -> None:
    assert ctx.load_data("t", rows) == 2
    loaded = ctx.query("SELECT * FROM t ORDER BY a").rows
    assert loaded == [{k: r.get(k) for k in ("a", "b", "c")} for r in rows]


#: DuckDB types (as SQL expressions) whose .df() dtypes QueryResult.df() must match. Each is
#: selected twice: without NULLs, and with a NULL in the last row (nullable dtypes differ).
DUCKDB_TYPES = {
    "BOOLEAN": "true",
    "TINYINT": "1::TINYINT",
    "SMALLINT": "1::SMALLINT",
    "INTEGER": "1::INTEGER",
    "BIGINT": "1::BIGINT",
    "HUGEINT": "1::HUGEINT",
    "UTINYINT": "1::UTINYINT",
    "USMALLINT": "1::USMALLINT",
    "UINTEGER": "1::UINTEGER",
    "UBIGINT": "1::UBIGINT",
    "FLOAT": "1.5::FLOAT",
    "DOUBLE": "1.5::DOUBLE",
    "DECIMAL(4,1)": "1.2::DECIMAL(4, 1)",
    "DECIMAL(10,2)": "1.25::DECIMAL(10, 2)",
    "DECIMAL(38,10)": "1.25::DECIMAL(38, 10)",
    "VARCHAR": "'x'",
    "BLOB": "'x'::BLOB",
    "DATE": "DATE '2024-03-01'",
    "TIME": "TIME '08:15:00.5'",
    "TIMESTAMP": "TIMESTAMP '2024-03-01 12:30:00.25'",
    "TIMESTAMP_S": "TIMESTAMP_S '2024-03-01 12:30:00'",
    "TIMESTAMP_MS": "TIMESTAMP_MS '2024-03-01 12:30:00.25'",
    "TIMESTAMP_NS": "TIMESTAMP_NS '2024-03-01 12:30:00.000000001'",
    "TIMESTAMPTZ": "TIMESTAMPTZ '2024-03-01 12:30:00+02'",
    "INTERVAL": "INTERVAL 1 MONTH + INTERVAL 3 DAY + INTERVAL 1500 MILLISECOND",
    "UUID": "'5f3c6a2e-0b1d-4e8f-9a7c-2d4b6e8f0a1c'::UUID",
    "INTEGER[]": "[1, 2]",
    "INTEGER[2]": "[1, 2]::INTEGER[2]",
    "STRUCT": "{'a': 1}",
    "MAP": "MAP {'a': 1}",
    "ENUM": "'a'::ENUM('a', 'b')",
    "JSON": "'{}'::JSON",
    "BIT": "'101'::BIT",
}


@pytest.mark.parametrize("nulls", [False, True], ids=["no-nulls", "with-null"])
def test_df_matches_duckdbs_own_df_for_every_type(ctx: Context, nulls: bool) -> None:
    columns = ", ".join(
        f'CASE WHEN range = 2 AND {str(nulls).lower()} THEN NULL ELSE {expr} END AS "{name}"'
        for name, expr in DUCKDB_TYPES.items()
    )
    sql = f"SELECT {columns} FROM range(3)"
    ours = ctx.query(sql).df()
    theirs = ctx.duckdb.sql(sql).df()
    assert dict(ours.dtypes) == dict(theirs.dtypes)
    pd.testing.assert_frame_equal(ours.head(2), theirs.head(2))  # the values too
    assert ours.isna().equals(theirs.isna())  # NULL is missing in both (None or pd.NA for objects)


def test_df_speaks_for_types_duckdbs_df_refuses(ctx: Context) -> None:
    import duckdb

    for expr in ("1::UHUGEINT", "TIMETZ '08:15:00+01'", "1::VARINT"):
        with pytest.raises(duckdb.NotImplementedException):
            ctx.duckdb.sql(f"SELECT {expr} AS c").df()
        assert len(ctx.query(f"SELECT {expr} AS c").df()) == 1

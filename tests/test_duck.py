"""ctx.query and ctx.load_data on a fresh in-memory DuckDB per test."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

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

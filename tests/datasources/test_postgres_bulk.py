"""PostgreSQL ``into=``: NUMERIC columns formatted as text by the server (README, "Datasources").

The bulk path describes a statement with NUMERIC columns and runs it as
``SELECT c0::text ... FROM (statement) AS q(c0, ...)``, so PostgreSQL formats the numbers on its
own core instead of the driver decoding them. What DuckDB gets must not change: names, order,
types, values, NULLs; and a statement that cannot be wrapped runs as it is, once.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from analysis.errors import DatasourceError

from .conftest import servers, source_config


def _server_saw(duck: Any, table: str) -> str:
    """The statement the server ran, from a ``current_query()`` column named ``q``."""
    ((text,),) = duck.connection.sql(f"SELECT q FROM {table} LIMIT 1").fetchall()
    return str(text)


def test_numeric_columns_are_formatted_by_the_server_and_keep_type_value_null_and_order(
    pg: Any, pg_server: Any, duck: Any
) -> None:
    pg_server.psql(
        """DROP TABLE IF EXISTS numbers;
        CREATE TABLE numbers (k int, n numeric(10,2), wide numeric(30,10), free numeric, i int);
        INSERT INTO numbers VALUES (1, -0.01, 12345678901234567890.0123456789, 'NaN', 10),
            (2, 99999999.99, NULL, 'Infinity', NULL), (3, NULL, -1.5, 2.5, 30);""",
        database=servers.DATABASE,
        user=servers.USER,
    )
    sql = """
        SELECT n, n AS "dup ""n"" 2", wide, free, i, current_query() AS q FROM numbers
        ORDER BY k DESC -- a trailing comment, as users write them
    """
    assert pg.query_into(duck, "t", sql, None, timeout_s=10) == 3
    rel = duck.connection.sql("SELECT * EXCLUDE (q) FROM t")
    assert [(c, str(t)) for c, t in zip(rel.columns, rel.types, strict=True)] == [
        ("n", "DECIMAL(10,2)"), ('dup "n" 2', "DECIMAL(10,2)"), ("wide", "DECIMAL(30,10)"),
        ("free", "DOUBLE"), ("i", "INTEGER"),
    ]  # fmt: skip
    rows = rel.fetchall()
    assert rows[0] == (None, None, Decimal("-1.5000000000"), 2.5, 30)
    assert rows[1][:2] == (Decimal("99999999.99"), Decimal("99999999.99")) and rows[1][3] == float("inf")
    assert rows[1][2] is None and rows[1][4] is None
    assert rows[2][:3] == (Decimal("-0.01"), Decimal("-0.01"), Decimal("12345678901234567890.0123456789"))
    assert rows[2][3] != rows[2][3] and rows[2][4] == 10  # NaN
    assert "::text" in _server_saw(duck, "t")  # the server formatted the numbers


def test_numeric_as_text_with_bound_parameters(pg: Any, duck: Any) -> None:
    sql = "SELECT x::numeric(6,2) AS n, current_query() AS q FROM generate_series(1, ?) AS x;"
    assert pg.query_into(duck, "t", sql, [4], timeout_s=10) == 4
    assert duck.connection.sql("SELECT sum(n)::VARCHAR, typeof(n) FROM t GROUP BY ALL").fetchall() == [
        ("10.00", "DECIMAL(6,2)")
    ]
    assert "::text" in _server_saw(duck, "t")


def test_a_statement_that_cannot_be_wrapped_runs_as_it_is_once(pg_server: Any, duck: Any) -> None:
    from analysis.sources.postgres import PostgresDatasource

    source = PostgresDatasource("rw", source_config("postgres", pg_server, read_only=False))
    try:
        source.query("DROP TABLE IF EXISTS ledger", None, timeout_s=10)
        source.query("CREATE TABLE ledger (v numeric(6,2))", None, timeout_s=10)
        # a data-modifying WITH must stay at the top level: it cannot be put in a subquery
        sql = "WITH i AS (INSERT INTO ledger VALUES (2.5) RETURNING v) SELECT v, current_query() AS q FROM i"
        assert source.query_into(duck, "t", sql, None, timeout_s=10) == 1
        loaded = duck.connection.sql("SELECT v::VARCHAR, typeof(v) FROM t").fetchall()
        assert loaded == [("2.50", "DECIMAL(6,2)")]
        assert "::text" not in _server_saw(duck, "t")
        assert source.query("SELECT count(*) AS n FROM ledger", None, timeout_s=10).to_pylist() == [{"n": 1}]
    finally:
        source.close()


def test_a_statement_ending_in_a_comment_loads(pg: Any, duck: Any) -> None:
    assert pg.query_into(duck, "t", "SELECT 1 AS n -- the last line is a comment", None, timeout_s=10) == 1
    assert duck.connection.sql("SELECT n FROM t").fetchall() == [(1,)]


def test_errors_and_time_limits_are_unchanged_by_the_describe(pg: Any, duck: Any) -> None:
    with pytest.raises(DatasourceError, match="nosuch"):
        pg.query_into(duck, "t", "SELECT nosuch, 1.5::numeric AS n", None, timeout_s=10)
    with pytest.raises(DatasourceError, match="division by zero"):
        pg.query_into(duck, "t", "SELECT 1.5::numeric / 0 AS n", None, timeout_s=10)
    with pytest.raises(DatasourceError, match=r"time limit of 0\.5 s"):
        pg.query_into(duck, "t", "SELECT 1.5::numeric AS n, pg_sleep(3)", None, timeout_s=0.5)
    assert pg.query_into(duck, "t", "SELECT 2.5::numeric(3,1) AS n", None, timeout_s=10) == 1  # still usable

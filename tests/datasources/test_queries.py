"""Real servers: type round trips through ``rows`` and ``into=``, placeholders, binding, read-only."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from analysis.errors import DatasourceError

from .conftest import servers, source_config

UTC = dt.UTC
U = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
EXPECTED = {
    "amount": Decimal("12345678.12"),
    "local_ts": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    "utc_ts": dt.datetime(2024, 1, 2, 1, 4, 5, 500000, tzinfo=UTC),
    "day": dt.date(2024, 1, 2),
    "clock": dt.time(12, 34, 56, 789000),
    "blob": b"\xde\xad\xbe\xef\x00",
}


@pytest.fixture(scope="module")
def pg_types(pg_server: Any) -> str:
    pg_server.psql(
        """
        DROP TABLE IF EXISTS types;
        CREATE TABLE types (id int, amount numeric(10,2), local_ts timestamp, utc_ts timestamptz,
            day date, clock time, uid uuid, doc json, docb jsonb, blob bytea, ints int[], words text[],
            price_list numeric(6,2)[]);
        INSERT INTO types VALUES (1, 12345678.12, '2024-01-02 03:04:05.123456',
            '2024-01-02 03:04:05.5+02',
            '2024-01-02', '12:34:56.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}',
            '{"b": null}',
            '\\xdeadbeef00', ARRAY[1, NULL, 3], ARRAY['x', 'y'], ARRAY[1.50, 2.25]);
        INSERT INTO types (id) VALUES (2);
        """,
        database=servers.DATABASE,
        user=servers.USER,
    )
    return "types"


@pytest.fixture(scope="module")
def my_types(my_server: Any) -> str:
    my_server.sql(
        """
        DROP TABLE IF EXISTS types;
        CREATE TABLE types (id int, amount decimal(10,2), local_ts datetime(6), utc_ts timestamp(6) NULL,
            day date, clock time(6), uid uuid, doc json, `blob` blob);
        SET time_zone = '+00:00';
        INSERT INTO types VALUES (1, 12345678.12, '2024-01-02 03:04:05.123456', '2024-01-02 01:04:05.5',
            '2024-01-02', '12:34:56.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}',
            X'DEADBEEF00');
        INSERT INTO types (id) VALUES (2);
        """,
        database=servers.DATABASE,
    )
    return "types"


def _check_common(row: dict[str, Any]) -> None:
    for key, value in EXPECTED.items():
        assert row[key] == value, key


def test_postgres_types_through_rows(pg: Any, pg_types: str) -> None:
    table = pg.query(f"SELECT * FROM {pg_types} ORDER BY id", None, timeout_s=10)
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types["amount"] == pa.decimal128(10, 2)
    assert types["local_ts"] == pa.timestamp("us")
    assert types["utc_ts"] == pa.timestamp("us", tz="UTC")
    assert types["day"] == pa.date32() and types["clock"] == pa.time64("us")
    assert types["uid"] == pa.uuid() and types["doc"] == pa.json_() and types["blob"] == pa.binary()
    assert types["ints"] == pa.list_(pa.int32()) and types["words"] == pa.list_(pa.string())
    first, empty = table.to_pylist()
    _check_common(first)
    assert first["uid"] == U
    assert first["doc"] == '{"a": [1, 2]}' and first["docb"] == '{"b": null}'
    assert first["ints"] == [1, None, 3] and first["words"] == ["x", "y"]
    assert first["price_list"] == [Decimal("1.5"), Decimal("2.25")]
    assert all(v is None for k, v in empty.items() if k != "id")


def test_postgres_types_through_into(pg: Any, pg_types: str, duck: Any) -> None:
    assert pg.query_into(duck, "t", f"SELECT * FROM {pg_types} ORDER BY id", None, timeout_s=10) == 2
    rel = duck.connection.sql("SELECT * FROM t ORDER BY id")
    types = dict(zip(rel.columns, map(str, rel.types), strict=True))
    assert types == {
        "id": "INTEGER", "amount": "DECIMAL(10,2)", "local_ts": "TIMESTAMP",
        "utc_ts": "TIMESTAMP WITH TIME ZONE", "day": "DATE", "clock": "TIME", "uid": "UUID",
        "doc": "JSON", "docb": "JSON", "blob": "BLOB",
        "ints": "INTEGER[]", "words": "VARCHAR[]", "price_list": "DECIMAL(38,10)[]",
    }  # fmt: skip
    first = dict(zip(rel.columns, rel.fetchall()[0], strict=True))
    _check_common(first)
    assert first["uid"] == U and first["ints"] == [1, None, 3] and first["words"] == ["x", "y"]
    assert first["doc"] == '{"a": [1, 2]}'


def test_mysql_types_through_rows(my: Any, my_types: str) -> None:
    table = my.query(f"SELECT * FROM {my_types} ORDER BY id", None, timeout_s=10)
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types["amount"] == pa.decimal128(10, 2)
    assert types["local_ts"] == pa.timestamp("us")
    assert types["utc_ts"] == pa.timestamp("us", tz="UTC")
    assert types["day"] == pa.date32() and types["clock"] == pa.time64("us") and types["blob"] == pa.binary()
    first, empty = table.to_pylist()
    _check_common(first)
    assert first["uid"] == str(U) and first["doc"] == '{"a": [1, 2]}'
    assert all(v is None for k, v in empty.items() if k != "id")


def test_mysql_types_through_into(my: Any, my_types: str, duck: Any) -> None:
    assert my.query_into(duck, "t", f"SELECT * FROM {my_types} ORDER BY id", None, timeout_s=10) == 2
    rel = duck.connection.sql("SELECT * FROM t ORDER BY id")
    types = dict(zip(rel.columns, map(str, rel.types), strict=True))
    assert types == {
        "id": "INTEGER", "amount": "DECIMAL(10,2)", "local_ts": "TIMESTAMP",
        "utc_ts": "TIMESTAMP WITH TIME ZONE", "day": "DATE", "clock": "TIME", "uid": "VARCHAR",
        "doc": "VARCHAR", "blob": "BLOB",
    }  # fmt: skip
    first = dict(zip(rel.columns, rel.fetchall()[0], strict=True))
    _check_common(first)
    assert first["uid"] == str(U)


def test_wide_mysql_decimal_keeps_every_digit_through_into(my: Any, duck: Any) -> None:
    sql = "SELECT CAST('12345678901234567890.0123456789' AS DECIMAL(30,10)) AS big"
    my.query_into(duck, "wide", sql, None, timeout_s=10)
    assert duck.connection.sql("SELECT big::VARCHAR FROM wide").fetchall() == [
        ("12345678901234567890.0123456789",)
    ]


INJECTION = "'; DROP TABLE victims; --"


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_placeholders_bind_values_and_injection_comes_back_unchanged(
    kind: str, request: pytest.FixtureRequest, duck: Any
) -> None:
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    source = request.getfixturevalue("pg" if kind == "postgres" else "my")
    create = "CREATE TABLE IF NOT EXISTS victims (id int)"
    if kind == "postgres":
        server.psql(create, database=servers.DATABASE, user=servers.USER)
    else:
        server.sql(create, database=servers.DATABASE)
    native = "SELECT $1 AS a, $2 AS b" if kind == "postgres" else "SELECT %s AS a, %s AS b"
    for sql in ("SELECT ? AS a, ? AS b, '?' AS q", native):
        row = source.query(sql, [INJECTION, 42], timeout_s=10).to_pylist()[0]
        assert row["a"] == INJECTION and int(row["b"]) == 42
        assert row.get("q", "?") == "?"
    count = source.query_into(duck, "inj", "SELECT ? AS a", [INJECTION], timeout_s=10)
    assert count == 1 and duck.connection.sql("SELECT a FROM inj").fetchall() == [(INJECTION,)]
    assert source.query("SELECT count(*) AS n FROM victims", None, timeout_s=10).to_pylist() == [{"n": 0}]


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
@pytest.mark.parametrize("path", ["rows", "into"])
def test_read_only_refuses_writes_and_nothing_changes(
    kind: str, path: str, request: pytest.FixtureRequest, duck: Any
) -> None:
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    source = request.getfixturevalue("pg" if kind == "postgres" else "my")
    setup = "DROP TABLE IF EXISTS guarded; CREATE TABLE guarded (id int); INSERT INTO guarded VALUES (1);"
    if kind == "postgres":
        server.psql(setup, database=servers.DATABASE, user=servers.USER)
    else:
        server.sql(setup, database=servers.DATABASE)
    writes = ["INSERT INTO guarded VALUES (2)", "DROP TABLE guarded", "CREATE TABLE intruder (id int)"]
    if kind == "postgres":
        writes.append("WITH d AS (DELETE FROM guarded RETURNING id) SELECT id FROM d")
    for sql in writes:
        with pytest.raises(DatasourceError, match=rf"Datasource '{source.name}' \({kind}\): .*read-only"):
            if path == "rows":
                source.query(sql, None, timeout_s=10)
            else:
                source.query_into(duck, "w", sql, None, timeout_s=10)
    assert source.query("SELECT id FROM guarded", None, timeout_s=10).to_pylist() == [{"id": 1}]
    tables = (
        server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'intruder'", database=servers.DATABASE)
        if kind == "postgres"
        else server.sql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'intruder'")
    )
    assert tables.strip() == "0"


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_read_write_datasource_can_write(kind: str, request: pytest.FixtureRequest) -> None:
    from analysis.sources.mysql import MySQLDatasource
    from analysis.sources.postgres import PostgresDatasource

    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    cls = PostgresDatasource if kind == "postgres" else MySQLDatasource
    source = cls("rw", source_config(kind, server, read_only=False))
    try:
        source.query("CREATE TABLE IF NOT EXISTS written (id int)", None, timeout_s=10)
        source.query("INSERT INTO written VALUES (?)", [7], timeout_s=10)
        assert source.query("SELECT id FROM written", None, timeout_s=10).to_pylist() == [{"id": 7}]
    finally:
        source.close()


def test_connection_is_reused_within_a_job_and_closed_at_close(pg: Any, my: Any) -> None:
    pid = pg.query("SELECT pg_backend_pid() AS p", None, timeout_s=5).to_pylist()[0]["p"]
    assert pg.query("SELECT pg_backend_pid() AS p", None, timeout_s=5).to_pylist()[0]["p"] == pid
    cid = my.query("SELECT CONNECTION_ID() AS c", None, timeout_s=5).to_pylist()[0]["c"]
    assert my.query("SELECT CONNECTION_ID() AS c", None, timeout_s=5).to_pylist()[0]["c"] == cid
    pg.close()
    my.close()
    pg.close()  # twice is harmless


def _spy(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[str]:
    calls: list[str] = []
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


def test_mysql_bulk_path_reads_plain_columns_through_odbc_with_bound_parameters(
    my: Any, my_types: str, duck: Any, odbc_driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis.sources.mysql import MySQLDatasource

    odbc = _spy(monkeypatch, MySQLDatasource, "_load_odbc")
    sql = f"SELECT id, amount, local_ts, utc_ts, day, ? AS tag FROM {my_types} WHERE id = ? OR day > ?"
    count = my.query_into(duck, "plain", sql, [INJECTION, 1, dt.date(2030, 1, 1)], timeout_s=10)
    assert count == 1 and odbc == ["_load_odbc"]
    rel = duck.connection.sql("SELECT * FROM plain")
    assert [str(t) for t in rel.types] == [
        "INTEGER", "DECIMAL(10,2)", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE", "VARCHAR",
    ]  # fmt: skip
    row = dict(zip(rel.columns, rel.fetchall()[0], strict=True))
    _check_common({**EXPECTED, **row, "clock": EXPECTED["clock"], "blob": EXPECTED["blob"]})
    assert row["tag"] == INJECTION


def test_mysql_bulk_path_takes_connectorx_for_other_columns_and_the_driver_for_other_values(
    my: Any, my_types: str, duck: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis.sources.mysql import MySQLDatasource

    cx = _spy(monkeypatch, MySQLDatasource, "_read_columnar")
    odbc = _spy(monkeypatch, MySQLDatasource, "_load_odbc")
    assert my.query_into(duck, "b", f"SELECT id, `blob` FROM {my_types}", None, timeout_s=10) == 2
    assert cx == ["_read_columnar"] and not odbc
    # bytes cannot travel as ODBC text and connectorx binds nothing: the driver's exact path
    count = my.query_into(duck, "p", "SELECT ? AS raw", [b"\x00\xff"], timeout_s=10)
    assert count == 1 and cx == ["_read_columnar"] and not odbc
    assert duck.connection.sql("SELECT raw FROM p").fetchall() == [(b"\x00\xff",)]


def test_mysql_bulk_path_without_the_odbc_driver_falls_back_to_connectorx(
    my_server: Any, duck: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis.sources.mysql import MySQLDatasource

    source = MySQLDatasource("shop", source_config("mysql", my_server, odbc_driver="No Such Driver"))
    cx = _spy(monkeypatch, MySQLDatasource, "_read_columnar")
    try:
        assert source.query_into(duck, "f", "SELECT 1.50 AS x", None, timeout_s=10) == 1
        assert source.query_into(duck, "f", "SELECT 2.50 AS x", None, timeout_s=10) == 1
    finally:
        source.close()
    assert cx == ["_read_columnar", "_read_columnar"]
    assert duck.connection.sql("SELECT x FROM f").fetchall() == [(Decimal("2.50"),)]


def test_mysql_prepared_statements_decode_every_column_like_the_text_protocol(
    my: Any, my_server: Any
) -> None:
    my_server.sql(
        "DROP TABLE IF EXISTS yb; CREATE TABLE yb (y YEAR, b BIT(8), t TIME, s VARCHAR(5));"
        "INSERT INTO yb VALUES (2024, b'101', '-01:00:00', 'x')",
        database=servers.DATABASE,
    )
    expected = [{"y": 2024, "b": 5, "t": dt.timedelta(hours=-1), "s": "x"}]
    assert my.query("SELECT y, b, t, s FROM yb", None, timeout_s=5).to_pylist() == expected  # text
    assert my.query("SELECT y, b, t, s FROM yb WHERE s = ?", ["x"], timeout_s=5).to_pylist() == expected
    assert my.query("SELECT 1 AS one", None, timeout_s=5).to_pylist() == [{"one": 1}]  # still in sync

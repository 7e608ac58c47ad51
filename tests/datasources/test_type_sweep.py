"""Every database type has one DuckDB type, whichever path reads it (README, "Database types").

A column's type must depend on its server type only: not on its values, not on its neighbours
(which pick the MySQL bulk reader), not on the parameters (which may send ``into=`` down the
driver's bound path). Each type is read through every path and the DuckDB types and values are
compared; the expected type is the README's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import servers, source_config
from .test_jobs import job_config  # noqa: F401 - the fixture of the job test below

#: column -> (MariaDB type, a value, the DuckDB type every path must give)
MARIADB: dict[str, tuple[str, str, str]] = {
    "ti": ("TINYINT", "-1", "TINYINT"),
    "uti": ("TINYINT UNSIGNED", "255", "UTINYINT"),
    "si": ("SMALLINT", "-2", "SMALLINT"),
    "usi": ("SMALLINT UNSIGNED", "65535", "USMALLINT"),
    "mi": ("MEDIUMINT", "-3", "INTEGER"),
    "umi": ("MEDIUMINT UNSIGNED", "16777215", "UINTEGER"),
    "i": ("INT", "-4", "INTEGER"),
    "ui": ("INT UNSIGNED", "4294967295", "UINTEGER"),
    "bi": ("BIGINT", "-5", "BIGINT"),
    "ubi": ("BIGINT UNSIGNED", "18446744073709551615", "UBIGINT"),
    "f": ("FLOAT", "1.5", "FLOAT"),
    "d": ("DOUBLE", "2.5", "DOUBLE"),
    "dec": ("DECIMAL(10,2)", "3.25", "DECIMAL(10,2)"),
    "dec30": ("DECIMAL(30,10)", "12345678901234567890.0123456789", "DECIMAL(30,10)"),
    "day": ("DATE", "'2024-01-02'", "DATE"),
    "tm": ("TIME", "'12:34:56'", "TIME"),
    "tm6": ("TIME(6)", "'12:34:56.5'", "TIME"),
    "dt": ("DATETIME", "'2024-01-02 03:04:05'", "TIMESTAMP"),
    "dt3": ("DATETIME(3)", "'2024-01-02 03:04:05.123'", "TIMESTAMP"),
    "dt6": ("DATETIME(6)", "'2024-01-02 03:04:05.123456'", "TIMESTAMP"),
    "ts": ("TIMESTAMP NULL", "'2024-01-02 03:04:05'", "TIMESTAMP WITH TIME ZONE"),
    "ts3": ("TIMESTAMP(3) NULL", "'2024-01-02 03:04:05.123'", "TIMESTAMP WITH TIME ZONE"),
    "ts6": ("TIMESTAMP(6) NULL", "'2024-01-02 03:04:05.123456'", "TIMESTAMP WITH TIME ZONE"),
    "y": ("YEAR", "2024", "SMALLINT"),
    "c": ("CHAR(5)", "'ab'", "VARCHAR"),
    "vc": ("VARCHAR(10)", "'abc'", "VARCHAR"),
    "tx": ("TEXT", "'long'", "VARCHAR"),
    "en": ("ENUM('a','b')", "'b'", "VARCHAR"),
    "st": ("SET('b','a')", "'a,b'", "VARCHAR"),
    "bo": ("BOOLEAN", "1", "TINYINT"),
    "b8": ("BIT(8)", "b'101'", "UBIGINT"),
    "b64": ("BIT(64)", "b'1111111111111111111111111111111111111111111111111111111111111111'", "UBIGINT"),
    "bl": ("BLOB", "X'00FF'", "BLOB"),
    "bn": ("BINARY(4)", "X'01020304'", "BLOB"),
    "vb": ("VARBINARY(10)", "X'0102'", "BLOB"),
    "js": ("JSON", "'{\"a\": 1}'", "VARCHAR"),
    "uu": ("UUID", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "VARCHAR"),
}

#: column -> (PostgreSQL type, a value, the DuckDB type every path must give)
POSTGRES: dict[str, tuple[str, str, str]] = {
    "si": ("smallint", "-1", "SMALLINT"),
    "i": ("integer", "-2", "INTEGER"),
    "bi": ("bigint", "-3", "BIGINT"),
    "r": ("real", "1.5", "FLOAT"),
    "d": ("double precision", "2.5", "DOUBLE"),
    "n": ("numeric(10,2)", "3.25", "DECIMAL(10,2)"),
    "n30": ("numeric(30,10)", "12345678901234567890.0123456789", "DECIMAL(30,10)"),
    "t": ("text", "'x'", "VARCHAR"),
    "vc": ("varchar(5)", "'ab'", "VARCHAR"),
    "ch": ("char(3)", "'ab'", "VARCHAR"),
    "nm": ("name", "'nm'", "VARCHAR"),
    "b": ("boolean", "true", "BOOLEAN"),
    "day": ("date", "'2024-01-02'", "DATE"),
    "tm": ("time", "'12:34:56.5'", "TIME"),
    "tm0": ("time(0)", "'12:34:56'", "TIME"),
    "ts": ("timestamp", "'2024-01-02 03:04:05.123456'", "TIMESTAMP"),
    "ts0": ("timestamp(0)", "'2024-01-02 03:04:05'", "TIMESTAMP"),
    "ts3": ("timestamp(3)", "'2024-01-02 03:04:05.123'", "TIMESTAMP"),
    "tz": ("timestamptz", "'2024-01-02 03:04:05+02'", "TIMESTAMP WITH TIME ZONE"),
    "tz0": ("timestamptz(0)", "'2024-01-02 03:04:05+02'", "TIMESTAMP WITH TIME ZONE"),
    "iv": ("interval", "'2 hours 3 minutes'", "INTERVAL"),
    "u": ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "UUID"),
    "j": ("json", "'{\"a\": 1}'", "JSON"),
    "jb": ("jsonb", "'{\"a\": 1}'", "JSON"),
    "by": ("bytea", "'\\xdead'", "BLOB"),
    "oid": ("oid", "4294967295", "BIGINT"),
    "ai": ("int[]", "ARRAY[1, NULL, 2]", "INTEGER[]"),
    "at": ("text[]", "ARRAY['a']", "VARCHAR[]"),
    "an": ("numeric(6,2)[]", "ARRAY[1.5]", "DECIMAL(38,10)[]"),
    "ad": ("date[]", "ARRAY['2024-01-02'::date]", "DATE[]"),
    "ab": ("bool[]", "ARRAY[true]", "BOOLEAN[]"),
}


def _create(columns: dict[str, tuple[str, str, str]], quote: str) -> list[str]:
    names = ", ".join(f"{quote}{k}{quote} {t}" for k, (t, _, _) in columns.items())
    values = ", ".join(v for _, v, _ in columns.values())
    return [
        "DROP TABLE IF EXISTS sweep",
        f"CREATE TABLE sweep ({names})",
        f"INSERT INTO sweep VALUES ({values})",
    ]


def _read(duck: Any, table: str) -> tuple[str, str | None]:
    """DuckDB's type of ``table``'s only column and its non-NULL value as text."""
    ((typ,),) = duck.connection.sql(f"SELECT typeof(x) FROM {table} LIMIT 1").fetchall()
    rows = duck.connection.sql(f"SELECT x::VARCHAR FROM {table} WHERE x IS NOT NULL").fetchall()
    return str(typ), rows[0][0] if rows else None


def _sweep(paths: dict[str, Any], columns: dict[str, tuple[str, str, str]], duck: Any) -> list[str]:
    """Every path for every column; the differences, as lines naming the column and the path."""
    problems = []
    for name, (sql_type, _, expected) in columns.items():
        seen = {}
        for path, load in paths.items():
            load(name)
            seen[path] = _read(duck, "got")
        values = {value for _, value in seen.values()}
        wrong = {path: typ for path, (typ, _) in seen.items() if typ != expected}
        if wrong or len(values) != 1 or None in values:
            problems.append(f"{name} {sql_type}: expected {expected}, got {seen}")
    return problems


@pytest.fixture
def my_sweep(my_server: Any) -> Iterator[tuple[Any, Any]]:
    from analysis.sources.mysql import MySQLDatasource

    statements = [
        *_create(MARIADB, "`"),
        "INSERT INTO sweep () VALUES ()",
        "ALTER TABLE sweep ADD pad LONGBLOB",
    ]
    my_server.sql("SET time_zone = '+00:00'; " + "; ".join(statements), database=servers.DATABASE)
    plain = MySQLDatasource("shop", source_config("mysql", my_server))
    no_odbc = MySQLDatasource("shop", source_config("mysql", my_server, odbc_driver="No Such Driver"))
    try:
        yield plain, no_odbc
    finally:
        plain.close()
        no_odbc.close()


def test_mariadb_types_are_the_same_through_every_path(
    my_sweep: tuple[Any, Any], duck: Any, odbc_driver: str
) -> None:
    plain, no_odbc = my_sweep
    select = "SELECT `{0}` AS x FROM sweep ORDER BY `{0}` IS NULL"

    def rows(col: str) -> None:
        duck.load_data("got", plain.query(select.format(col), None, timeout_s=10))

    def rows_bound(col: str) -> None:  # a prepared statement: the binary protocol
        sql = "SELECT `{0}` AS x FROM sweep WHERE ? = ? ORDER BY `{0}` IS NULL"
        duck.load_data("got", plain.query(sql.format(col), [1, 1], timeout_s=10))

    def into(col: str) -> None:  # arrow-odbc for plain columns, connectorx for others
        plain.query_into(duck, "got", select.format(col), None, timeout_s=10)

    def into_with_a_blob_neighbour(col: str) -> None:  # the neighbour sends it through connectorx
        sql = "SELECT `{0}` AS x, pad FROM sweep ORDER BY `{0}` IS NULL"
        plain.query_into(duck, "got", sql.format(col), None, timeout_s=10)

    def into_connectorx(col: str) -> None:
        no_odbc.query_into(duck, "got", select.format(col), None, timeout_s=10)

    def into_bound(col: str) -> None:  # bytes cannot travel as ODBC text: the driver's bound path
        sql = "SELECT `{0}` AS x FROM sweep WHERE ? <> '' ORDER BY `{0}` IS NULL"
        plain.query_into(duck, "got", sql.format(col), [b"\x00"], timeout_s=10)

    paths = {f.__name__: f for f in (rows, rows_bound, into, into_with_a_blob_neighbour, into_connectorx,
                                     into_bound)}  # fmt: skip
    assert _sweep(paths, MARIADB, duck) == []


def test_postgres_types_are_the_same_through_every_path(pg: Any, pg_server: Any, duck: Any) -> None:
    pg_server.psql("; ".join(_create(POSTGRES, '"')) + "; INSERT INTO sweep DEFAULT VALUES",
                   database=servers.DATABASE, user=servers.USER)  # fmt: skip
    select = "SELECT {0} AS x FROM sweep ORDER BY {0} IS NULL"
    bound = "SELECT {0} AS x FROM sweep WHERE 1 = ? ORDER BY {0} IS NULL"

    def rows(col: str) -> None:
        duck.load_data("got", pg.query(select.format(col), None, timeout_s=10))

    def rows_bound(col: str) -> None:
        duck.load_data("got", pg.query(bound.format(col), [1], timeout_s=10))

    def into(col: str) -> None:
        pg.query_into(duck, "got", select.format(col), None, timeout_s=10)

    def into_bound(col: str) -> None:
        pg.query_into(duck, "got", bound.format(col), [1], timeout_s=10)

    paths = {f.__name__: f for f in (rows, rows_bound, into, into_bound)}
    assert _sweep(paths, POSTGRES, duck) == []


def test_postgres_into_types_columns_that_share_a_name(pg: Any, duck: Any) -> None:
    sql = 'SELECT 1.50::numeric(4,2) AS x, 2 AS x, 3.25::numeric(4,2) AS x, \'"q"\'::text AS "a""b"'
    assert pg.query_into(duck, "dup", sql, None, timeout_s=10) == 1
    rel = duck.connection.sql("SELECT * FROM dup")
    assert [(c, str(t)) for c, t in zip(rel.columns, rel.types, strict=True)] == [
        ("x", "DECIMAL(4,2)"), ("x_1", "INTEGER"), ("x_2", "DECIMAL(4,2)"), ('a"b', "VARCHAR"),
    ]  # fmt: skip
    assert [str(v) for v in rel.fetchall()[0]] == ["1.50", "2", "3.25", '"q"']


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_into_in_a_job_gives_every_type_as_in_process(
    kind: str, run_script: Any, duck: Any, request: pytest.FixtureRequest
) -> None:
    """In a job, ``into=`` comes through the broker and the kernel reads it with nanoarrow: same table."""
    name, columns, quote = ("pg", POSTGRES, '"') if kind == "postgres" else ("my", MARIADB, "`")
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    statements = [*_create(columns, quote), "INSERT INTO sweep DEFAULT VALUES" if kind == "postgres"
                  else "INSERT INTO sweep () VALUES ()"]  # fmt: skip
    if kind == "postgres":
        server.psql("; ".join(statements), database=servers.DATABASE, user=servers.USER)
    else:
        server.sql("SET time_zone = '+00:00'; " + "; ".join(statements), database=servers.DATABASE)
    sql = f"SELECT * FROM sweep ORDER BY {quote}{next(iter(columns))}{quote} IS NULL"
    as_text = "SELECT " + ", ".join(f'"{c}"::VARCHAR AS "{c}"' for c in columns) + " FROM t"
    result = run_script(
        "def run(ctx, parameters):\n"
        "    ctx.query_datasource(parameters['name'], parameters['sql'], into='t')\n"
        "    types = {r['column_name']: r['column_type'] for r in ctx.query('DESCRIBE t').rows}\n"
        "    return {'types': types, 'rows': ctx.query(parameters['as_text']).rows}\n",
        {"name": name, "sql": sql, "as_text": as_text},
        datasources_file=request.getfixturevalue("job_config"),
    )
    assert result.success, result.to_dict()
    source = request.getfixturevalue("pg" if kind == "postgres" else "my")
    source.query_into(duck, "t", sql, None, timeout_s=10)
    rel = duck.connection.sql(as_text)
    here = [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]
    assert result.result["types"] == {c: expected for c, (_, _, expected) in columns.items()}
    assert result.result["rows"] == here
    assert None not in here[0].values() and all(v is None for v in here[1].values())

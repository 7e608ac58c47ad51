"""Datasource bulk-path speed, measured in one run on one machine (issue 3).

    .venv/bin/python bench/bench_datasources.py [--rows N] [--repeat N]

Starts its own PostgreSQL 15 and MariaDB 10.11 (``tests/datasources/servers.py``), fills a
table of N rows (int, varchar, numeric(10,2), timestamptz / datetime(6)) and times, on each:

* ``query_datasource(..., into=...)``: the datasource's bulk path into a DuckDB table;
* the command-line floor: ``psql -c "COPY (query) TO STDOUT (FORMAT binary)" > /dev/null`` and
  ``mariadb --quick -e "query" > /dev/null`` (both over TCP, as the datasource connects);
* the row-by-row baseline: fetch dicts with the driver (psycopg ``dict_row``, mysql-connector
  ``dictionary=True``), then ``load_data`` them.

Figures are medians of ``--repeat`` runs; ratios compare figures from this same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timing import median_s

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "analysis_bench_servers", HERE.parent / "tests/datasources/servers.py"
)
assert _spec is not None and _spec.loader is not None
servers = importlib.util.module_from_spec(_spec)
sys.modules["analysis_bench_servers"] = servers
_spec.loader.exec_module(servers)

QUERY = "SELECT id, name, amount, ts FROM bench"


def _shell(cmd: list[str], env: dict[str, str]) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, env={**os.environ, **env}, check=True)

    return run


def _config(kind: str, server: Any) -> dict[str, Any]:
    from analysis.sources.secrets import Secret

    return {
        "kind": kind,
        "port": server.port,
        "database": servers.DATABASE,
        "user": servers.USER,
        "password": Secret(servers.PASSWORD),
    }


def bench_postgres(server: Any, rows: int, repeat: int) -> dict[str, float]:
    """Seconds for the PostgreSQL bulk path, COPY binary through psql, and row-by-row."""
    import psycopg
    from psycopg.rows import dict_row

    from analysis.duck import Duck
    from analysis.sources.postgres import PostgresDatasource

    server.psql(
        f"""CREATE TABLE bench AS SELECT i AS id, 'name-' || i AS name,
            ((i % 100000) / 7.0)::numeric(10,2) AS amount,
            timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second' AS ts
            FROM generate_series(1, {rows}) i""",
        database=servers.DATABASE,
        user=servers.USER,
    )
    server.psql("VACUUM ANALYZE bench", database=servers.DATABASE, user=servers.USER)
    duck = Duck()
    source = PostgresDatasource("bench", _config("postgres", server))
    psql = [str(servers.PG_BIN / "psql"), "-X", "-h", "127.0.0.1", "-p", str(server.port), "-U", servers.USER,
            "-d", servers.DATABASE, "-c", f"COPY ({QUERY}) TO STDOUT (FORMAT binary)"]  # fmt: skip

    def row_by_row() -> None:
        with psycopg.connect(
            host="127.0.0.1", port=server.port, dbname=servers.DATABASE, user=servers.USER,
            password=servers.PASSWORD, row_factory=dict_row,
        ) as conn:  # fmt: skip
            duck.load_data("rows_pg", conn.execute(QUERY).fetchall())

    try:
        assert source.query_into(duck, "bulk_pg", QUERY, None, timeout_s=600) == rows
        return {
            "into": median_s(lambda: source.query_into(duck, "bulk_pg", QUERY, None, timeout_s=600), repeat),
            "cli": median_s(_shell(psql, {"PGPASSWORD": servers.PASSWORD}), repeat),
            "rows": median_s(row_by_row, 1),
        }
    finally:
        source.close()
        duck.close()


def bench_mysql(server: Any, rows: int, repeat: int) -> dict[str, float]:
    """Seconds for the MySQL bulk path, ``mariadb --quick``, and row-by-row."""
    import mysql.connector

    from analysis.duck import Duck
    from analysis.sources.mysql import MySQLDatasource

    server.sql(
        f"""CREATE TABLE bench (id INT PRIMARY KEY, name VARCHAR(64), amount DECIMAL(10,2), ts DATETIME(6));
            INSERT INTO bench SELECT seq, CONCAT('name-', seq), (seq % 100000) / 7,
                TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_{rows};""",
        database=servers.DATABASE,
    )
    duck = Duck()
    source = MySQLDatasource("bench", _config("mysql", server))
    cli = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(server.port), "-u", servers.USER,
           servers.DATABASE, "--quick", "-e", QUERY]  # fmt: skip

    def row_by_row() -> None:
        conn = mysql.connector.connect(
            host="127.0.0.1", port=server.port, database=servers.DATABASE, user=servers.USER,
            password=servers.PASSWORD, use_pure=True,
        )  # fmt: skip
        try:
            with conn.cursor(dictionary=True) as cur:
                cur.execute(QUERY)
                duck.load_data("rows_my", cur.fetchall())
        finally:
            conn.close()

    try:
        assert source.query_into(duck, "bulk_my", QUERY, None, timeout_s=600) == rows
        return {
            "into": median_s(lambda: source.query_into(duck, "bulk_my", QUERY, None, timeout_s=600), repeat),
            "cli": median_s(_shell(cli, {"MYSQL_PWD": servers.PASSWORD}), repeat),
            "rows": median_s(row_by_row, 1),
        }
    finally:
        source.close()
        duck.close()


def main() -> int:
    """Start the servers, run both benchmarks, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import contextlib
    import io

    pg, my = servers.PostgresServer(), servers.MariaDBServer()
    try:
        pg.start()
        my.start()
        with contextlib.redirect_stderr(io.StringIO()):  # the [load_data] log lines
            figures = {
                "PostgreSQL": bench_postgres(pg, args.rows, args.repeat),
                "MariaDB": bench_mysql(my, args.rows, args.repeat),
            }
    finally:
        my.stop()
        pg.stop()
    floor = {"PostgreSQL": "psql COPY binary > /dev/null", "MariaDB": "mariadb --quick > /dev/null"}
    target = {"PostgreSQL": 2.0, "MariaDB": 1.2}
    print(f"{args.rows:,} rows (int, varchar, numeric(10,2), timestamp); medians of {args.repeat} runs")
    print(f"{'server':<11} {'path':<34} {'seconds':>8} {'rows/s':>12} {'vs floor':>9}")
    for name, f in figures.items():
        for label, key in (
            ("into= (bulk path)", "into"),
            (floor[name], "cli"),
            ("row by row (dicts)", "rows"),
        ):
            rate, ratio = args.rows / f[key], f[key] / f["cli"]
            print(f"{name:<11} {label:<34} {f[key]:>8.3f} {rate:>12,.0f} {ratio:>8.2f}x")
        verdict = "ok" if f["into"] / f["cli"] <= target[name] else "over target"
        print(
            f"{name:<11} into= / floor = {f['into'] / f['cli']:.2f} (target <= {target[name]:g}, {verdict}); "
            f"row-by-row / into= = {f['rows'] / f['into']:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

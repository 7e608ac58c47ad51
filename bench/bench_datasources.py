"""Datasource bulk-path speed, measured in one run on one machine (issue 3).

    .venv/bin/python bench/bench_datasources.py [--rows N] [--repeat N]

Starts its own PostgreSQL 15 and MariaDB 10.11 (``tests/datasources/servers.py``), fills a
table of N rows (int, varchar, numeric(10,2), timestamptz / datetime(6)) and times, on each:

* ``ctx.query_datasource(..., into=...)`` inside a real job (``run_job``, a fresh kernel per
  job): the first call of the job, which is what a job pays (imports and connection included),
  and a second call in the same job;
* the command-line floor: ``psql -c "COPY (query) TO STDOUT (FORMAT binary)" > /dev/null`` and
  ``mariadb --quick -e "query" > /dev/null`` (both over TCP, as the datasource connects);
* the row-by-row baseline: fetch dicts with the driver (psycopg ``dict_row``, mysql-connector
  ``dictionary=True``), then ``load_data`` them.

Figures are medians of ``--repeat`` runs; ratios compare figures from this same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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


#: The analysis each timing job runs: the first and the second ``into=`` of the job, timed in the kernel.
JOB = """
import time

def run(ctx, parameters):
    times = []
    for n in range(2):
        started = time.perf_counter()
        count = ctx.query_datasource(parameters["source"], parameters["sql"], into=f"t{n}").row_count
        times.append(time.perf_counter() - started)
        assert count == parameters["rows"], count
    return times
"""


def in_job(name: str, rows: int, repeat: int, datasources: Path) -> tuple[float, float]:
    """Medians over ``repeat`` jobs of the first and the second ``into=`` of a job, in seconds."""
    from analysis.runner import JobSpec, run_job

    work = datasources.parent
    script = work / "bench_into.py"
    script.write_text(JOB, encoding="utf-8")
    firsts, seconds = [], []
    for _ in range(repeat):
        result = run_job(
            JobSpec(
                source_path=script,
                parameters={"source": name, "sql": QUERY, "rows": rows},
                root=work / ".clients",
                datasources_file=datasources,
                timeout_s=600,
            )
        )
        if not result.success:
            raise RuntimeError(json.dumps(result.to_dict(), indent=1))
        first, second = result.result
        firsts.append(first)
        seconds.append(second)
    return statistics.median(firsts), statistics.median(seconds)


def _datasources_file(pg: Any, my: Any) -> Path:
    """A datasources file for both servers, the password in an environment variable the kernel inherits."""
    os.environ["ANALYSIS_BENCH_PASSWORD"] = servers.PASSWORD
    work = Path(tempfile.mkdtemp(prefix="bench-datasources-"))
    path = work / "datasources.toml"
    common = f'database = "{servers.DATABASE}"\nuser = "{servers.USER}"\n'
    common += 'password_env = "ANALYSIS_BENCH_PASSWORD"\n'
    path.write_text(
        f'[pg]\nkind = "postgres"\nport = {pg.port}\n{common}\n'
        f'[my]\nkind = "mysql"\nport = {my.port}\n{common}',
        encoding="utf-8",
    )
    return path


def bench_postgres(server: Any, rows: int, repeat: int, datasources: Path) -> dict[str, float]:
    """Seconds for the PostgreSQL bulk path, COPY binary through psql, and row-by-row."""
    import psycopg
    from psycopg.rows import dict_row

    from analysis.duck import Duck

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
    psql = [str(servers.PG_BIN / "psql"), "-X", "-h", "127.0.0.1", "-p", str(server.port), "-U", servers.USER,
            "-d", servers.DATABASE, "-c", f"COPY ({QUERY}) TO STDOUT (FORMAT binary)"]  # fmt: skip

    def row_by_row() -> None:
        with psycopg.connect(
            host="127.0.0.1", port=server.port, dbname=servers.DATABASE, user=servers.USER,
            password=servers.PASSWORD, row_factory=dict_row,
        ) as conn:  # fmt: skip
            duck.load_data("rows_pg", conn.execute(QUERY).fetchall())

    try:
        first, second = in_job("pg", rows, repeat, datasources)
        return {
            "first": first,
            "second": second,
            "cli": median_s(_shell(psql, {"PGPASSWORD": servers.PASSWORD}), repeat),
            "rows": median_s(row_by_row, 1),
        }
    finally:
        duck.close()


def bench_mysql(server: Any, rows: int, repeat: int, datasources: Path) -> dict[str, float]:
    """Seconds for the MySQL bulk path, ``mariadb --quick``, and row-by-row."""
    import mysql.connector

    from analysis.duck import Duck

    server.sql(
        f"""CREATE TABLE bench (id INT PRIMARY KEY, name VARCHAR(64), amount DECIMAL(10,2), ts DATETIME(6));
            INSERT INTO bench SELECT seq, CONCAT('name-', seq), (seq % 100000) / 7,
                TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_{rows};""",
        database=servers.DATABASE,
    )
    duck = Duck()
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
        first, second = in_job("my", rows, repeat, datasources)
        return {
            "first": first,
            "second": second,
            "cli": median_s(_shell(cli, {"MYSQL_PWD": servers.PASSWORD}), repeat),
            "rows": median_s(row_by_row, 1),
        }
    finally:
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
    datasources: Path | None = None
    try:
        pg.start()
        my.start()
        datasources = _datasources_file(pg, my)
        with contextlib.redirect_stderr(io.StringIO()):  # the [load_data] log lines
            figures = {
                "PostgreSQL": bench_postgres(pg, args.rows, args.repeat, datasources),
                "MariaDB": bench_mysql(my, args.rows, args.repeat, datasources),
            }
    finally:
        my.stop()
        pg.stop()
        if datasources is not None:
            shutil.rmtree(datasources.parent, ignore_errors=True)
    floor = {"PostgreSQL": "psql COPY binary > /dev/null", "MariaDB": "mariadb --quick > /dev/null"}
    target = {"PostgreSQL": 2.0, "MariaDB": 1.2}
    print(f"{args.rows:,} rows (int, varchar, numeric(10,2), timestamp); medians of {args.repeat} runs")
    print(f"{'server':<11} {'path':<38} {'seconds':>8} {'rows/s':>12} {'vs floor':>9}")
    for name, f in figures.items():
        for label, key in (
            ("into=, first call of a job", "first"),
            ("into=, second call of the job", "second"),
            (floor[name], "cli"),
            ("row by row (dicts, in process)", "rows"),
        ):
            rate, ratio = args.rows / f[key], f[key] / f["cli"]
            print(f"{name:<11} {label:<38} {f[key]:>8.3f} {rate:>12,.0f} {ratio:>8.2f}x")
        first = f["first"] / f["cli"]
        verdict = "ok" if first <= target[name] else "over target"
        print(
            f"{name:<11} first into= / floor = {first:.2f} (target <= {target[name]:g}, {verdict}); "
            f"second: {f['second'] / f['cli']:.2f}; row-by-row / first into= = {f['rows'] / f['first']:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Datasource bulk-path speed, measured in one run on one machine (issue 3).

    .venv/bin/python bench/bench_datasources.py [--rows N] [--repeat N]

Starts its own PostgreSQL 15 and MariaDB 10.11 (``tests/datasources/servers.py``), fills a
table of N rows (int, varchar, numeric(10,2), timestamp), as ``bench_broker.py`` does, and
times, on each:

* ``ctx.query_datasource(..., into=...)`` inside a real job (``run_job``, a fresh kernel per
  job): the first call of the job, which is what a job pays (imports and connection included),
  and a second call in the same job;
* the command-line floor: ``psql -c "COPY (query) TO STDOUT (FORMAT binary)" > /dev/null`` and
  ``mariadb --quick -e "query" > /dev/null`` (both over TCP, as the datasource connects);
* the row-by-row baseline: fetch dicts with the driver (psycopg ``dict_row``, mysql-connector
  ``dictionary=True``), then ``load_data`` them.

Each job runs right after one floor run (``timing.alternate``, as in ``bench_broker.py``):
the verdict's ratios are the medians of each call's time over its own floor run's, so a
load that changes during the run (a shared machine) weighs on both sides alike. Other
figures are medians of ``--repeat`` runs; every ratio compares figures from this same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_broker
from timing import Load, alternate, median_s, paired_ratio

servers = bench_broker.servers
QUERY = bench_broker.QUERY


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


def in_job(
    name: str, rows: int, repeat: int, datasources: Path, floor: Callable[[], None]
) -> dict[str, float]:
    """``repeat`` jobs, each right after a floor run.

    Returns the medians of the first and second ``into=`` and of the floor runs (``cli``), and
    the median of each call's time over its own floor run (``paired_first``, ``paired_second``).
    """
    from analysis.runner import JobSpec, run_job

    work = datasources.parent
    script = work / "bench_into.py"
    script.write_text(JOB, encoding="utf-8")

    def job() -> tuple[float, float]:
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
        return float(first), float(second)

    floors, times = alternate(floor, job, repeat)
    firsts, seconds = [t[0] for t in times], [t[1] for t in times]
    return {
        "first": statistics.median(firsts),
        "second": statistics.median(seconds),
        "cli": statistics.median(floors),
        "paired_first": paired_ratio(firsts, floors),
        "paired_second": paired_ratio(seconds, floors),
    }


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

    psql = bench_broker.fill_postgres(server, rows)
    duck = Duck()

    def row_by_row() -> None:
        with psycopg.connect(
            host="127.0.0.1", port=server.port, dbname=servers.DATABASE, user=servers.USER,
            password=servers.PASSWORD, row_factory=dict_row,
        ) as conn:  # fmt: skip
            duck.load_data("rows_pg", conn.execute(QUERY).fetchall())

    try:
        floor = bench_broker.shell(psql, {"PGPASSWORD": servers.PASSWORD})
        figures = in_job("pg", rows, repeat, datasources, floor)
        return {**figures, "rows": median_s(row_by_row, 1)}
    finally:
        duck.close()


def bench_mysql(server: Any, rows: int, repeat: int, datasources: Path) -> dict[str, float]:
    """Seconds for the MySQL bulk path, ``mariadb --quick``, and row-by-row."""
    import mysql.connector

    from analysis.duck import Duck

    cli = bench_broker.fill_mariadb(server, rows)
    duck = Duck()

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
        floor = bench_broker.shell(cli, {"MYSQL_PWD": servers.PASSWORD})
        figures = in_job("my", rows, repeat, datasources, floor)
        return {**figures, "rows": median_s(row_by_row, 1)}
    finally:
        duck.close()


def main() -> int:
    """Start the servers, run both benchmarks, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    pg, my = servers.PostgresServer(), servers.MariaDBServer()
    datasources: Path | None = None
    load = Load()
    try:
        pg.start()
        my.start()
        datasources = _datasources_file(pg, my)
        with contextlib.redirect_stderr(io.StringIO()):  # the [load_data] log lines
            load.sample()
            figures = {"PostgreSQL": bench_postgres(pg, args.rows, args.repeat, datasources)}
            load.sample()
            figures["MariaDB"] = bench_mysql(my, args.rows, args.repeat, datasources)
            load.sample()
    finally:
        my.stop()
        pg.stop()
        if datasources is not None:
            shutil.rmtree(datasources.parent, ignore_errors=True)
    floor = {"PostgreSQL": "psql COPY binary > /dev/null", "MariaDB": "mariadb --quick > /dev/null"}
    target = {"PostgreSQL": 2.0, "MariaDB": 1.2}
    print(f"{args.rows:,} rows (int, varchar, numeric(10,2), timestamp); medians of {args.repeat} runs;")
    print(f"{load} during the runs")
    print("each job runs right after a floor run; a verdict is the median of each call over its floor run")
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
        first = f["paired_first"]
        verdict = "ok" if first <= target[name] else "over target"
        print(
            f"{name:<11} first into= / floor = {first:.2f} (target <= {target[name]:g}, {verdict}); "
            f"second: {f['paired_second']:.2f}; row-by-row / first into= = {f['rows'] / f['first']:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

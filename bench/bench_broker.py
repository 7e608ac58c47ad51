"""``into=`` through the data broker, first call of a job, against the command-line floors (issue 9).

    .venv/bin/python bench/bench_broker.py [--rows N] [--jobs N]

Starts its own PostgreSQL 15 and MariaDB 10.11 (``tests/datasources/servers.py``), fills a
table of N rows (int, varchar, numeric(10,2), timestamp) and, for each server, runs real jobs
(a fresh kernel each, the broker on its socket) whose first statement is
``ctx.query_datasource(..., into="t")``, timed inside the kernel:

* job 1: the runner's connection pool is empty (connect, driver imports in the runner);
* jobs 2..N+1: the pool holds the first job's connection (the steady state of a runner);
  the figure is their median.

For scale, the same ``into=`` in-process (the datasource kind straight into a DuckDB in this
process, warm connection, no broker, median of N) shows what the broker itself adds.

The floors are ``psql -c "COPY (query) TO STDOUT (FORMAT binary)" > /dev/null`` and
``mariadb --quick -e "query" > /dev/null`` (over TCP). Each job runs right after one floor run,
and the verdict's ratio is the median of each job's time over its own floor run's, so a load
that changes during the run (a shared machine) weighs on both sides alike. Every figure comes
from this one run; ratios compare them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import from_tests
from timing import Load, alternate, median_s, paired_ratio

servers = from_tests.load("datasources/servers.py")

QUERY = "SELECT id, name, amount, ts FROM bench"
SCRIPT = """
import time

def run(ctx, parameters):
    started = time.perf_counter()
    rows = ctx.query_datasource(parameters["name"], parameters["sql"], into="t").row_count
    return {"s": time.perf_counter() - started, "rows": rows}
"""


def shell(cmd: list[str], env: dict[str, str]) -> Callable[[], None]:
    """A floor run: ``cmd`` with ``env`` added, its output to /dev/null."""

    def run() -> None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, env={**os.environ, **env}, check=True)

    return run


def fill_postgres(server: Any, rows: int) -> list[str]:
    """Create the table; return the floor's command line."""
    server.psql(
        f"""CREATE TABLE bench AS SELECT i AS id, 'name-' || i AS name,
            ((i % 100000) / 7.0)::numeric(10,2) AS amount,
            timestamp '2024-01-01 00:00:00' + i * interval '1 second' AS ts
            FROM generate_series(1, {rows}) i""",
        database=servers.DATABASE,
        user=servers.USER,
    )
    server.psql("VACUUM ANALYZE bench", database=servers.DATABASE, user=servers.USER)
    return [str(servers.PG_BIN / "psql"), "-X", "-h", "127.0.0.1", "-p", str(server.port), "-U", servers.USER,
            "-d", servers.DATABASE, "-c", f"COPY ({QUERY}) TO STDOUT (FORMAT binary)"]  # fmt: skip


def fill_mariadb(server: Any, rows: int) -> list[str]:
    """Create the table; return the floor's command line."""
    server.sql(
        f"""CREATE TABLE bench (id INT PRIMARY KEY, name VARCHAR(64), amount DECIMAL(10,2), ts DATETIME(6));
            INSERT INTO bench SELECT seq, CONCAT('name-', seq), (seq % 100000) / 7,
                TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_{rows};""",
        database=servers.DATABASE,
    )
    return ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(server.port), "-u", servers.USER,
            servers.DATABASE, "--quick", "-e", QUERY]  # fmt: skip


def first_calls(
    name: str, config: Path, work: Path, rows: int, *, jobs: int, floor: Callable[[], object]
) -> dict[str, float]:
    """The first ``into=`` of job 1 (empty pool) and of the next ``jobs`` jobs, each right after a floor run.

    Returns ``cold`` (job 1), ``warm`` (median of the others), ``floor`` (median of the floor
    runs beside them) and ``paired`` (median of each job's time over its own floor run: on a
    shared machine whose load changes by the second, the fairest ratio).
    """
    from analysis.runner import JobSpec, run_job

    script = work / "bench_into.py"
    script.write_text(SCRIPT, encoding="utf-8")

    def job() -> float:
        spec = JobSpec(
            source_path=script,
            parameters={"name": name, "sql": QUERY},
            root=work / ".clients",
            datasources_file=config,
            timeout_s=600,
        )
        result = run_job(spec)
        if not result.success or result.result["rows"] != rows:
            raise SystemExit(f"the {name} job failed: {result.to_dict()}")
        return float(result.result["s"])

    floors, times = alternate(floor, job, jobs + 1)
    return {
        "cold": times[0],
        "warm": statistics.median(times[1:]),
        "floor": statistics.median(floors[1:]),
        "paired": paired_ratio(times[1:], floors[1:]),
    }


def in_process(name: str, config: Path, jobs: int) -> float:
    """Median seconds of ``into=`` in this process, warm connection, without the broker."""
    from analysis.duck import Duck
    from analysis.sources import Datasources

    sources, duck = Datasources(config), Duck()
    try:
        source = sources.get(name)
        source.query_into(duck, "t", QUERY, None, timeout_s=600)  # connect, import the driver
        return median_s(lambda: source.query_into(duck, "t", QUERY, None, timeout_s=600), jobs)
    finally:
        sources.close()
        duck.close()


def main() -> int:
    """Start the servers, time the jobs and the floors, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=5)
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    from analysis.sources.secrets import encrypt

    key = Fernet.generate_key().decode()
    os.environ["ANALYSIS_SECRET_KEY"] = key  # the runner's; the kernels never see it
    token = encrypt(servers.PASSWORD, key)
    pg, my = servers.PostgresServer(), servers.MariaDBServer()
    figures: dict[str, dict[str, float]] = {}
    loads = {"PostgreSQL": Load(), "MariaDB": Load()}
    try:
        pg.start()
        my.start()
        with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
            work = Path(tmp)
            config = work / "datasources.toml"
            config.write_text(
                f'[pg]\nkind = "postgres"\nport = {pg.port}\ndatabase = "{servers.DATABASE}"\n'
                f'user = "{servers.USER}"\npassword_encrypted = "{token}"\n\n'
                f'[my]\nkind = "mysql"\nport = {my.port}\ndatabase = "{servers.DATABASE}"\n'
                f'user = "{servers.USER}"\npassword_encrypted = "{token}"\n',
                encoding="utf-8",
            )
            for label, name, fill, env in (
                ("PostgreSQL", "pg", lambda: fill_postgres(pg, args.rows), {"PGPASSWORD": servers.PASSWORD}),
                ("MariaDB", "my", lambda: fill_mariadb(my, args.rows), {"MYSQL_PWD": servers.PASSWORD}),
            ):
                floor = shell(fill(), env)
                loads[label].sample()
                figures[label] = first_calls(name, config, work, args.rows, jobs=args.jobs, floor=floor)
                loads[label].sample()
                with contextlib.redirect_stderr(io.StringIO()):  # the [load_data] log lines
                    figures[label]["local"] = in_process(name, config, args.jobs)
                loads[label].sample()
    finally:
        my.stop()
        pg.stop()
    floors = {"PostgreSQL": "psql COPY binary > /dev/null", "MariaDB": "mariadb --quick > /dev/null"}
    target = {"PostgreSQL": 2.0, "MariaDB": 1.2}
    print(f"{args.rows:,} rows (int, varchar, numeric(10,2), timestamp); into= timed inside the kernel;")
    print("each job runs right after a floor run; the floor is the median of those beside jobs 2-N")
    print(f"{'server':<11} {'path':<44} {'seconds':>8} {'rows/s':>12} {'vs floor':>9}")
    for label, f in figures.items():
        for path, key in (
            (floors[label] + f" (median of {args.jobs})", "floor"),
            ("into=, first call of job 1 (pool empty)", "cold"),
            (f"into=, first call of jobs 2-{args.jobs + 1} (median)", "warm"),
            (f"into= in-process, no broker (median of {args.jobs})", "local"),
        ):
            rate, ratio = args.rows / f[key], f[key] / f["floor"]
            print(f"{label:<11} {path:<44} {f[key]:>8.3f} {rate:>12,.0f} {ratio:>8.2f}x")
        ratio = f["paired"]
        verdict = "ok" if ratio <= target[label] else "over target"
        print(
            f"{label:<11} first call / floor = {ratio:.2f}, median of each job over its own floor run "
            f"(target <= {target[label]:g}, {verdict}); "
            f"first call / in-process = {f['warm'] / f['local']:.2f}; {loads[label]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

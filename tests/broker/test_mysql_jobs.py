"""MariaDB ``into=`` through real jobs: the pooled sessions after a deadline, and between jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from analysis.runner import JobResult

from .conftest import mariadb_connections, servers, write_sources

RunScript = Callable[..., JobResult]

LOAD = """
    def run(ctx, parameters):
        sql = "SELECT CAST(seq AS SIGNED) AS n FROM seq_1_to_50000"
        n = ctx.query_datasource("my", sql, into="t").row_count
        return {"n": n, "sum": ctx.query("SELECT sum(n) AS s FROM t").rows[0]["s"]}
    """


@pytest.mark.slow
def test_a_deadline_mid_into_leaves_the_pooled_mariadb_source_usable_and_later_jobs_reuse_it(
    run_script: RunScript, tmp_path: Path, secret_key: str, my_server: Any
) -> None:
    config = write_sources(tmp_path / "ds.toml", secret_key, my=my_server)
    cut = run_script(
        """
        def run(ctx, parameters):
            return ctx.query_datasource("my", "SELECT SLEEP(60) AS cut_sleep", into="t").row_count
        """,
        datasources_file=config,
        timeout_s=4,
    )
    assert cut.error_type == "timeout", cut.to_dict()
    running = "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%cut_sleep%'"
    give_up = time.monotonic() + 10
    while my_server.sql(running).split()[-1] != "1" and time.monotonic() < give_up:  # 1: this one
        time.sleep(0.05)
    assert my_server.sql(running).split()[-1] == "1"
    expected = {"n": 50_000, "sum": 50_000 * 50_001 // 2}
    after = run_script(LOAD, datasources_file=config)
    assert after.success and after.result == expected, after.to_dict()
    before = mariadb_connections(my_server)
    again = run_script(LOAD, datasources_file=config)
    assert again.success and again.result == expected, again.to_dict()
    # the question above, and the bulk path's ODBC session, which a job gets anew (arrow-odbc has
    # no session reset); the other session was reset and reused
    assert mariadb_connections(my_server) == before + 2


@pytest.mark.parametrize("leaves", ["SET autocommit = 0", "START TRANSACTION"])
def test_a_job_cannot_leave_the_pooled_mariadb_session_holding_the_next_jobs_writes(
    leaves: str, run_script: RunScript, tmp_path: Path, secret_key: str, my_server: Any
) -> None:
    # each call is its own transaction, committed as it ends on a read-write datasource; a
    # job that turned autocommit off, or opened a transaction, left it so in the session the
    # broker keeps, and the next job's INSERT was never committed (then lost with the session)
    table = f"kept_writes_{len(leaves)}"
    my_server.sql(f"CREATE TABLE {table} (n INT)", database=servers.DATABASE)
    config = write_sources(tmp_path / "ds.toml", secret_key, my=my_server)
    config.write_text(config.read_text().replace("[my]\n", "[my]\nread_only = false\n"))
    first = run_script(
        f"def run(ctx, parameters):\n    ctx.query_datasource('my', {leaves!r})\n", datasources_file=config
    )
    assert first.success, first.to_dict()
    second = run_script(
        f"def run(ctx, parameters):\n    ctx.query_datasource('my', 'INSERT INTO {table} VALUES (1)')\n",
        datasources_file=config,
    )
    assert second.success, second.to_dict()
    assert my_server.sql(f"SELECT count(*) FROM {table}", database=servers.DATABASE).split()[-1] == "1"

"""MariaDB ``into=`` through real jobs: the pooled ODBC session after a deadline, and between jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from analysis.runner import JobResult

from .conftest import write_sources

RunScript = Callable[..., JobResult]

LOAD = """
    def run(ctx, parameters):
        sql = "SELECT CAST(seq AS SIGNED) AS n FROM seq_1_to_50000"
        n = ctx.query_datasource("my", sql, into="t").row_count
        return {"n": n, "sum": ctx.query("SELECT sum(n) AS s FROM t").rows[0]["s"]}
    """


def _connections(server: Any) -> int:
    """Connections the server has accepted so far (this question itself is one more)."""
    return int(server.sql("SHOW GLOBAL STATUS LIKE 'Connections'").split()[-1])


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
    before = _connections(my_server)
    again = run_script(LOAD, datasources_file=config)
    assert again.success and again.result == expected, again.to_dict()
    assert _connections(my_server) == before + 1  # only the question above: both sessions were reused

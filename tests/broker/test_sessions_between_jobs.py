"""The broker keeps database sessions between jobs; what one job did to a session stays with that job.

The runner's pool hands a kept datasource to the next job of the same project: its session is
reset first (README, "Read-only, time limits, cancellation"), while the requests of one job
keep their session's state, as a notebook's ``ctx`` keeps its connection.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis.runner import JobResult

from .conftest import mariadb_connections, write_sources

RunScript = Callable[..., JobResult]


def test_mariadb_user_variables_stay_with_the_job_that_set_them(
    run_script: RunScript, tmp_path: Path, secret_key: str, my_server: Any
) -> None:
    config = write_sources(tmp_path / "ds.toml", secret_key, my=my_server)
    first = run_script(
        """
        def run(ctx, parameters):
            ctx.query_datasource("my", "SET @leak = 42")
            ctx.query_datasource("my", "SELECT @bulk := 7 AS b", into="t")  # the bulk path's session
            ctx.query_datasource("my", "SELECT CAST(@bulk AS SIGNED) AS v", into="u")
            return [ctx.query_datasource("my", "SELECT @leak AS v").rows[0]["v"],
                    ctx.query("SELECT v FROM u").rows[0]["v"]]
        """,
        datasources_file=config,
    )
    assert first.success, first.to_dict()
    assert first.result == [42, 7]  # one job's requests share their sessions
    before = mariadb_connections(my_server)
    second = run_script(
        """
        def run(ctx, parameters):
            ctx.query_datasource("my", "SELECT CAST(@bulk AS SIGNED) AS v", into="u")
            return [ctx.query_datasource("my", "SELECT @leak AS v").rows[0]["v"],
                    ctx.query("SELECT v FROM u").rows[0]["v"]]
        """,
        datasources_file=config,
    )
    assert second.success, second.to_dict()
    assert second.result == [None, None]
    # the kept connection was reset, not replaced; the bulk path's ODBC session (no reset
    # through arrow-odbc) was opened anew
    assert mariadb_connections(my_server) == before + 2


def test_postgres_session_settings_stay_with_the_job_that_set_them(
    run_script: RunScript, tmp_path: Path, secret_key: str, pg_server: Any
) -> None:
    config = write_sources(tmp_path / "ds.toml", secret_key, pg=pg_server)
    set_it = "SELECT set_config('analysis.leak', '42', false) AS v"  # session-wide, not per transaction
    read_it = "SELECT current_setting('analysis.leak', true) AS v"
    first = run_script(
        f"""
        def run(ctx, parameters):
            ctx.query_datasource("pg", {set_it!r}, into="t")
            ctx.query_datasource("pg", {read_it!r}, into="u")
            return ctx.query("SELECT v FROM u").rows[0]["v"]
        """,
        datasources_file=config,
    )
    assert first.success, first.to_dict()
    assert first.result == "42"
    second = run_script(
        f"""
        def run(ctx, parameters):
            ctx.query_datasource("pg", {read_it!r}, into="u")
            return ctx.query("SELECT v FROM u").rows[0]["v"]
        """,
        datasources_file=config,
    )
    assert second.success, second.to_dict()
    assert second.result in (None, "")  # DISCARD ALL: the placeholder setting is back to nothing

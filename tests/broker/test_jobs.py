"""The broker through real jobs: a kernel per job, its ``ctx`` talking to the runner over the socket."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from analysis.runner import JobResult

from .conftest import TOKEN, servers, write_sources

RunScript = Callable[..., JobResult]


def test_sqlite_rows_and_into_through_the_broker(
    run_script: RunScript, tmp_path: Path, shop_db: Path
) -> None:
    config = write_sources(tmp_path / "ds.toml", "", sqlite=shop_db)
    result = run_script(
        """
        def run(ctx, parameters):
            rows = ctx.query_datasource("shop", "SELECT id, item FROM orders WHERE amount > ?", [2]).rows
            n = ctx.query_datasource("shop", "SELECT * FROM big", into="big").row_count
            total = ctx.query("SELECT sum(n) AS s, max(s) AS m FROM big").rows[0]
            return {"rows": rows, "n": n, "total": total, "names": ctx.datasource_names()}
        """,
        datasources_file=config,
    )
    assert result.success, result.to_dict()
    assert result.result == {
        "rows": [{"id": 2, "item": "pear"}],
        "n": 200000,
        "total": {"s": 200000 * 200001 // 2, "m": "row-00200000"},
        "names": ["shop"],
    }
    assert result.logs[:3] == [
        "[query:datasource] shop SELECT id, item FROM orders WHERE amount > ?",
        "[query:datasource] shop SELECT * FROM big",
        "[load_data] Loaded 200000 rows into big",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_server_queries_with_typed_parameters_and_into(
    kind: str, run_script: RunScript, tmp_path: Path, secret_key: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    name = "pg" if kind == "postgres" else "my"
    config = write_sources(tmp_path / "ds.toml", secret_key, **{name: server})
    cast = "CAST(? AS DATE) AS d, CAST(? AS DECIMAL(10, 2)) AS m, ? AS b"
    result = run_script(
        f"""
        import datetime, decimal
        def run(ctx, parameters):
            params = [datetime.date(2024, 2, 29), decimal.Decimal("12.34"), b"\\x00\\xff"]
            row = ctx.query_datasource({name!r}, "SELECT {cast}", params).rows[0]
            n = ctx.query_datasource({name!r}, "SELECT {cast}", params, into="t").row_count
            types = {{r["column_name"]: r["column_type"] for r in ctx.query("DESCRIBE t").rows}}
            return {{"d": str(row["d"]), "m": str(row["m"]), "b": row["b"].hex(), "n": n, "types": types}}
        """,
        datasources_file=config,
    )
    assert result.success, result.to_dict()
    assert (
        result.result["d"] == "2024-02-29" and result.result["m"] == "12.34" and result.result["b"] == "00ff"
    )
    assert result.result["n"] == 1
    assert result.result["types"]["d"] == "DATE" and result.result["types"]["m"] == "DECIMAL(10,2)"


def test_file_api_through_the_broker(
    run_script: RunScript, file_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYSIS_BACKEND_URL", file_server)
    monkeypatch.setenv("ANALYSIS_BACKEND_TOKEN", TOKEN)
    result = run_script(
        """
        from analysis.files import FileNotFoundInApiError
        def run(ctx, parameters):
            names = sorted(f["name"] for f in ctx.files.list())
            text = ctx.files.read_text("notes.txt")
            rows = ctx.files.load("sales.csv", "sales")
            total = ctx.query("SELECT sum(amount) AS s FROM sales").rows[0]["s"]
            try:
                ctx.files.get_metadata("missing.csv")
            except FileNotFoundInApiError as exc:
                missing = [type(exc).__name__, exc.file_id, exc.status]
            return {"names": names, "text": text, "rows": rows, "total": total, "missing": missing}
        """
    )
    assert result.success, result.to_dict()
    assert result.result == {
        "names": ["notes.txt", "sales.csv"],
        "text": "hello from the file API\n",
        "rows": 2,
        "total": 17,
        "missing": ["FileNotFoundInApiError", "missing.csv", 404],
    }
    assert "[files] GET /api/files" in result.logs
    assert "[files] GET /api/files/sales.csv/content" in result.logs
    assert "[files] GET /api/files/missing.csv" in result.logs


def test_file_api_without_a_token_is_refused_by_the_backend(
    run_script: RunScript, file_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYSIS_BACKEND_URL", file_server)
    monkeypatch.delenv("ANALYSIS_BACKEND_TOKEN", raising=False)
    result = run_script("def run(ctx, parameters):\n    return ctx.files.list()\n")
    assert result.error_type == "file_api_error", result.to_dict()
    assert "401" in (result.error or "")


_LEAK_PROBE = """
import gc, os
from pathlib import Path

def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *children(int(child))]
    return found

def run(ctx, parameters):
    assert ctx.query_datasource("pg", "SELECT 1 AS one").rows == [{"one": 1}]
    assert ctx.files.list()
    try:
        ctx.query_datasource("pg", "SELEC broken")
    except Exception as exc:
        error_text = repr(exc) + str(exc)
    places = {"error": error_text}
    places["os.environ"] = repr(dict(os.environ))
    job_dir = Path(os.environ["IPYTHONDIR"]).parent
    for path in job_dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            places[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for pid in [os.getpid(), *children(os.getpid())]:  # the kernel and what it started
        for name in ("cmdline", "environ"):
            text = Path(f"/proc/{pid}/{name}").read_bytes().decode("utf-8", "replace")
            places[f"/proc/{pid}/{name}"] = text
    found = {where for where, text in places.items() for s in parameters["reversed"] if s[::-1] in text}
    for obj in gc.get_objects():  # everything reachable in the kernel, Secret objects included
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        for value in values:
            if isinstance(value, str) and any(s[::-1] in value for s in parameters["reversed"]):
                found.add("gc")
    found = sorted(found)
    return {"found": found, "kernel_pid": os.getpid(), "checked": len(places)}
"""


@pytest.mark.slow
def test_no_secret_reaches_the_kernel(
    run_script: RunScript,
    tmp_path: Path,
    *,
    pg_server: Any,
    secret_key: str,
    file_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANALYSIS_BACKEND_URL", file_server)
    monkeypatch.setenv("ANALYSIS_BACKEND_TOKEN", TOKEN)
    monkeypatch.setenv("DW_PASSWORD_FOR_TEST", servers.PASSWORD)
    config = tmp_path / "ds.toml"
    config.write_text(
        f'[pg]\nkind = "postgres"\nport = {pg_server.port}\ndatabase = "{servers.DATABASE}"\n'
        f'user = "{servers.USER}"\npassword_env = "DW_PASSWORD_FOR_TEST"\n',
        encoding="utf-8",
    )
    secrets = [secret_key, TOKEN, servers.PASSWORD]
    result = run_script(_LEAK_PROBE, {"reversed": [s[::-1] for s in secrets]}, datasources_file=config)
    assert result.success, result.to_dict()
    assert result.result["found"] == [], result.result
    assert result.result["checked"] > 5
    envelope = result.to_json()
    assert not [s for s in secrets if s in envelope]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_second_job_reuses_the_first_jobs_connection(
    kind: str, run_script: RunScript, tmp_path: Path, secret_key: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    name = "pg" if kind == "postgres" else "my"
    config = write_sources(tmp_path / "ds.toml", secret_key, **{name: server})
    pid_sql = "SELECT pg_backend_pid() AS pid" if kind == "postgres" else "SELECT CONNECTION_ID() AS pid"
    script = f"""
        def run(ctx, parameters):
            return ctx.query_datasource({name!r}, {pid_sql!r}).rows[0]["pid"]
        """
    first = run_script(script, datasources_file=config)
    second = run_script(script, datasources_file=config)
    assert first.success and second.success, (first.to_dict(), second.to_dict())
    assert first.result == second.result  # the same server-side session served both jobs
    if kind == "postgres":
        alive = server.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {int(first.result)}")
        assert alive.strip() == "1"  # kept open, idle, for the next job


def test_a_job_sees_only_its_own_projects_datasources(
    run_script: RunScript, root: Path, shop_db: Path
) -> None:
    write_sources(root / "alpha" / "analysis" / "datasources.toml", "", sqlite=shop_db)
    (root / "beta" / "analysis").mkdir(parents=True)
    (root / "beta" / "analysis" / "datasources.toml").write_text(
        f'[beta_shop]\nkind = "sqlite"\npath = "{shop_db}"\n', encoding="utf-8"
    )
    script = """
        def run(ctx, parameters):
            names = ctx.datasource_names()
            try:
                ctx.query_datasource("shop", "SELECT count(*) AS n FROM orders")
            except Exception as exc:
                return {"names": names, "error": type(exc).__name__}
            return {"names": names, "error": None}
        """
    assert run_script(script, project_id="alpha").result == {"names": ["shop"], "error": None}
    denied = run_script(script, project_id="beta")
    assert denied.result == {"names": ["beta_shop"], "error": "DatasourceNotFoundError"}


@pytest.mark.slow
@pytest.mark.parametrize("into", [False, True])
def test_the_deadline_cancels_the_server_query_and_frees_the_connection(
    into: bool, run_script: RunScript, tmp_path: Path, secret_key: str, pg_server: Any
) -> None:
    config = write_sources(tmp_path / "ds.toml", secret_key, pg=pg_server)
    into_arg = ', into="t"' if into else ""
    started = time.monotonic()
    result = run_script(
        f"""
        def run(ctx, parameters):
            return ctx.query_datasource("pg", "SELECT pg_sleep(60) AS deadline_sleep"{into_arg}).row_count
        """,
        datasources_file=config,
        timeout_s=4,
    )
    assert result.error_type == "timeout", result.to_dict()
    assert time.monotonic() - started < 30
    running = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%deadline_sleep%' "
        "AND pid <> pg_backend_pid()"
    )
    give_up = time.monotonic() + 10
    while pg_server.psql(running).strip() != "0" and time.monotonic() < give_up:
        time.sleep(0.05)
    assert pg_server.psql(running).strip() == "0"


@pytest.mark.slow
def test_cancelling_the_job_cancels_the_server_query(
    tmp_path: Path, root: Path, secret_key: str, pg_server: Any, no_leftovers: None
) -> None:
    import asyncio

    from analysis.runner import JobSpec
    from analysis.runner.jobs import run_job_to_envelope

    config = write_sources(tmp_path / "ds.toml", secret_key, pg=pg_server)
    script = tmp_path / "sleepy.py"
    script.write_text(
        "def run(ctx, parameters):\n"
        "    sql = 'SELECT pg_sleep(60) AS cancelled_sleep'\n"
        "    return ctx.query_datasource('pg', sql, into='t').row_count\n"
    )
    running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%cancelled_sleep%'"
    running += " AND pid <> pg_backend_pid()"

    async def scenario() -> JobResult:
        job = asyncio.create_task(
            run_job_to_envelope(JobSpec(source_path=script, root=root, datasources_file=config))
        )
        give_up = time.monotonic() + 60
        while (await asyncio.to_thread(pg_server.psql, running)).strip() != "1":
            assert time.monotonic() < give_up and not job.done()
            await asyncio.sleep(0.05)
        job.cancel()  # what AnalysisService does when a job is cancelled
        return await job

    result = asyncio.run(scenario())
    assert result.error_type == "cancelled", result.to_dict()
    give_up = time.monotonic() + 10
    while pg_server.psql(running).strip() != "0" and time.monotonic() < give_up:
        time.sleep(0.05)
    assert pg_server.psql(running).strip() == "0"


def test_a_notebook_job_uses_the_broker_too(
    tmp_path: Path, root: Path, shop_db: Path, secret_key: str, no_leftovers: None
) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from analysis.runner import JobSpec, run_job

    config = write_sources(tmp_path / "ds.toml", "", sqlite=shop_db)
    path = tmp_path / "nb_under_test.ipynb"
    nbformat.write(
        new_notebook(
            cells=[
                new_code_cell(
                    "import os\nrows = ctx.query_datasource('shop', 'SELECT count(*) AS n FROM orders').rows"
                ),
                new_code_cell(
                    "ctx.set_result({'rows': rows, 'key_seen': 'ANALYSIS_SECRET_KEY' in os.environ})"
                ),
            ]
        ),
        path,
    )
    result = run_job(JobSpec(source_path=path, root=root, datasources_file=config))
    assert result.success, result.to_dict()
    assert result.result == {"rows": [{"n": 3}], "key_seen": False}
    assert "[query:datasource] shop SELECT count(*) AS n FROM orders" in result.logs
    assert secret_key not in result.to_json()

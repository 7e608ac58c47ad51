"""End to end through the runner: a job deadline cancels the server query; no password anywhere."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from .conftest import servers
from .test_faults import _wait_gone


@pytest.fixture
def job_config(tmp_path: Path, pg_server: Any, my_server: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    from analysis.sources.secrets import encrypt

    key = Fernet.generate_key().decode()
    monkeypatch.setenv("ANALYSIS_SECRET_KEY", key)  # the kernel inherits the runner's environment
    token = encrypt(servers.PASSWORD, key)
    config = tmp_path / "datasources.toml"
    config.write_text(
        f'[pg]\nkind = "postgres"\nport = {pg_server.port}\ndatabase = "{servers.DATABASE}"\n'
        f'user = "{servers.USER}"\npassword_encrypted = "{token}"\n\n'
        f'[my]\nkind = "mysql"\nport = {my_server.port}\ndatabase = "{servers.DATABASE}"\n'
        f'user = "{servers.USER}"\npassword_encrypted = "{token}"\n',
        encoding="utf-8",
    )
    return config


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name", "sql"), [
    ("postgres", "pg", "SELECT pg_sleep(60)"),
    ("mysql", "my", "SELECT SLEEP(60)"),
])  # fmt: skip
def test_job_deadline_cancels_the_server_query(
    kind: str, name: str, sql: str, *, job_config: Path, run_script: Any, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    started = time.monotonic()
    result = run_script(
        f"def run(ctx, parameters):\n    return ctx.query_datasource({name!r}, {sql!r}).rows\n",
        datasources_file=job_config,
        timeout_s=3,
    )
    assert time.monotonic() - started < 30  # the query alone takes 60 s
    assert result.error_type == "timeout", result.to_dict()
    assert _wait_gone(kind, server, sql.split()[1]) == 0


@pytest.mark.slow
def test_password_is_in_no_log_envelope_or_job_file(job_config: Path, run_script: Any, root: Path) -> None:
    texts: list[str] = []
    ok = run_script(
        "def run(ctx, parameters):\n"
        "    a = ctx.query_datasource('pg', 'SELECT ? AS v', [1]).rows\n"
        "    n = ctx.query_datasource('my', 'SELECT 2 AS v', into='t').row_count\n"
        "    ctx.log(repr(ctx))\n"
        "    return {'a': a, 'n': n}\n",
        datasources_file=job_config,
    )
    assert ok.success, ok.to_dict()
    texts.append(ok.to_json())
    for body in (
        "def run(ctx, parameters):\n    return ctx.query_datasource('pg', 'SELEC nope').rows\n",
        "def run(ctx, parameters):\n    return ctx.query_datasource('my', 'SELEC nope').rows\n",
        "def run(ctx, parameters):\n    return ctx.query_datasource('missing', 'SELECT 1').rows\n",
    ):
        failed = run_script(body, datasources_file=job_config)
        assert not failed.success
        assert failed.error_type in ("datasource_error", "datasource_not_found"), failed.to_dict()
        texts.append(failed.to_json())
    for path in [*root.rglob("*"), *job_config.parent.rglob("*")]:
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    assert not [t for t in texts if servers.PASSWORD in t or "S3cr3t" in t]


@pytest.mark.slow
def test_first_into_of_a_job_imports_neither_pandas_nor_pyarrow_dataset(
    job_config: Path, run_script: Any
) -> None:
    """The first ``into=`` is what a job pays: no DataFrame library on the way (about 0.4 s)."""
    result = run_script(
        """
        import sys

        def run(ctx, parameters):
            ctx.query_datasource("pg", "SELECT 1 AS n, 2.50::numeric(4,2) AS x", into="a")
            ctx.query_datasource("my", "SELECT 1 AS n, CAST(2.5 AS DECIMAL(4,2)) AS x", into="b")  # ODBC
            blob = "SELECT 1 AS n, CAST(2.5 AS DECIMAL(4,2)) AS x, x'00' AS b"
            ctx.query_datasource("my", blob, into="c")  # connectorx
            total = "SELECT (SELECT x FROM a) + (SELECT x FROM b) + (SELECT x FROM c) AS s"
            imported = [m for m in ("pandas", "pyarrow.dataset") if m in sys.modules]
            return {"loaded": ctx.query(total).rows, "imported": imported}
        """,
        datasources_file=job_config,
    )
    assert result.success, result.to_dict()
    assert result.result == {"loaded": [{"s": 7.5}], "imported": []}

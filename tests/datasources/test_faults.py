"""Faults and time: unreachable servers, bad passwords, dropped connections, cancellation, leaks."""

from __future__ import annotations

import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis.errors import DatasourceError, DatasourceNotFoundError

from .conftest import servers, source_config


def _make(kind: str, server: Any, **extra: Any) -> Any:
    from analysis.sources.mysql import MySQLDatasource
    from analysis.sources.postgres import PostgresDatasource

    cls = PostgresDatasource if kind == "postgres" else MySQLDatasource
    return cls("faulty", source_config(kind, server, **extra))


class _Fake:
    def __init__(self, port: int) -> None:
        self.port = port


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound and never listening, so no other process can take
    it while the test runs (as it could a port that was merely free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def _assert_fails_fast(source: Any, within_s: float, match: str, *, into: bool = False) -> DatasourceError:
    """Assert the fault is reported, within a bound far above its time and below what it costs
    unhandled (a 10 s connect timeout, a long query), so a loaded machine cannot fail it."""
    from analysis.duck import Duck

    started = time.monotonic()
    duck = Duck()
    try:
        with pytest.raises(DatasourceError, match=match) as info:
            if into:
                source.query_into(duck, "t", "SELECT 1 AS one", None, timeout_s=30)
            else:
                source.query("SELECT 1", None, timeout_s=30)
    finally:
        source.close()
        duck.close()
    assert time.monotonic() - started < within_s
    assert servers.PASSWORD not in str(info.value)
    assert "'faulty'" in str(info.value)
    return info.value


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_connection_refused(kind: str, into: bool, refused_port: int) -> None:
    _assert_fails_fast(_make(kind, _Fake(refused_port)), 8, "cannot connect", into=into)


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_listener_that_never_answers_fails_within_the_connect_timeout(
    kind: str, into: bool, silent_listener: int
) -> None:
    source = _make(kind, _Fake(silent_listener), connect_timeout_s=2)
    _assert_fails_fast(source, 9, "cannot connect", into=into)  # under the default 10 s


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_wrong_password(kind: str, request: pytest.FixtureRequest) -> None:
    from analysis.sources.secrets import Secret

    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    source = _make(kind, server)
    source.password = Secret("not-" + servers.PASSWORD)
    error = _assert_fails_fast(source, 8, "cannot connect")
    assert "not-" + servers.PASSWORD not in str(error)
    assert "password" in str(error).lower() or "denied" in str(error).lower()


def _kill_soon(kind: str, server: Any, delay_s: float) -> threading.Thread:
    def kill() -> None:
        time.sleep(delay_s)
        if kind == "postgres":
            server.psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE usename = '{servers.USER}' AND query LIKE '%generate_series%' "
                "AND pid <> pg_backend_pid()"
            )
        else:
            ids = server.sql(
                "SELECT ID FROM information_schema.PROCESSLIST "
                f"WHERE USER = '{servers.USER}' AND INFO LIKE '%seq_1_to%'"
            ).split()
            for thread_id in ids:
                server.sql(f"KILL CONNECTION {int(thread_id)}")

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
@pytest.mark.parametrize("path", ["rows", "into"])
def test_server_closing_mid_result(kind: str, path: str, request: pytest.FixtureRequest, duck: Any) -> None:
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    source = _make(kind, server)
    sql = (
        "SELECT g, pg_sleep(CASE WHEN g = 20000 THEN 10 ELSE 0 END) FROM generate_series(1, 40000) g"
        if kind == "postgres"
        else "SELECT seq, IF(seq = 20000, SLEEP(10), 0) FROM seq_1_to_40000"
    )
    try:
        source.query("SELECT 1", None, timeout_s=5)  # connected before the kill
        thread = _kill_soon(kind, server, 0.7)
        started = time.monotonic()
        with pytest.raises(DatasourceError, match="'faulty'") as info:
            if path == "rows":
                source.query(sql, None, timeout_s=30)
            else:
                source.query_into(duck, "partial", sql, None, timeout_s=30)
        thread.join()
        assert time.monotonic() - started < 8  # the query alone takes 10 s
        assert servers.PASSWORD not in str(info.value)
        assert source.query("SELECT 1 AS one", None, timeout_s=5).to_pylist() == [{"one": 1}]  # reconnects
    finally:
        source.close()


def _running(kind: str, server: Any, needle: str) -> int:
    if kind == "postgres":
        out = server.psql(
            f"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{needle}%' "
            "AND pid <> pg_backend_pid()"
        )
    else:
        out = server.sql(
            f"SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%{needle}%' "
            "AND ID <> CONNECTION_ID()"
        )
    return int(out.strip())


def _wait_gone(kind: str, server: Any, needle: str) -> int:
    deadline = time.monotonic() + 2
    while (count := _running(kind, server, needle)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


SLEEP = {"postgres": "SELECT pg_sleep(60) AS s", "mysql": "SELECT SLEEP(60) AS s"}
# MySQL's bulk path reads plain columns through ODBC and others (here a VARBINARY) through connectorx
CASES = [
    ("postgres", "rows", SLEEP["postgres"]),
    ("postgres", "into", SLEEP["postgres"]),
    ("mysql", "rows", SLEEP["mysql"]),
    ("mysql", "into", SLEEP["mysql"]),
    ("mysql", "into", "SELECT SLEEP(60) AS s, X'00' AS b"),
]


def _run(source: Any, path: str, sql: str, duck: Any, timeout_s: float) -> Callable[[], Any]:
    if path == "rows":
        return lambda: source.query(sql, None, timeout_s=timeout_s)
    return lambda: source.query_into(duck, "slept", sql, None, timeout_s=timeout_s)


@pytest.mark.parametrize(("kind", "path", "sql"), CASES)
def test_interrupt_from_another_thread_cancels_on_the_server(
    kind: str, path: str, sql: str, request: pytest.FixtureRequest, duck: Any
) -> None:
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    source = request.getfixturevalue("pg" if kind == "postgres" else "my")
    timer = threading.Timer(0.5, source.interrupt)
    timer.start()
    started = time.monotonic()
    with pytest.raises(DatasourceError, match="cancelled"):
        _run(source, path, sql, duck, 60)()
    timer.join()
    assert time.monotonic() - started < 30  # the query alone takes 60 s
    assert _wait_gone(kind, server, sql.split()[1]) == 0


@pytest.mark.parametrize(("kind", "path", "sql"), CASES)
def test_statement_time_limit_stops_the_query_on_the_server(
    kind: str, path: str, sql: str, request: pytest.FixtureRequest, duck: Any
) -> None:
    server = request.getfixturevalue("pg_server" if kind == "postgres" else "my_server")
    source = _make(kind, server, statement_timeout_s=0.8)
    try:
        started = time.monotonic()
        with pytest.raises(DatasourceError, match=r"cancelled at its time limit of 0\.8 s"):
            _run(source, path, sql, duck, 30)()
        assert time.monotonic() - started < 20  # the query alone takes 60 s, the job's limit 30 s
        assert _wait_gone(kind, server, sql.split()[1]) == 0
        # what is left of the job's deadline is a limit too
        with pytest.raises(DatasourceError, match=r"time limit of 0\.5 s"):
            _run(source, path, sql, duck, 0.5)()
    finally:
        source.close()


def test_unknown_datasource_names_the_configured_ones(tmp_path: Path) -> None:
    from analysis.config import Settings
    from analysis.context import Context

    config = tmp_path / "datasources.toml"
    config.write_text('[warehouse]\nkind = "postgres"\n\n[shop]\nkind = "mysql"\n', encoding="utf-8")
    ctx = Context(settings=Settings(root=tmp_path, datasources_file=config))
    try:
        with pytest.raises(DatasourceNotFoundError, match=r"'nope'.*shop, warehouse"):
            ctx.query_datasource("nope", "SELECT 1")
    finally:
        ctx.close()


def test_password_never_shows_in_repr_errors_or_tracebacks(  # noqa: PLR0917 (fixtures)
    tmp_path: Path,
    pg_server: Any,
    my_server: Any,
    refused_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cryptography.fernet import Fernet

    from analysis.config import Settings
    from analysis.context import Context
    from analysis.sources.secrets import encrypt

    key = Fernet.generate_key().decode()
    monkeypatch.setenv("ANALYSIS_SECRET_KEY", key)
    token = encrypt(servers.PASSWORD, key)
    config = tmp_path / "datasources.toml"
    config.write_text(
        f'[pg]\nkind = "postgres"\nport = {pg_server.port}\ndatabase = "{servers.DATABASE}"\n'
        f'user = "{servers.USER}"\npassword_encrypted = "{token}"\n\n'
        f'[my]\nkind = "mysql"\nport = {my_server.port}\ndatabase = "{servers.DATABASE}"\n'
        f'user = "{servers.USER}"\npassword_encrypted = "{token}"\n\n'
        f'[down]\nkind = "postgres"\nport = {refused_port}\nuser = "{servers.USER}"\n'
        f'password_encrypted = "{token}"\nconnect_timeout_s = 2\n\n'
        f'[mydown]\nkind = "mysql"\nport = {refused_port}\nuser = "{servers.USER}"\n'
        f'password_encrypted = "{token}"\nconnect_timeout_s = 2\n',
        encoding="utf-8",
    )
    ctx = Context(settings=Settings(root=tmp_path, datasources_file=config, secret_key=key))
    texts = [repr(ctx)]
    try:
        for name in ("pg", "my"):
            assert ctx.query_datasource(name, "SELECT ? AS v", [1]).rows[0]["v"] in (1, "1")
            texts += [repr(ctx._access.sources.get(name)), repr(ctx._access.sources.get(name).config)]
        failing = [(n, "SELEC broken", into) for n in ("pg", "my") for into in (None, "t")]
        failing += [(n, "SELECT 1", into) for n in ("down", "mydown") for into in (None, "t")]
        for name, sql, into in failing:
            try:
                ctx.query_datasource(name, sql, into=into)
            except DatasourceError as exc:
                texts += [str(exc), "".join(traceback.format_exception(exc)), repr(exc.to_dict())]
            else:
                pytest.fail(f"{name}: {sql} (into={into}) did not fail")
    finally:
        ctx.close()
    captured = capsys.readouterr()
    texts += [captured.out, captured.err]
    leaked = [t for t in texts if servers.PASSWORD in t or "S3cr3t" in t]
    assert not leaked

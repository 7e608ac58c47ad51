"""Session fixtures: a real PostgreSQL 15 and MariaDB 10.11, started once on free loopback ports.

A missing server binary skips the tests that need it, with the reason; with ``CI=true`` in the
environment it fails them instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "analysis_test_servers", Path(__file__).with_name("servers.py")
)
assert _spec is not None and _spec.loader is not None
servers = importlib.util.module_from_spec(_spec)
sys.modules["analysis_test_servers"] = servers
_spec.loader.exec_module(servers)


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing server is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    reason = servers.PostgresServer.available()
    if reason:
        _missing(reason)
    server = servers.PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def my_server() -> Iterator[Any]:
    reason = servers.MariaDBServer.available()
    if reason:
        _missing(reason)
    server = servers.MariaDBServer().start()
    try:
        yield server
    finally:
        server.stop()


def source_config(kind: str, server: Any, **extra: Any) -> dict[str, Any]:
    """A datasource table for ``server`` with the password resolved, as ``Datasources`` would give it."""
    from analysis.sources.secrets import Secret

    return {
        "kind": kind,
        "host": "127.0.0.1",
        "port": server.port,
        "database": servers.DATABASE,
        "user": servers.USER,
        "password": Secret(servers.PASSWORD),
        "connect_timeout_s": 3,
        **extra,
    }


@pytest.fixture
def pg(pg_server: Any) -> Iterator[Any]:
    from analysis.sources.postgres import PostgresDatasource

    source = PostgresDatasource("warehouse", source_config("postgres", pg_server))
    try:
        yield source
    finally:
        source.close()


@pytest.fixture
def my(my_server: Any) -> Iterator[Any]:
    from analysis.sources.mysql import MySQLDatasource

    source = MySQLDatasource("shop", source_config("mysql", my_server))
    try:
        yield source
    finally:
        source.close()


@pytest.fixture(params=["postgres", "mysql"])
def any_source(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("pg" if request.param == "postgres" else "my")


@pytest.fixture
def duck() -> Iterator[Any]:
    from analysis.duck import Duck

    d = Duck()
    try:
        yield d
    finally:
        d.close()


@pytest.fixture(scope="session")
def odbc_driver() -> str:
    """The MariaDB ODBC driver's name, when unixODBC knows it (Debian: odbc-mariadb)."""
    ini = Path("/etc/odbcinst.ini")
    if not ini.is_file() or "[MariaDB Unicode]" not in ini.read_text(errors="replace"):
        _missing(
            "MariaDB Connector/ODBC is not installed (install odbc-mariadb): the MySQL bulk path uses it"
        )
    return "MariaDB Unicode"

"""Fixtures of the result cache tests: a real PostgreSQL server that counts the queries it runs.

Counting is done on the server, deterministically: the test database has a function
``counted(tag)`` that inserts a row into ``calls`` each time a statement runs it (the
datasource is configured ``read_only = false`` so the insert commits), so
``SELECT count(*) FROM calls WHERE tag = ...`` is how many times a query reached the server.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet


def _servers() -> Any:
    if "analysis_test_servers" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "analysis_test_servers", Path(__file__).parent.parent / "datasources" / "servers.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["analysis_test_servers"] = module
        spec.loader.exec_module(module)
    return sys.modules["analysis_test_servers"]


servers = _servers()


class CountingPostgres:
    """The server, and how many times a tagged query ran on it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.port: int = server.port
        server.psql(
            "CREATE TABLE calls (tag text NOT NULL);"
            "CREATE FUNCTION counted(tag text) RETURNS int LANGUAGE sql VOLATILE AS "
            "$$ INSERT INTO calls VALUES (tag) RETURNING 1 $$;",
            database=servers.DATABASE,
            user=servers.USER,
        )

    def calls(self, tag: str) -> int:
        """How many statements ran ``counted(tag)``."""
        out = self.server.psql(
            f"SELECT count(*) FROM calls WHERE tag = '{tag}'", database=servers.DATABASE, user=servers.USER
        )
        return int(out.strip())

    @staticmethod
    def tag() -> str:
        """A fresh tag, so tests do not count each other's calls."""
        return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def counting_pg() -> Iterator[CountingPostgres]:
    reason = servers.PostgresServer.available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a missing server is a failure)")
        pytest.skip(reason)
    server = servers.PostgresServer().start()
    try:
        yield CountingPostgres(server)
    finally:
        server.stop()


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("ANALYSIS_SECRET_KEY", key)
    return key


@pytest.fixture
def sources_file(tmp_path: Path, secret_key: str, counting_pg: CountingPostgres) -> Path:
    """Datasources ``pg`` (read-write, so ``counted`` commits) and ``pg_default`` (with cache_ttl_s)."""
    from analysis.sources.secrets import encrypt

    token = encrypt(servers.PASSWORD, secret_key)
    common = (
        f'kind = "postgres"\nport = {counting_pg.port}\ndatabase = "{servers.DATABASE}"\n'
        f'user = "{servers.USER}"\npassword_encrypted = "{token}"\nread_only = false\n'
    )
    path = tmp_path / "datasources.toml"
    path.write_text(f"[pg]\n{common}\n[pg_default]\n{common}cache_ttl_s = 3600\n", encoding="utf-8")
    return path

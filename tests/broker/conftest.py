"""Fixtures of the broker tests: real database servers, the reference file server, a broker on a socket.

The servers come from ``tests/datasources/servers.py`` (a missing binary skips, or fails with
``CI=true``); the file API is the reference server (``analysis files serve``) under uvicorn.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.runner.broker import BrokerLimits, BrokerServer, ConnectionPool


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
TOKEN = "broker-test-token-b7f3e1"


def _server(cls: Any) -> Iterator[Any]:
    reason = cls.available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a missing server is a failure)")
        pytest.skip(reason)
    server = cls().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    yield from _server(servers.PostgresServer)


@pytest.fixture(scope="session")
def my_server() -> Iterator[Any]:
    yield from _server(servers.MariaDBServer)


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh ``ANALYSIS_SECRET_KEY`` in the runner's environment."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("ANALYSIS_SECRET_KEY", key)
    return key


def write_sources(
    path: Path, key: str, *, pg: Any = None, my: Any = None, sqlite: Path | None = None
) -> Path:
    """A datasources file with the given servers (``pg``, ``my``) and SQLite file (``shop``)."""
    from analysis.sources.secrets import encrypt

    token = encrypt(servers.PASSWORD, key) if pg is not None or my is not None else ""
    text = ""
    if pg is not None:
        text += (
            f'[pg]\nkind = "postgres"\nport = {pg.port}\ndatabase = "{servers.DATABASE}"\n'
            f'user = "{servers.USER}"\npassword_encrypted = "{token}"\n\n'
        )
    if my is not None:
        text += (
            f'[my]\nkind = "mysql"\nport = {my.port}\ndatabase = "{servers.DATABASE}"\n'
            f'user = "{servers.USER}"\npassword_encrypted = "{token}"\n\n'
        )
    if sqlite is not None:
        text += f'[shop]\nkind = "sqlite"\npath = "{sqlite}"\n'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def mariadb_connections(server: Any) -> int:
    """Connections the MariaDB ``server`` has accepted so far (this question itself is one more)."""
    return int(server.sql("SHOW GLOBAL STATUS LIKE 'Connections'").split()[-1])


@pytest.fixture
def shop_db(tmp_path: Path) -> Path:
    """A SQLite file with a table ``orders`` of 3 rows and ``big`` of 200,000 rows."""
    path = tmp_path / "shop.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE orders (id INTEGER, item TEXT, amount REAL);"
        "INSERT INTO orders VALUES (1, 'apple', 1.5), (2, 'pear', 2.25), (3, 'fig', NULL);"
        "CREATE TABLE big (n INTEGER, s TEXT);"
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 200000) "
        "INSERT INTO big SELECT n, printf('row-%08d', n) FROM c;"
    )
    con.commit()
    con.close()
    return path


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The reference file API over a few files, requiring ``TOKEN``; yields its base URL."""
    import uvicorn

    from analysis.runner.fileserver import create_app

    root = tmp_path_factory.mktemp("broker-files")
    (root / "sales.csv").write_text("region,amount\nnorth,10\nsouth,7\n")
    (root / "notes.txt").write_text("hello from the file API\n")
    config = uvicorn.Config(
        create_app(root, token=TOKEN),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        ws="none",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    give_up = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < give_up and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerServer]]:
    """Start brokers on sockets in fresh job directories (stopped after the test)."""
    started: list[tuple[BrokerServer, ConnectionPool]] = []

    def make(
        settings: Settings, *, project_id: str = "default", pool: ConnectionPool | None = None, **limits: Any
    ) -> BrokerServer:
        job_dir = tmp_path / f"job{len(started)}"
        job_dir.mkdir(mode=0o700)
        own = pool if pool is not None else ConnectionPool()
        server = BrokerServer(
            job_dir, project_id, settings, deadline=Deadline(None), pool=own, limits=BrokerLimits(**limits)
        ).start()
        started.append((server, own))
        return server

    yield make
    for server, pool in started:
        server.stop()
        pool.close()

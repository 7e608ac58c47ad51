"""Fixtures: the server as a real subprocess on a free port, over SQLite or a private PostgreSQL.

``serve`` starts ``analysis serve`` and waits for ``/healthz``; the store is parametrized so every
test that uses ``store_url`` runs on both. Tokens are minted straight into the store.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from analysis.runner.server.auth import create_token
from analysis.runner.server.store import Store, default_url, open_store

_spec = importlib.util.spec_from_file_location(
    "analysis_test_servers", Path(__file__).parents[1] / "datasources" / "servers.py"
)
assert _spec is not None and _spec.loader is not None
servers = sys.modules.get("analysis_test_servers") or importlib.util.module_from_spec(_spec)
if "analysis_test_servers" not in sys.modules:
    sys.modules["analysis_test_servers"] = servers
    _spec.loader.exec_module(servers)


@pytest.fixture(scope="session")
def pg_store_server() -> Iterator[Any]:
    """A private PostgreSQL for the store tests."""
    reason = servers.PostgresServer.available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a missing server is a failure)")
        pytest.skip(reason)
    server = servers.PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, root: Path) -> str:
    """A fresh, empty store: SQLite under the root, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return default_url(root)
    pg = request.getfixturevalue("pg_store_server")
    database = f"store_{uuid.uuid4().hex[:12]}"
    pg.psql(f"CREATE DATABASE {database} OWNER {servers.USER}")
    import sqlalchemy as sa

    url = sa.URL.create(
        "postgresql+psycopg", username=servers.USER, password=servers.PASSWORD, host="127.0.0.1",
        port=pg.port, database=database,
    )  # fmt: skip
    return url.render_as_string(hide_password=False)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """The test's store, opened in the test process (to mint tokens and inspect rows)."""
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@dataclass
class ServerProcess:
    """A running ``analysis serve``."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path
    admin: str
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, project: str | None = None, **kwargs: Any) -> httpx.Client:
        """An HTTP client with the token of ``project`` (admin's when ``None``)."""
        token = self.admin if project is None else self.tokens[project]
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=120, **kwargs
        )

    def kernels(self) -> list[psutil.Process]:
        """The kernel processes of this server still alive (not zombies killed and not yet reaped)."""
        alive = []
        for process in _descendants(self.popen.pid):
            try:
                if "analysis.kernel_app" in " ".join(process.cmdline()):
                    alive.append(process)
            except psutil.Error:  # ended, or a zombie
                continue
        return alive

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server and wait for it to exit; its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout)

    def output(self) -> str:
        """What the server printed."""
        return self.log.read_text(errors="replace")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


Serve = Callable[..., ServerProcess]


def _launch(
    root: Path,
    store_url: str,
    log: Path,
    tokens: dict[str, str],
    *,
    projects: tuple[str, ...],
    args: tuple[str, ...],
    sandbox: str | None = None,
) -> ServerProcess:
    store = open_store(store_url)
    try:
        if "admin" not in tokens:
            tokens["admin"] = create_token(store, project_id=None, admin=True)
        for project in projects:
            if project not in tokens:
                tokens[project] = create_token(store, project_id=project)
    finally:
        store.close()
    with log.open("wb") as out:
        popen = subprocess.Popen(
            # --port 0: the server binds a free port itself and says which (no port picked here
            # that another process could take before the server binds it)
            [sys.executable, "-m", "analysis.runner.cli", "serve", "--root", str(root), "--db", store_url,
             "--port", "0", *args],
            stdout=out, stderr=subprocess.STDOUT,
            env=None if sandbox is None else {**os.environ, "ANALYSIS_SANDBOX": sandbox},
        )  # fmt: skip
    server = ServerProcess(popen, "", log, tokens["admin"])
    server.tokens = {k: v for k, v in tokens.items() if k != "admin"}
    give_up = time.monotonic() + 60
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"the server exited ({popen.returncode}): {server.output()}")
        if not server.url:
            bound = re.search(r"listening on (http://\S+)", server.output())
            server.url = bound.group(1) if bound else ""
        try:
            if server.url and httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > give_up:
            raise RuntimeError(f"the server did not start: {server.output()}")
        time.sleep(0.1)


def _stop_all(started: list[ServerProcess]) -> None:
    for server in started:
        kids = _descendants(server.popen.pid)
        if server.popen.poll() is None:
            server.popen.kill()
            server.popen.wait(30)
        for kid in kids:
            try:
                os.killpg(kid.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def serve(root: Path, store_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Start servers on free ports (``serve(*cli_args, projects=("a", "b"))``); stopped after the test.

    A test marked ``host_files`` gets unsandboxed servers: its analyses wait for files the test
    writes on the host, which a sandboxed job cannot see.
    """
    started: list[ServerProcess] = []
    tokens: dict[str, str] = {}
    sandbox = "off" if request.node.get_closest_marker("host_files") else None

    def start(*args: str, projects: tuple[str, ...] = ("alpha", "beta")) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        started.append(_launch(root, store_url, log, tokens, projects=projects, args=args, sandbox=sandbox))
        return started[-1]

    yield start
    _stop_all(started)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole module (SQLite store), with a saved analysis ``hello`` in ``alpha``."""
    base = tmp_path_factory.mktemp("module-server")
    root = base / ".clients"
    _save(root, "alpha", "hello", "def run(ctx, parameters):\n    return parameters\n")
    started = [_launch(root, default_url(root), base / "server.log", {}, projects=("alpha",), args=())]
    yield started[0]
    _stop_all(started)


@pytest.fixture
def save(root: Path) -> Callable[[str, str, str], Path]:
    """``save(project, analysis_id, source)`` writes a saved analysis into the root, as a user would."""
    return partial(_save, root)


def _save(root: Path, project: str, analysis_id: str, source: str) -> Path:
    path = root / project / "analysis" / "scripts" / f"{analysis_id}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 90, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def final() -> Callable[..., dict[str, Any]]:
    """``final(client, project, job_id)`` polls a job until it is final and returns it."""
    return _final


def _final(client: httpx.Client, project: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll a job until it reaches a final state; its document."""

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/projects/{project}/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = wait_for(done, timeout, f"job {job_id} to finish")
    return result

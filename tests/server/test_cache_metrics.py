"""The result cache's hit/miss/bytes counters on the server's /metrics, per project, over real HTTP.

Over SQLite the server runs its jobs itself; over PostgreSQL its local worker or an ``analysis
worker`` process runs them, and adds their counters to the store.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cache.test_write_failures import mounted

from .conftest import wait_for

pytestmark = pytest.mark.slow

CACHED = """
def run(ctx, parameters):
    return ctx.query_datasource("shop", "SELECT sum(n) AS s FROM items", cache="1h").rows
"""


def _shop(root: Path, project: str) -> None:
    folder = root / project / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "shop.db") as db:
        db.execute("CREATE TABLE items (n INTEGER)")
        db.executemany("INSERT INTO items VALUES (?)", [(n,) for n in range(1, 101)])
    db.close()
    (folder / "datasources.toml").write_text('[shop]\nkind = "sqlite"\npath = "shop.db"\n', encoding="utf-8")


def _value(text: str, name: str, project: str) -> float:
    found = re.search(rf'^{name}\{{project="{project}"\}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"no {name} for {project} in:\n{text}"
    return float(found.group(1))


def _run_jobs(server: Any) -> None:
    """Run alpha's cached job three times and beta's once."""
    with server.client("alpha") as alpha, server.client("beta") as beta:
        for http, project, times in ((alpha, "alpha", 3), (beta, "beta", 1)):
            for _ in range(times):
                job = http.post(f"/v1/projects/{project}/jobs", json={"analysis_id": "cached", "wait": 120})
                envelope = job.json().get("envelope") or {}
                assert job.status_code == 200 and envelope.get("result") == [{"s": 5050}], job.text


def _admin_metrics(server: Any) -> str:
    """/metrics once beta's miss is counted (a worker adds its counts just after the job ends)."""

    def counted() -> str | None:
        text = str(admin.get("/metrics").text)
        return text if 'analysis_cache_misses_total{project="beta"}' in text else None

    with server.client() as admin:
        return str(wait_for(counted, 60, "beta's cache counters"))


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
def test_cache_counters_per_project_for_admins_only(serve: Any, save: Any, root: Path) -> None:
    """Over PostgreSQL the server's local worker runs the jobs in the server's process: counted once."""
    for project in ("alpha", "beta"):
        _shop(root, project)
        _shop(root / ".server" / "local-worker", project)  # where the local worker runs its jobs
        save(project, "cached", CACHED)
    server = serve()
    with server.client("alpha") as alpha:
        _run_jobs(server)
        refused = alpha.get("/metrics")
    text = _admin_metrics(server)
    _assert_counts(text)
    # a project's token sees no project's labels: /metrics is for admins
    assert refused.status_code == 403 and "beta" not in refused.text and "analysis_cache" not in refused.text


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_the_counters_of_an_analysis_workers_jobs_reach_the_server(
    serve: Any, save: Any, root: Path, tmp_path: Path, store_url: str
) -> None:
    worker_root = tmp_path / "worker"
    for project in ("alpha", "beta"):
        _shop(root, project)
        _shop(worker_root, project)  # the datasource's file, on the worker's machine
        save(project, "cached", CACHED)
    _assert_counts(_jobs_on_a_worker(serve, store_url, worker_root))


def _jobs_on_a_worker(serve: Any, store_url: str, worker_root: Path) -> str:
    """Run the projects' jobs on an ``analysis worker`` (its own root) of a server with no worker
    of its own; the server's admin ``/metrics`` after."""
    server = serve("--local-workers", "0")
    worker = subprocess.Popen(
        [sys.executable, "-m", "analysis.runner.cli", "worker", "--db", store_url,
         "--root", str(worker_root), "--name", "machine-2", "--concurrency", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _run_jobs(server)  # every job succeeds with its result
        return _admin_metrics(server)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)


def _assert_counts(text: str) -> None:
    assert _value(text, "analysis_cache_misses_total", "alpha") == 1
    assert _value(text, "analysis_cache_stored_total", "alpha") == 1
    assert _value(text, "analysis_cache_hits_total", "alpha") == 2
    written = _value(text, "analysis_cache_written_bytes_total", "alpha")
    assert written > 0 and _value(text, "analysis_cache_read_bytes_total", "alpha") == 2 * written
    assert _value(text, "analysis_cache_misses_total", "beta") == 1
    assert _value(text, "analysis_cache_hits_total", "beta") == 0


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_an_analysis_worker_s_failed_cache_writes_reach_the_server(
    serve: Any, save: Any, root: Path, tmp_path: Path, store_url: str
) -> None:
    """beta's cache folder on the worker is a read-only file system: its job succeeds, uncached, counted."""
    worker_root = tmp_path / "worker"
    for project in ("alpha", "beta"):
        _shop(root, project)
        _shop(worker_root, project)
        save(project, "cached", CACHED)
    with mounted(worker_root / "beta" / "analysis" / "cache", "size=1m,ro"):
        text = _jobs_on_a_worker(serve, store_url, worker_root)
    assert _value(text, "analysis_cache_write_failures_total", "beta") == 1
    assert _value(text, "analysis_cache_stored_total", "beta") == 0
    assert _value(text, "analysis_cache_write_failures_total", "alpha") == 0
    assert _value(text, "analysis_cache_stored_total", "alpha") == 1

"""A PostgreSQL store queues every job through procrastinate (README, "Running on several machines").

The server's local worker runs them (``--local-workers N``, default ``--max-concurrent-jobs``);
with ``--local-workers 0`` they wait for an ``analysis worker``. Over SQLite the server runs its
jobs itself and refuses the queue's options.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

HELLO = "def run(ctx, parameters):\n    return parameters.get('n')\n"


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def postgres_url(store_url: str) -> str:
    if not store_url.startswith("postgresql"):
        pytest.skip("the queue is PostgreSQL's")
    return store_url


def test_the_server_s_local_worker_runs_queued_jobs(serve: Any, save: Any, postgres_url: str) -> None:
    save("alpha", "hello", HELLO)
    server = serve()  # no --workers: the default of a PostgreSQL store
    with server.client("alpha") as http:
        job = http.post(
            "/v1/projects/alpha/jobs", json={"analysis_id": "hello", "parameters": {"n": 3}, "wait": 120}
        )
        assert job.status_code == 200, job.text
        done = job.json()
        assert done["status"] == "succeeded" and done["envelope"]["result"] == 3
        assert done["worker"].endswith(":local"), "the job went through the queue to the local worker"
    with server.client() as admin:  # the server's view of the queue counts its local worker
        wait_for(lambda: "analysis_workers 1.0" in admin.get("/metrics").text, 60, "one registered worker")


def test_with_no_local_worker_jobs_wait_for_an_analysis_worker(
    serve: Any, save: Any, postgres_url: str, tmp_path: Path, final: Any
) -> None:
    save("alpha", "hello", HELLO)
    server = serve("--local-workers", "0")
    with server.client("alpha") as http:
        job = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "hello", "parameters": {"n": 5}})
        assert job.status_code == 202 and job.json()["status"] == "queued"
        worker = subprocess.Popen(
            [sys.executable, "-m", "analysis.runner.cli", "worker", "--db", postgres_url,
             "--root", str(tmp_path / "worker"), "--name", "machine-2", "--concurrency", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            done = final(http, "alpha", job.json()["id"])
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(120)
    assert done["status"] == "succeeded" and done["envelope"]["result"] == 5
    assert done["worker"] == "machine-2"


def test_bad_serve_options_are_refused_naming_the_option(root: Path) -> None:
    for option, says in (
        (["--artifact-ttl", "nan"], "--artifact-ttl must be 0"),
        (["--artifact-ttl", "-5"], "--artifact-ttl must be 0"),
        (["--pool-size", "-1"], "--pool-size must be 0"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "analysis.runner.cli", "serve", "--root", str(root), *option],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 2 and says in done.stderr, (option, done.stderr)
    assert not (root / ".server").exists(), "nothing was created for a refused command"


def test_a_port_in_use_is_refused_naming_it(root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "analysis.runner.cli", "serve", "--root", str(root), "--port", str(port)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_sqlite_refuses_the_queue_s_options(root: Path) -> None:
    for option in (["--local-workers", "2"], ["--workers"]):
        done = subprocess.run(
            [sys.executable, "-m", "analysis.runner.cli", "serve", "--root", str(root), *option],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 2
        assert f"{option[0]} needs --db postgresql://" in done.stderr

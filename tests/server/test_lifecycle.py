"""Nothing lost: kill -9 mid-job, restart, SIGTERM with and without enough grace; the kernel pool."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

# analyses coordinate with the test through host files (host_files: unsandboxed servers)
pytestmark = [pytest.mark.slow, pytest.mark.host_files]

# First attempt: note it and block until released. A later attempt returns at once.
BLOCK = """
import time
from pathlib import Path


def run(ctx, parameters):
    started = Path(parameters["started"])
    if started.exists():
        return "second attempt"
    started.write_text("yes")
    while not Path(parameters["release"]).exists():
        time.sleep(0.05)
    return "released"
"""


#: uvicorn re-raises the signal once its graceful shutdown is done.
_CLEAN_EXIT = (0, -signal.SIGTERM)


def _wait_file(path: Path, timeout: float = 90) -> None:
    give_up = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < give_up, f"{path} never appeared"
        time.sleep(0.05)


def wait_for(predicate: Any, timeout: float = 120, what: str = "condition") -> Any:
    give_up = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_blocked(server: Any, root: Path, retries: int = 0) -> tuple[str, list[psutil.Process]]:
    with server.client("alpha") as http:
        upload = http.put("/v1/projects/alpha/analyses/block", json={"source": BLOCK, "retries": retries})
        assert upload.status_code in (200, 201), upload.text
        params = {"started": str(root / "started"), "release": str(root / "release")}
        job = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "block", "parameters": params}).json()
    _wait_file(root / "started")
    kernels = server.kernels()  # the job's, and any warm kernel of the pool started by then
    assert kernels
    return job["id"], kernels


def _dirs_of_others(root: Path, pid: int) -> list[Path]:
    """Job directories under ``root`` not owned by process ``pid`` (a dead server's leftovers)."""
    dirs = root.glob("*/analysis/temp/*")
    return [d for d in dirs if (d / "runner.pid").read_text().split()[0] != str(pid)]


@pytest.mark.parametrize("retries", [0, 1])
def test_kill_9_mid_job_then_restart(serve: Any, root: Path, final: Any, retries: int) -> None:
    server = serve()
    job_id, kernels = _start_blocked(server, root, retries)
    server.stop(signal.SIGKILL)
    try:
        restarted = serve()
        assert all(_gone(k) for k in kernels), "the kernel of the lost job was killed on restart"
        with restarted.client("alpha") as http:
            job = final(http, "alpha", job_id)
    finally:
        for kernel in kernels:
            if not _gone(kernel):
                kernel.kill()
    if retries:
        assert job["status"] == "succeeded" and job["attempt"] == 2
        assert job["envelope"]["result"] == "second attempt"
    else:
        assert job["status"] == "failed" and job["error_type"] == "worker_lost"
        assert job["envelope"]["error_type"] == "worker_lost" and job["attempt"] == 1
        assert "was not retried" in job["envelope"]["error"]
    assert not _dirs_of_others(root, restarted.popen.pid)


def test_sigterm_stops_accepting_and_lets_running_jobs_finish(serve: Any, root: Path, store: Any) -> None:
    server = serve("--grace", "120")
    job_id, kernels = _start_blocked(server, root)
    server.popen.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            httpx.get(f"{server.url}/healthz", timeout=5)
        except httpx.TransportError:
            return True
        return False

    give_up = time.monotonic() + 60
    while not refused():
        assert time.monotonic() < give_up, "the server kept accepting connections after SIGTERM"
        time.sleep(0.1)
    assert server.popen.poll() is None, "the server waits for its running job"
    (root / "release").write_text("go")
    assert server.popen.wait(120) in _CLEAN_EXIT
    job = store.get_job("alpha", job_id)
    assert job["status"] == "succeeded"
    assert all(_gone(k) for k in kernels)


def test_sigterm_past_the_grace_period_cancels_running_jobs(serve: Any, root: Path, store: Any) -> None:
    server = serve("--grace", "1")
    job_id, kernels = _start_blocked(server, root)
    assert server.stop(signal.SIGTERM, timeout=120) in _CLEAN_EXIT
    job = store.get_job("alpha", job_id)
    assert job["status"] == "cancelled" and job["error_type"] == "cancelled"
    assert '"error_type": "cancelled"' in job["envelope"]
    assert all(_gone(k) for k in kernels)
    assert not list(root.glob("*/analysis/temp/*"))


def test_queued_jobs_survive_a_restart(serve: Any, root: Path, final: Any) -> None:
    server = serve("--grace", "1", "--max-concurrent-jobs", "1")
    blocked, _ = _start_blocked(server, root)
    with server.client("alpha") as http:
        http.put(
            "/v1/projects/alpha/analyses/hello", json={"source": "def run(ctx, parameters):\n    return 7\n"}
        )
        waiting = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "hello"}).json()
        assert waiting["status"] == "queued"
    assert server.stop(signal.SIGTERM, timeout=120) in _CLEAN_EXIT
    restarted = serve()
    with restarted.client("alpha") as http:
        # the running job was cancelled past the grace period (a PostgreSQL store's local worker too)
        assert http.get(f"/v1/projects/alpha/jobs/{blocked}").json()["status"] == "cancelled"
        done = final(http, "alpha", waiting["id"])
    assert done["status"] == "succeeded" and done["envelope"]["result"] == 7 and done["attempt"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_pool_s_warm_kernels_end_with_the_server(serve: Any, root: Path, sig: int) -> None:
    server = serve("--pool-size", "2", "--grace", "5")
    with server.client("alpha") as http:
        hello = {"source": "def run(ctx, parameters):\n    return 7\n"}
        assert http.put("/v1/projects/alpha/analyses/hello", json=hello).status_code == 201
        first = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "hello", "wait": 120}).json()
        assert first["status"] == "succeeded"

        def two_warm() -> list[psutil.Process] | None:
            kernels = server.kernels()
            return kernels if len(kernels) == 2 else None

        warm = wait_for(two_warm, what="the pool to start two warm kernels for alpha")
        second = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "hello", "wait": 120}).json()
        assert second["status"] == "succeeded" and second["envelope"]["result"] == 7
        wait_for(lambda: any(_gone(k) for k in warm), what="the second job to take (and end) a warm kernel")
        kernels = wait_for(two_warm, what="the pool to refill")
    server.stop(sig, timeout=120)
    wait_for(lambda: all(_gone(k) for k in kernels), timeout=30, what="warm kernels to die with the server")
    if sig == signal.SIGTERM:
        assert not list(root.glob("*/analysis/temp/*"))
        return
    restarted = serve("--pool-size", "0")  # the dead server's job directories go on restart
    assert not list(root.glob("*/analysis/temp/*"))
    assert restarted.kernels() == []

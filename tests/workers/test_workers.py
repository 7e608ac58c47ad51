"""Jobs on several machines: ``analysis serve --workers`` and ``analysis worker`` in network namespaces.

Each process runs in its own namespace and working directory; only PostgreSQL is shared. The
analyses below report the working directory of the worker that ran them (``os.getcwd()``), which
tells the workers apart.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from analysis.runner.server.auth import create_token
from analysis.runner.server.store import open_store

pytestmark = pytest.mark.slow

WHERE = """
import os, time

def run(ctx, parameters):
    time.sleep(parameters.get("sleep", 0))
    return os.getcwd()
"""
# The first attempt notes where it runs, then blocks; a later attempt returns where it runs.
BLOCK = """
import os, time
from pathlib import Path

def run(ctx, parameters):
    started = Path(parameters["started"])
    if started.exists():
        return os.getcwd()
    started.write_text(os.getcwd())
    while True:
        time.sleep(0.05)
"""
TABLE = """
import time
from pathlib import Path

def run(ctx, parameters):
    while not Path(parameters["release"]).exists():
        time.sleep(0.05)
    return ctx.query("SELECT range AS i, 'row ' || range AS s FROM range(?)", [parameters["rows"]])
"""


def _ran_on(cluster: Any, job: Any) -> str:
    """The worker whose working directory the job's result (its cwd) lies in."""
    cwd = Path(job["envelope"]["result"])
    (name,) = [name for name, node in cluster.nodes.items() if cwd.is_relative_to(node.workdir)]
    return str(name)


def _client(cluster: Any, server: str = "server") -> httpx.Client:
    store = open_store(cluster.db_url)
    try:
        token = create_token(store, project_id="alpha")
    finally:
        store.close()
    return httpx.Client(
        base_url=cluster.server_url(server), headers={"Authorization": f"Bearer {token}"}, timeout=120
    )


def _upload(http: httpx.Client, analysis_id: str, source: str, retries: int = 0) -> None:
    answer = http.put(
        f"/v1/projects/alpha/analyses/{analysis_id}", json={"source": source, "retries": retries}
    )
    assert answer.status_code in (200, 201), answer.text


def _submit(http: httpx.Client, analysis_id: str, parameters: dict[str, Any], wait: float = 0) -> Any:
    body = {"analysis_id": analysis_id, "parameters": parameters, "wait": wait}
    answer = http.post("/v1/projects/alpha/jobs", json=body)
    assert answer.status_code in (200, 201, 202), answer.text
    return answer.json()


def _final(http: httpx.Client, job_id: str, timeout: float = 120) -> Any:
    give_up = time.monotonic() + timeout
    while True:
        job = http.get(f"/v1/projects/alpha/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < give_up, f"job {job_id} never finished: {job}"
        time.sleep(0.1)


def _wait_running(http: httpx.Client, job_ids: list[str], timeout: float = 120) -> None:
    give_up = time.monotonic() + timeout

    def statuses() -> set[str]:
        return {http.get(f"/v1/projects/alpha/jobs/{job_id}").json()["status"] for job_id in job_ids}

    while (seen := statuses()) != {"running"}:
        assert time.monotonic() < give_up, f"the jobs never all ran at once: {seen}"
        time.sleep(0.1)


def _wait_file(path: Path, timeout: float = 90) -> str:
    give_up = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < give_up, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def test_jobs_spread_over_workers_and_results_come_back_through_the_database(
    cluster: Any, tmp_path: Path
) -> None:
    cluster.serve()
    one = cluster.worker("w1", "--max-result-bytes", "100000")
    cluster.worker("w2")
    with _client(cluster) as http:
        _upload(http, "where", WHERE)
        _upload(http, "table", TABLE)
        # four jobs that each hold a slot for 3 s: two slots per worker, so both workers run two
        jobs = [_submit(http, "where", {"sleep": 3}) for _ in range(4)]
        places = sorted(_ran_on(cluster, _final(http, job["id"])) for job in jobs)
        assert places == ["w1", "w1", "w2", "w2"]
        # nothing of the server's disk is used: the versions came from the store
        assert not (cluster.nodes["server"].workdir / "root" / "alpha" / "analysis" / "versions").exists()
        # a large table travels back as a Parquet artifact stored in PostgreSQL (w1's limit); four
        # jobs held until all four run fill both workers' slots, so w1 runs two of them
        release = tmp_path / "release"
        tables = [_submit(http, "table", {"rows": 20_000, "release": str(release)}) for _ in range(4)]
        _wait_running(http, [job["id"] for job in tables])
        release.write_text("go")
        done = [_final(http, job["id"]) for job in tables]
        artifacts = [job for job in done if job["envelope"].get("result_ref")]
        assert len(artifacts) == 2, [job["envelope"].get("result_ref") for job in done]
        big = artifacts[0]
        table = pq.read_table(io.BytesIO(http.get(f"/v1/projects/alpha/jobs/{big['id']}/result").content))
        assert table.num_rows == 20_000 and table.column("s")[19_999].as_py() == "row 19999"
    assert not list(one.workdir.glob("root/alpha/analysis/artifacts/*.parquet"))
    text = cluster.metrics("w1")
    assert "analysis_worker_slots_free 2.0" in text and "analysis_worker_jobs_running 0.0" in text
    assert 'analysis_worker_jobs_total{status="succeeded"}' in text
    assert "analysis_worker_heartbeats_total 0.0" not in text
    # the server's view of the queue
    store = open_store(cluster.db_url)
    try:
        admin = create_token(store, project_id=None, admin=True)
    finally:
        store.close()
    seen = httpx.get(f"{cluster.server_url()}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    assert "analysis_workers 2.0" in seen and "analysis_queue_depth 0.0" in seen


HOLD = """
import time
from pathlib import Path

def run(ctx, parameters):
    Path(parameters["started"]).write_text("yes")
    while not Path(parameters["release"]).exists():
        time.sleep(0.05)
    return "released"
"""


def test_the_per_project_cap_holds_across_workers(cluster: Any, tmp_path: Path) -> None:
    cluster.serve("--max-jobs-per-project", "1")
    cluster.worker("w1")
    cluster.worker("w2")  # four free slots on two machines
    store = open_store(cluster.db_url)
    try:
        beta_token = create_token(store, project_id="beta")
    finally:
        store.close()
    beta = httpx.Client(
        base_url=cluster.server_url(), headers={"Authorization": f"Bearer {beta_token}"}, timeout=120
    )
    with _client(cluster) as alpha, beta:
        _upload(alpha, "hold", HOLD)
        _upload(alpha, "where", WHERE)
        assert beta.put("/v1/projects/beta/analyses/where", json={"source": WHERE}).status_code == 201
        params = {"started": str(tmp_path / "started"), "release": str(tmp_path / "release")}
        held = _submit(alpha, "hold", params)
        _wait_file(tmp_path / "started")
        waiting = _submit(alpha, "where", {})
        other = beta.post("/v1/projects/beta/jobs", json={"analysis_id": "where", "wait": 120}).json()
        assert other["status"] == "succeeded", "beta used a free slot"
        # submitted before beta's job, with three slots free: held back by alpha's cap alone
        assert alpha.get(f"/v1/projects/alpha/jobs/{waiting['id']}").json()["status"] == "queued"
        (tmp_path / "release").write_text("go")
        assert _final(alpha, held["id"])["status"] == "succeeded"
        assert _final(alpha, waiting["id"])["status"] == "succeeded"


def test_cancel_reaches_the_worker_running_the_job(cluster: Any, tmp_path: Path) -> None:
    cluster.serve()
    with _client(cluster) as http:
        _upload(http, "block", BLOCK)
        # a queued job (no worker yet) is cancelled at once and never starts
        early = _submit(http, "block", {"started": str(tmp_path / "never")})
        assert http.post(f"/v1/projects/alpha/jobs/{early['id']}/cancel").status_code == 200
        assert http.get(f"/v1/projects/alpha/jobs/{early['id']}").json()["status"] == "cancelled"
        cluster.worker("w1")
        job = _submit(http, "block", {"started": str(tmp_path / "started")})
        _wait_file(tmp_path / "started")
        began = time.monotonic()
        answer = http.post(f"/v1/projects/alpha/jobs/{job['id']}/cancel")
        took = time.monotonic() - began
        assert answer.status_code == 200, answer.text
        cancelled = _final(http, job["id"])
        assert cancelled["status"] == "cancelled" and cancelled["error_type"] == "cancelled"
        assert took < 10, f"the cancel took {took:.1f} s"
        never = http.get(f"/v1/projects/alpha/jobs/{early['id']}").json()
        assert never["status"] == "cancelled" and never["started_at"] is None
    assert not (tmp_path / "never").exists()
    assert "analysis_worker_jobs_running 0.0" in cluster.metrics("w1")


@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_that_loses_power_is_detected_by_heartbeat(
    cluster: Any, tmp_path: Path, retries: int
) -> None:
    cluster.serve("--heartbeat-timeout", "6")
    cluster.worker("w1", "--concurrency", "1")
    with _client(cluster) as http:
        _upload(http, "block", BLOCK, retries=retries)
        job = _submit(http, "block", {"started": str(tmp_path / "started")})
        first = Path(_wait_file(tmp_path / "started"))
        assert first.is_relative_to(cluster.nodes["w1"].workdir)
        cluster.worker("w2", "--concurrency", "1")
        cluster.power_off("w1")
        lost_at = time.monotonic()
        done = _final(http, job["id"], timeout=60)
        detected = time.monotonic() - lost_at
        assert detected < 30, f"the lost worker was noticed after {detected:.1f} s"
        if retries:
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 2
            assert _ran_on(cluster, done) == "w2" and done["worker"] == "w2"
        else:
            assert done["status"] == "failed" and done["error_type"] == "worker_lost", done
            assert "heartbeat" in done["envelope"]["error"]


def test_kill_9_of_a_worker_stops_its_kernel_and_the_job_runs_on_another(
    cluster: Any, tmp_path: Path
) -> None:
    cluster.serve("--heartbeat-timeout", "6")
    doomed = cluster.worker("w1", "--concurrency", "1", "--pool-size", "1")
    with _client(cluster) as http:
        _upload(http, "block", BLOCK, retries=1)
        job = _submit(http, "block", {"started": str(tmp_path / "started")})
        _wait_file(tmp_path / "started")
        marker = str(doomed.workdir / "root") + os.sep
        give_up = time.monotonic() + 90
        while len(_processes_with(marker)) < 2:  # the job's kernel, and the warm one of w1's pool
            assert time.monotonic() < give_up, _processes_with(marker)
            time.sleep(0.1)
        cluster.worker("w2", "--concurrency", "1")
        os.kill(doomed.popen.pid, signal.SIGKILL)  # the worker alone, not its namespace
        done = _final(http, job["id"], timeout=60)
        assert done["status"] == "succeeded" and done["worker"] == "w2" and done["attempt"] == 2
    give_up = time.monotonic() + 30
    while _processes_with(marker):  # w1's kernels were killed by its guard, not left running
        assert time.monotonic() < give_up, _processes_with(marker)
        time.sleep(0.1)


def _processes_with(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if marker in cmdline:
            found.append(cmdline)
    return found


def test_sigterm_lets_the_running_job_finish_and_takes_no_new_one(cluster: Any) -> None:
    cluster.serve()
    leaving = cluster.worker("w1", "--concurrency", "1")
    with _client(cluster) as http:
        _upload(http, "where", WHERE)
        running = _submit(http, "where", {"sleep": 4})
        give_up = time.monotonic() + 60
        while http.get(f"/v1/projects/alpha/jobs/{running['id']}").json()["status"] != "running":
            assert time.monotonic() < give_up
            time.sleep(0.05)
        os.killpg(leaving.popen.pid, signal.SIGTERM)
        later = _submit(http, "where", {})
        assert leaving.popen.wait(60) is not None
        marker = str(leaving.workdir / "root") + os.sep
        give_up = time.monotonic() + 30
        while _processes_with(marker):  # the pool's warm kernels too
            assert time.monotonic() < give_up, _processes_with(marker)
            time.sleep(0.1)
        finished = _final(http, running["id"])
        assert finished["status"] == "succeeded"
        assert _ran_on(cluster, finished) == "w1"
        assert http.get(f"/v1/projects/alpha/jobs/{later['id']}").json()["status"] == "queued"
        cluster.worker("w2")
        assert _ran_on(cluster, _final(http, later["id"])) == "w2"


def test_a_schedule_fires_once_per_fire_time_however_many_servers_run(cluster: Any) -> None:
    cluster.serve()
    cluster.serve(name="server2")
    cluster.worker("w1")
    with _client(cluster) as http:
        _upload(http, "where", WHERE)
        body = {"analysis_id": "where", "cron": "0 0 1 1 *", "timezone": "UTC"}
        schedule = http.post("/v1/projects/alpha/schedules", json=body)
        assert schedule.status_code == 201, schedule.text
        store = open_store(cluster.db_url)
        try:
            # the fire time is now: both servers see it due on their next tick
            store.update_schedule(schedule.json()["id"], next_run_at=time.time())
            give_up = time.monotonic() + 60
            while not http.get("/v1/projects/alpha/jobs", params={"trigger": "schedule"}).json()["jobs"]:
                assert time.monotonic() < give_up, "the schedule never fired"
                time.sleep(0.1)
            time.sleep(3)  # three more ticks of each server
            jobs = http.get("/v1/projects/alpha/jobs", params={"trigger": "schedule"}).json()["jobs"]
            assert len(jobs) == 1
            # the claim itself: of two servers holding the same fire time, only one moves it
            row = store.get_schedule("alpha", schedule.json()["id"])
            assert row is not None
            due = row["next_run_at"]
            assert store.update_schedule(row["id"], only_if_next_run_at=due, next_run_at=due + 60)
            assert not store.update_schedule(row["id"], only_if_next_run_at=due, next_run_at=due + 60)
        finally:
            store.close()


def test_sigterm_past_the_grace_period_queues_the_job_again(cluster: Any, tmp_path: Path) -> None:
    cluster.serve()
    leaving = cluster.worker("w1", "--concurrency", "1", "--grace", "1")
    with _client(cluster) as http:
        _upload(http, "block", BLOCK)
        job = _submit(http, "block", {"started": str(tmp_path / "started")})
        _wait_file(tmp_path / "started")
        os.killpg(leaving.popen.pid, signal.SIGTERM)
        leaving.popen.wait(60)
        assert http.get(f"/v1/projects/alpha/jobs/{job['id']}").json()["status"] == "queued"
        cluster.worker("w2")
        moved = _final(http, job["id"])
        assert moved["status"] == "succeeded" and _ran_on(cluster, moved) == "w2"
        assert moved["attempt"] == 1  # the cut-short attempt does not count


QUERY = """
def run(ctx, parameters):
    return ctx.query_datasource("warehouse", "SELECT 40 + 2 AS answer")
"""


def test_a_worker_uses_the_datasources_the_server_shared_with_the_key_it_was_given(cluster: Any) -> None:
    from cryptography.fernet import Fernet

    from analysis.sources.secrets import encrypt

    servers = sys.modules["analysis_test_servers"]  # tests/datasources/servers.py, loaded by the cluster
    key = Fernet.generate_key().decode()
    server = cluster.serve()
    config = server.workdir / "root" / "alpha" / "analysis" / "datasources.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[warehouse]\nkind = "postgres"\nhost = "{cluster.gateway}"\nport = {cluster.pg.port}\n'
        f'database = "{servers.DATABASE}"\nuser = "{servers.USER}"\n'
        f'password_encrypted = "{encrypt(servers.PASSWORD, key)}"\n'
    )
    keyless = cluster.worker("w1", "--concurrency", "1")
    with _client(cluster) as http:
        _upload(http, "query", QUERY)
        failed = _submit(http, "query", {}, wait=120)
        assert failed["status"] == "failed" and failed["error_type"] == "datasource_error"
        assert "ANALYSIS_SECRET_KEY" in failed["envelope"]["error"]
        os.killpg(keyless.popen.pid, signal.SIGTERM)
        keyless.popen.wait(60)
        cluster.worker("w2", env={"ANALYSIS_SECRET_KEY": key})
        job = _submit(http, "query", {}, wait=120)
        assert job["status"] == "succeeded", job["envelope"]
        assert "42" in str(job["envelope"]["result"])
        assert servers.PASSWORD not in str(job)
    # the worker's copy holds the token, never the password
    copy = cluster.nodes["w2"].workdir / "root" / "alpha" / "analysis" / "datasources.toml"
    assert "password_encrypted" in copy.read_text() and servers.PASSWORD not in copy.read_text()
    assert copy.stat().st_mode & 0o077 == 0


def test_a_cluster_leaves_no_namespace_link_or_process_behind(cluster: Any) -> None:
    cluster.serve()
    worker = cluster.worker("w1")
    names = [node.netns for node in cluster.nodes.values()]
    pids = [node.popen.pid for node in cluster.nodes.values()]
    cluster.close()  # what the fixture does after a failing test too
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [name for name in names if name in listed]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert cluster.bridge not in links and f"vo{cluster.net}x" not in links
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not _processes_with(str(worker.workdir))
    cluster.close()  # closing twice is harmless

"""Jobs over real HTTP: submit, wait, get, list, cancel, idempotency; on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

HELLO = """
def run(ctx, parameters):
    print("hello", parameters.get("n"))
    return {"n": parameters.get("n"), "big": 12345678901234567890}
"""

BLOCK = """
import time
from pathlib import Path

def run(ctx, parameters):
    Path(parameters["started"]).write_text("yes")
    while not Path(parameters["release"]).exists():
        time.sleep(0.05)
    return "released"
"""


def test_submit_with_wait_returns_the_envelope_and_the_job_record(serve: Any, save: Any) -> None:
    save("alpha", "hello", HELLO)
    server = serve()
    with server.client("alpha") as http:
        answer = http.post(
            "/v1/projects/alpha/jobs", json={"analysis_id": "hello", "parameters": {"n": 3}, "wait": 60}
        )
        assert answer.status_code == 200, answer.text
        job = answer.json()
        assert job["status"] == "succeeded"
        assert job["attempt"] == 1 and job["trigger"] == "api"
        envelope = job["envelope"]
        assert envelope["success"] is True
        assert envelope["result"] == {"n": 3, "big": 12345678901234567890}
        assert envelope["logs"] == ["hello 3"]
        assert envelope["job_id"] == job["id"]
        assert len(job["analysis_version"]) == 64 and envelope["analysis_version"] == job["analysis_version"]
        assert job["queue_wait_ms"] >= 0 and job["run_ms"] > 0
        assert answer.headers["location"] == f"/v1/projects/alpha/jobs/{job['id']}"
        again = http.get(answer.headers["location"]).json()
        assert again == job
        result = http.get(f"{answer.headers['location']}/result")
        assert result.status_code == 200 and result.json() == envelope["result"]


def test_submit_without_wait_answers_202_and_the_job_finishes(serve: Any, save: Any, final: Any) -> None:
    save(
        "alpha",
        "fails",
        "def run(ctx, parameters):\n    raise ValueError('no data for ' + parameters['day'])\n",
    )
    server = serve()
    with server.client("alpha") as http:
        answer = http.post(
            "/v1/projects/alpha/jobs", json={"analysis_id": "fails", "parameters": {"day": "mon"}}
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] in ("queued", "running")
        job = final(http, "alpha", answer.json()["id"])
        assert job["status"] == "failed" and job["error_type"] == "analysis_error"
        assert "no data for mon" in job["envelope"]["error"]
        no_result = http.get(f"/v1/projects/alpha/jobs/{job['id']}/result")
        assert no_result.status_code == 409 and no_result.json()["error"]["type"] == "no_result"


@pytest.mark.host_files  # the analysis appends to a host file the test reads
def test_an_idempotency_key_never_runs_a_job_twice(serve: Any, save: Any, root: Path, final: Any) -> None:
    save("alpha", "count", "from pathlib import Path\ndef run(ctx, parameters):\n"
         "    with open(parameters['log'], 'a') as fh:\n        fh.write('ran\\n')\n")  # fmt: skip
    ran = root / "ran.txt"
    server = serve()
    body = {"analysis_id": "count", "parameters": {"log": str(ran)}}
    with server.client("alpha") as http:
        first = http.post("/v1/projects/alpha/jobs", json=body, headers={"Idempotency-Key": "k-1"})
        second = http.post("/v1/projects/alpha/jobs", json=body, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 202 and second.status_code == 200
        assert first.json()["id"] == second.json()["id"]
        final(http, "alpha", first.json()["id"])
        third = http.post(
            "/v1/projects/alpha/jobs", json={**body, "wait": 5}, headers={"Idempotency-Key": "k-1"}
        )
        assert third.json()["id"] == first.json()["id"] and third.json()["status"] == "succeeded"
        other = http.post(
            "/v1/projects/alpha/jobs",
            json={**body, "parameters": {"log": "x"}},
            headers={"Idempotency-Key": "k-1"},
        )
        assert other.status_code == 409 and other.json()["error"]["type"] == "idempotency_conflict"
        jobs = http.get("/v1/projects/alpha/jobs").json()["jobs"]
    assert len(jobs) == 1
    assert ran.read_text() == "ran\n"


@pytest.mark.host_files  # the analysis waits for a file the test writes
def test_list_filters_and_pages_and_cancel_queued_and_running(
    serve: Any, save: Any, root: Path, final: Any
) -> None:
    save("alpha", "block", BLOCK)
    save("alpha", "hello", HELLO)
    started, release = root / "started", root / "release"
    # cold kernels: the test counts the job's own kernel (warm kernels of the pool wait beside it)
    server = serve("--max-concurrent-jobs", "1", "--pool-size", "0")
    with server.client("alpha") as http:
        params = {"started": str(started), "release": str(release)}
        blocker = http.post(
            "/v1/projects/alpha/jobs", json={"analysis_id": "block", "parameters": params}
        ).json()
        queued = [
            http.post("/v1/projects/alpha/jobs", json={"analysis_id": "hello", "parameters": {"n": n}}).json()
            for n in range(5)
        ]
        assert {j["status"] for j in queued} == {"queued"}
        page = http.get("/v1/projects/alpha/jobs", params={"limit": 2, "analysis_id": "hello"}).json()
        assert [j["id"] for j in page["jobs"]] == [queued[4]["id"], queued[3]["id"]]
        seen = [j["id"] for j in page["jobs"]]
        while page["next_cursor"]:
            page = http.get(
                "/v1/projects/alpha/jobs",
                params={"limit": 2, "analysis_id": "hello", "cursor": page["next_cursor"]},
            ).json()
            seen += [j["id"] for j in page["jobs"]]
        assert seen == [j["id"] for j in reversed(queued)]
        assert [
            j["id"] for j in http.get("/v1/projects/alpha/jobs", params={"status": "queued"}).json()["jobs"]
        ] == seen
        assert http.get("/v1/projects/alpha/jobs", params={"trigger": "schedule"}).json()["jobs"] == []
        assert (
            http.get("/v1/projects/alpha/jobs", params={"since": "2999-01-01T00:00:00Z"}).json()["jobs"] == []
        )
        for job in queued:
            cancelled = http.post(f"/v1/projects/alpha/jobs/{job['id']}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            assert cancelled.json()["envelope"]["error_type"] == "cancelled"
            assert cancelled.json()["started_at"] is None
        _wait_file(started)
        assert server.kernels(), "the blocking job has a kernel while it runs"
        cancelled = http.post(f"/v1/projects/alpha/jobs/{blocker['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["envelope"]["error_type"] == "cancelled"
        assert server.kernels() == []
        again = http.post(f"/v1/projects/alpha/jobs/{blocker['id']}/cancel")
        assert again.status_code == 409 and again.json()["error"]["type"] == "job_finished"
    assert not list(root.glob("*/analysis/temp/*"))


def _wait_file(path: Path, timeout: float = 90) -> None:
    import time

    give_up = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < give_up, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.host_files  # the analysis waits for a file the test writes
def test_a_server_fault_fails_the_job_instead_of_leaving_it_running(
    serve: Any, save: Any, root: Path, store_url: str
) -> None:
    save("alpha", "hello", HELLO)
    # where the job's version is written: the server's root, or its local worker's (PostgreSQL)
    runs_in = root / ".server" / "local-worker" if store_url.startswith("postgresql") else root
    broken = runs_in / "alpha" / "analysis" / "versions"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("a file where the versions folder goes")
    server = serve()
    with server.client("alpha") as http:
        job = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "hello", "wait": 60}).json()
        assert job["status"] == "failed", job
        assert job["envelope"]["error"].startswith("The server could not run the job")
        assert http.get("/readyz").status_code == 200
        # the slot was freed: the next job runs once the folder is fixed
        broken.unlink()
        again = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "hello", "wait": 60}).json()
        assert again["status"] == "succeeded"

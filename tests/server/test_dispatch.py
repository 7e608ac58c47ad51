"""Concurrency: fair across projects, a per-project cap, a queue."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

# analyses coordinate with the test through host files (host_files: unsandboxed servers)
pytestmark = [pytest.mark.slow, pytest.mark.host_files]


BLOCK = """
import time
from pathlib import Path

def run(ctx, parameters):
    Path(parameters["started"]).write_text("yes")
    while not Path(parameters["release"]).exists():
        time.sleep(0.05)
    return "released"
"""
HELLO = "def run(ctx, parameters):\n    return parameters.get('n')\n"


def _wait_file(path: Path, timeout: float = 90) -> None:
    give_up = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < give_up, f"{path} never appeared"
        time.sleep(0.05)


def _submit(http: Any, project: str, analysis_id: str, parameters: dict[str, Any]) -> str:
    answer = http.post(
        f"/v1/projects/{project}/jobs", json={"analysis_id": analysis_id, "parameters": parameters}
    )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def test_a_free_slot_goes_to_the_project_served_least(serve: Any, save: Any, root: Path, final: Any) -> None:
    for project in ("alpha", "beta"):
        save(project, "block", BLOCK)
        save(project, "hello", HELLO)
    server = serve("--max-concurrent-jobs", "1")
    params = {"started": str(root / "started"), "release": str(root / "release")}
    with server.client("alpha") as alpha, server.client("beta") as beta:
        _submit(alpha, "alpha", "block", params)
        _wait_file(root / "started")
        alpha_jobs = [_submit(alpha, "alpha", "hello", {"n": n}) for n in range(2)]
        beta_job = _submit(beta, "beta", "hello", {"n": 9})
        (root / "release").write_text("go")
        done_alpha = [final(alpha, "alpha", job_id) for job_id in alpha_jobs]
        done_beta = final(beta, "beta", beta_job)
    assert all(job["status"] == "succeeded" for job in [*done_alpha, done_beta])
    # beta queued last but alpha had just been served: beta runs before alpha's queued jobs
    assert done_beta["started_at"] < done_alpha[0]["started_at"] < done_alpha[1]["started_at"]


def test_a_project_never_runs_more_than_its_cap(serve: Any, save: Any, root: Path, final: Any) -> None:
    for project in ("alpha", "beta"):
        save(project, "block", BLOCK)
        save(project, "hello", HELLO)
    server = serve("--max-concurrent-jobs", "2", "--max-jobs-per-project", "1")
    params = {"started": str(root / "started"), "release": str(root / "release")}
    with server.client("alpha") as alpha, server.client("beta") as beta:
        _submit(alpha, "alpha", "block", params)
        _wait_file(root / "started")
        waiting = _submit(alpha, "alpha", "hello", {"n": 1})
        other = final(beta, "beta", _submit(beta, "beta", "hello", {"n": 2}))
        assert other["status"] == "succeeded", "beta used the free slot"
        assert alpha.get(f"/v1/projects/alpha/jobs/{waiting}").json()["status"] == "queued"
        (root / "release").write_text("go")
        assert final(alpha, "alpha", waiting)["status"] == "succeeded"

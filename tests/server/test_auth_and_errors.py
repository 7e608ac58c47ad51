"""Tokens and error answers: a project's token never reaches another project; bad input is a 4xx."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

BLOCK = """
import time
from pathlib import Path

def run(ctx, parameters):
    while not Path(parameters["release"]).exists():
        time.sleep(0.05)
    return "released"
"""


def _alpha_world(server: Any, root: Path) -> dict[str, str]:
    """alpha owns a running job, a queued job, an analysis version and a schedule."""
    with server.client("alpha") as http:
        version = http.put("/v1/projects/alpha/analyses/block", json={"source": BLOCK, "kind": "py"}).json()[
            "version"
        ]
        params = {"release": str(root / "release")}
        running = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "block", "parameters": params})
        queued = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "block", "parameters": params})
        schedule = http.post(
            "/v1/projects/alpha/schedules",
            json={"analysis_id": "block", "cron": "0 3 * * *", "parameters": params},
        )
        assert schedule.status_code == 201, schedule.text
    return {
        "job": running.json()["id"],
        "queued": queued.json()["id"],
        "version": version,
        "schedule": schedule.json()["id"],
    }


def _routes(ids: dict[str, str], project: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    base = f"/v1/projects/{project}"
    return [
        ("POST", f"{base}/jobs", {"analysis_id": "block"}),
        ("GET", f"{base}/jobs", None),
        ("GET", f"{base}/jobs/{ids['job']}", None),
        ("POST", f"{base}/jobs/{ids['queued']}/cancel", None),
        ("GET", f"{base}/jobs/{ids['job']}/result", None),
        ("GET", f"{base}/jobs/{ids['job']}/events", None),
        ("GET", f"{base}/analyses", None),
        ("PUT", f"{base}/analyses/block", {"source": "def run(ctx, parameters):\n    return 1\n"}),
        ("GET", f"{base}/analyses/block/versions", None),
        ("GET", f"{base}/analyses/block/versions/{ids['version']}", None),
        ("POST", f"{base}/schedules", {"analysis_id": "block", "cron": "* * * * *"}),
        ("GET", f"{base}/schedules", None),
        ("GET", f"{base}/schedules/{ids['schedule']}", None),
        ("POST", f"{base}/schedules/{ids['schedule']}/pause", None),
        ("POST", f"{base}/schedules/{ids['schedule']}/resume", None),
        ("DELETE", f"{base}/schedules/{ids['schedule']}", None),
    ]


def test_a_project_token_reaches_nothing_of_another_project(serve: Any, root: Path, store: Any) -> None:
    server = serve("--max-concurrent-jobs", "1")
    ids = _alpha_world(server, root)
    with server.client("beta") as beta:
        for method, path, body in _routes(ids, "alpha"):
            answer = beta.request(method, path, json=body)
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["error"]["type"] == "forbidden"
        # beta's own project, alpha's ids: nothing there
        for method, path, body in _routes(ids, "beta"):
            if body is not None:
                continue
            answer = beta.request(method, path)
            if path.endswith(("/jobs", "/analyses", "/schedules")):
                assert answer.status_code == 200 and ids["job"] not in answer.text, (path, answer.text)
            else:
                assert answer.status_code == 404, (method, path, answer.text)
        assert beta.get("/metrics").status_code == 403
    for headers in ({}, {"Authorization": "Bearer an_wrong"}, {"Authorization": "Basic abc"}):
        answer = httpx.get(f"{server.url}/v1/projects/alpha/jobs/{ids['job']}", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "unauthorized"
    # nothing of alpha changed: the queued job is still queued, the schedule still there
    with server.client("alpha") as alpha:
        assert alpha.get(f"/v1/projects/alpha/jobs/{ids['queued']}").json()["status"] == "queued"
        assert alpha.get(f"/v1/projects/alpha/schedules/{ids['schedule']}").json()["paused"] is False
        assert len(alpha.get("/v1/projects/alpha/analyses/block/versions").json()["versions"]) == 1
    with server.client() as admin:  # the admin token reaches every project
        assert admin.get(f"/v1/projects/alpha/jobs/{ids['job']}").status_code == 200
    # tokens are stored hashed
    with store.engine.connect() as db:
        rows = [dict(r) for r in db.execute(store.tokens.select()).mappings()]
    assert rows and all(server.tokens["alpha"] not in str(row) for row in rows)
    (root / "release").write_text("go")


def test_bad_input_gets_a_4xx_naming_the_problem(serve: Any, root: Path) -> None:
    server = serve("--max-concurrent-jobs", "1", "--max-queued-jobs", "1")
    with server.client("alpha") as http:
        cases: list[tuple[str, str, Any, int, str]] = [
            ("POST", "/v1/projects/alpha/jobs", b"{not json", 400, "invalid_json"),
            ("POST", "/v1/projects/alpha/jobs", b"[1, 2]", 422, "invalid_request"),
            ("POST", "/v1/projects/alpha/jobs", {}, 422, "invalid_request"),
            ("POST", "/v1/projects/alpha/jobs", {"analysis_id": "../etc"}, 422, "invalid_request"),
            (
                "POST",
                "/v1/projects/alpha/jobs",
                {"analysis_id": "a", "parameters": [1]},
                422,
                "invalid_request",
            ),
            ("POST", "/v1/projects/alpha/jobs", {"analysis_id": "a", "wait": "soon"}, 422, "invalid_request"),
            ("POST", "/v1/projects/alpha/jobs", {"analysis_id": "nope"}, 404, "not_found"),
            ("POST", "/v1/projects/alpha/jobs", b"x" * (11 * 1024 * 1024), 413, "payload_too_large"),
            ("GET", "/v1/projects/alpha/jobs/0123", None, 404, "not_found"),
            ("GET", "/v1/projects/alpha/jobs?limit=0", None, 422, "invalid_request"),
            ("GET", "/v1/projects/alpha/jobs?status=lost", None, 422, "invalid_request"),
            ("GET", "/v1/projects/alpha/jobs?since=yesterday", None, 422, "invalid_request"),
            ("GET", "/v1/projects/alpha/jobs?colour=red", None, 422, "invalid_request"),  # a typo'd filter
            ("PUT", "/v1/projects/alpha/analyses/x", {"source": "def nope(:\n"}, 422, "invalid_analysis"),
            (
                "PUT",
                "/v1/projects/alpha/analyses/x",
                {"source": "x = 1\n", "kind": "R"},
                422,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/projects/alpha/schedules",
                {"analysis_id": "x", "cron": "every day"},
                422,
                "invalid_request",
            ),
            ("GET", "/v1/nothing-here", None, 404, "not_found"),
            ("DELETE", "/v1/projects/alpha/jobs", None, 405, "method_not_allowed"),
        ]
        for method, path, body, status, kind in cases:
            content = body if isinstance(body, bytes) else None
            answer = http.request(method, path, json=None if content is not None else body, content=content)
            assert answer.status_code == status, (method, path, answer.text[:300])
            assert answer.json()["error"]["type"] == kind, (path, answer.text[:300])
            assert answer.json()["error"]["message"]
        assert not (root / "alpha" / "analysis" / "scripts" / "x.py").exists()
        # back-pressure: one running, one queued, the next is refused with Retry-After
        http.put("/v1/projects/alpha/analyses/block", json={"source": BLOCK})
        params = {"analysis_id": "block", "parameters": {"release": str(root / "release")}}
        running = http.post("/v1/projects/alpha/jobs", json=params)
        assert running.status_code == 202
        give_up = time.monotonic() + 120  # over PostgreSQL a worker claims it from the queue
        while http.get(f"/v1/projects/alpha/jobs/{running.json()['id']}").json()["status"] != "running":
            assert time.monotonic() < give_up, "the first job never started"
            time.sleep(0.1)
        assert http.post("/v1/projects/alpha/jobs", json=params).status_code == 202
        refused = http.post("/v1/projects/alpha/jobs", json=params)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "queue_full"
        assert int(refused.headers["retry-after"]) > 0
    (root / "release").write_text("go")
    assert "Traceback" not in server.output()


def test_token_create_on_the_command_line(serve: Any, root: Path, store_url: str) -> None:
    server = serve()
    done = subprocess.run(
        [sys.executable, "-m", "analysis.runner.cli", "token", "create", "--project", "gamma",
         "--root", str(root), "--db", store_url],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    token = done.stdout.strip()
    assert token.startswith("an_")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server.url}/v1/projects/gamma/jobs", headers=headers).status_code == 200
    assert httpx.get(f"{server.url}/v1/projects/alpha/jobs", headers=headers).status_code == 403
    bad = subprocess.run(
        [sys.executable, "-m", "analysis.runner.cli", "token", "create", "--project", "no/pe",
         "--root", str(root)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "Project id" in bad.stderr

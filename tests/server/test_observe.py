"""Health, readiness, Prometheus metrics and live events (Server-Sent Events)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

# analyses coordinate with the test through host files (host_files: unsandboxed servers)
pytestmark = [pytest.mark.slow, pytest.mark.host_files]


CHATTY = """
import time
from pathlib import Path

def run(ctx, parameters):
    print("first line")
    while not Path(parameters["release"]).exists():
        time.sleep(0.05)
    print("second line")
    return 1
"""


def test_health_ready_and_metrics(serve: Any, save: Any) -> None:
    save("alpha", "ok", "def run(ctx, parameters):\n    return [1, 2, 3]\n")
    save("beta", "bad", "def run(ctx, parameters):\n    raise RuntimeError('x')\n")
    server = serve()
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    with server.client("alpha") as alpha, server.client("beta") as beta:
        assert (
            alpha.post("/v1/projects/alpha/jobs", json={"analysis_id": "ok", "wait": 120}).status_code == 200
        )
        assert (
            beta.post("/v1/projects/beta/jobs", json={"analysis_id": "bad", "wait": 120}).status_code == 200
        )
    with server.client() as admin:
        text = admin.get("/metrics").text
    assert 'analysis_jobs_total{error_type="",project="alpha",status="succeeded"} 1.0' in text
    assert 'analysis_jobs_total{error_type="analysis_error",project="beta",status="failed"} 1.0' in text
    assert 'analysis_job_duration_seconds_count{project="alpha"} 1.0' in text
    assert 'analysis_job_queue_wait_seconds_count{project="beta"} 1.0' in text
    assert 'analysis_job_result_bytes_count{project="alpha"} 1.0' in text
    assert 'analysis_kernel_start_seconds_count{project="beta"} 1.0' in text
    assert "analysis_queue_depth 0.0" in text and "analysis_running_jobs 0.0" in text
    assert httpx.get(f"{server.url}/metrics").status_code == 401


def test_events_stream_status_changes_and_logs(serve: Any, save: Any, root: Path) -> None:
    save("alpha", "chatty", CHATTY)
    server = serve()
    with server.client("alpha") as http:
        job = http.post(
            "/v1/projects/alpha/jobs",
            json={"analysis_id": "chatty", "parameters": {"release": str(root / "go")}},
        ).json()
        events: list[dict[str, Any]] = []
        with http.stream("GET", f"/v1/projects/alpha/jobs/{job['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(json.loads(line.removeprefix("data: ")))
                if events[-1] == {"type": "log", "line": "first line"}:  # live: the job still waits
                    (root / "go").write_text("go")
                if events[-1]["type"] == "end":
                    break
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses[-2:] == ["running", "succeeded"]
    assert events.index({"type": "log", "line": "first line"}) < events.index(
        {"type": "status", "status": "succeeded"}
    )
    assert [e["line"] for e in events if e["type"] == "log"] == ["first line", "second line"]
    assert events[-1] == {"type": "end", "status": "succeeded"}
    # a finished job replays its status and logs at once
    with server.client("alpha") as http:
        text = http.get(f"/v1/projects/alpha/jobs/{job['id']}/events").text
    assert "second line" in text and text.rstrip().endswith('"status": "succeeded"}')

"""Schedules: cron in a time zone, each run a job with trigger "schedule"; overlap and missed-run policies."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from analysis.runner.server.schedules import next_run

# analyses coordinate with the test through host files (host_files: unsandboxed servers)
pytestmark = [pytest.mark.slow, pytest.mark.host_files]


BLOCK = """
import time
from pathlib import Path

def run(ctx, parameters):
    while not Path(parameters["release"]).exists():
        time.sleep(0.05)
    return "released"
"""
HELLO = "def run(ctx, parameters):\n    return parameters\n"


def _jobs(http: Any) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = http.get("/v1/projects/alpha/jobs", params={"trigger": "schedule"}).json()[
        "jobs"
    ]
    return jobs


def _wait(predicate: Any, what: str, timeout: float = 90) -> Any:
    give_up = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_next_run_follows_the_time_zone() -> None:
    january = datetime(2026, 1, 10, 12, 0, tzinfo=UTC).timestamp()
    july = datetime(2026, 7, 10, 12, 0, tzinfo=UTC).timestamp()
    for after in (january, july):
        at = datetime.fromtimestamp(
            next_run("0 9 * * *", "America/New_York", after), ZoneInfo("America/New_York")
        )
        assert (at.hour, at.minute) == (9, 0)
    assert datetime.fromtimestamp(next_run("0 9 * * *", "America/New_York", january), UTC).hour == 14
    assert datetime.fromtimestamp(next_run("0 9 * * *", "America/New_York", july), UTC).hour == 13


def test_a_schedule_runs_jobs_until_paused(serve: Any, save: Any, final: Any) -> None:
    save("alpha", "hello", HELLO)
    server = serve()
    with server.client("alpha") as http:
        created = http.post(
            "/v1/projects/alpha/schedules",
            json={
                "analysis_id": "hello",
                "cron": "* * * * * *",
                "timezone": "Europe/Paris",
                "parameters": {"k": 1},
            },
        )
        assert created.status_code == 201, created.text
        schedule = created.json()
        assert schedule["overlap"] == "skip" and schedule["missed"] == "skip" and not schedule["paused"]
        jobs = _wait(lambda: _jobs(http), "a scheduled job")
        done = final(http, "alpha", jobs[-1]["id"])
        assert done["status"] == "succeeded" and done["trigger"] == "schedule"
        assert done["schedule_id"] == schedule["id"] and done["envelope"]["result"] == {"k": 1}
        assert done["envelope"]["trigger"] == "schedule"
        paused = http.post(f"/v1/projects/alpha/schedules/{schedule['id']}/pause").json()
        assert paused["paused"] is True
        count = len(_jobs(http))
        time.sleep(3)  # three ticks: a paused schedule starts nothing (absence, not a race)
        assert len(_jobs(http)) == count
        assert http.get("/v1/projects/alpha/schedules").json()["schedules"][0]["paused"] is True
        resumed = http.post(f"/v1/projects/alpha/schedules/{schedule['id']}/resume").json()
        assert resumed["paused"] is False
        _wait(lambda: len(_jobs(http)) > count, "a job after resume")
        assert http.delete(f"/v1/projects/alpha/schedules/{schedule['id']}").status_code == 204
        assert http.get(f"/v1/projects/alpha/schedules/{schedule['id']}").status_code == 404
        bad_zone = http.post(
            "/v1/projects/alpha/schedules",
            json={"analysis_id": "hello", "cron": "* * * * *", "timezone": "Mars/Base"},
        )
        assert bad_zone.status_code == 422 and "Mars/Base" in bad_zone.json()["error"]["message"]


@pytest.mark.parametrize("overlap", ["skip", "cancel_previous", "queue"])
def test_overlap_policies(serve: Any, save: Any, root: Path, overlap: str) -> None:
    save("alpha", "block", BLOCK)
    server = serve()
    with server.client("alpha") as http:
        body = {"analysis_id": "block", "cron": "* * * * * *", "overlap": overlap,
                "parameters": {"release": str(root / "release")}}  # fmt: skip
        schedule = http.post("/v1/projects/alpha/schedules", json=body).json()
        first = _wait(lambda: _jobs(http), "the first scheduled job")[-1]
        if overlap == "skip":
            time.sleep(3)  # ticks while the first job still runs start nothing
            assert [j["id"] for j in _jobs(http)] == [first["id"]]
        elif overlap == "cancel_previous":
            _wait(lambda: len(_jobs(http)) >= 2, "a second scheduled job")
            previous = http.get(f"/v1/projects/alpha/jobs/{first['id']}").json()
            assert previous["status"] == "cancelled"
        else:
            jobs = _wait(lambda: len(_jobs(http)) >= 2 and _jobs(http), "a second scheduled job")
            assert http.get(f"/v1/projects/alpha/jobs/{first['id']}").json()["status"] in (
                "queued",
                "running",
            )
            assert all(j["status"] in ("queued", "running") for j in jobs)
        http.delete(f"/v1/projects/alpha/schedules/{schedule['id']}")
    (root / "release").write_text("go")


@pytest.mark.parametrize("missed", ["skip", "run_once"])
def test_runs_missed_while_the_server_was_down(serve: Any, save: Any, store: Any, missed: str) -> None:
    save("alpha", "hello", HELLO)
    server = serve()
    with server.client("alpha") as http:
        body = {"analysis_id": "hello", "cron": "0 * * * *", "missed": missed}
        schedule = http.post("/v1/projects/alpha/schedules", json=body).json()
    server.stop()
    # the server was down over three hourly runs
    store.update_schedule(schedule["id"], next_run_at=time.time() - 3 * 3600)
    restarted = serve()
    with restarted.client("alpha") as http:
        moved = _wait(
            lambda: store.get_schedule("alpha", schedule["id"])["next_run_at"] > time.time(),
            "the schedule to tick",
        )
        assert moved
        jobs = _jobs(http)
    assert len(jobs) == (1 if missed == "run_once" else 0)

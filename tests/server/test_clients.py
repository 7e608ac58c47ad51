"""The command-line clients against a real server: analyses, jobs, schedules; exit codes as `analysis run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from analysis.runner.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(serve: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    server = serve()
    monkeypatch.setenv("ANALYSIS_SERVER_URL", server.url)
    monkeypatch.setenv("ANALYSIS_SERVER_TOKEN", server.tokens["alpha"])

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--project", "alpha"])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_push_submit_show_logs_and_list(cli: Any, tmp_path: Path) -> None:
    script = tmp_path / "report.py"
    script.write_text(
        "def run(ctx, parameters):\n    print('day', parameters['day'])\n    return parameters['day']\n"
    )
    code, out, _ = cli("analyses", "push", str(script))
    assert code == 0 and out.startswith("report ")
    version = out.split()[1]
    code, out, _ = cli("analyses", "versions", "report")
    assert code == 0 and out.startswith(version)
    code, out, _ = cli("jobs", "submit", "report", "-p", "day=mon", "--wait", "120")
    envelope = json.loads(out)
    assert code == 0 and envelope["result"] == "mon" and envelope["analysis_version"] == version
    code, out, _ = cli("jobs", "logs", envelope["job_id"])
    assert code == 0 and out == "day mon\n"
    code, out, _ = cli("jobs", "logs", envelope["job_id"], "--follow")
    assert code == 0 and out == "day mon\n"
    code, out, _ = cli("jobs", "show", envelope["job_id"])
    assert code == 0 and json.loads(out)["status"] == "succeeded"
    code, out, _ = cli("jobs", "list")
    assert code == 0 and out.startswith(f"{envelope['job_id']}  succeeded")
    code, out, _ = cli("jobs", "submit", "report", "--wait", "120")  # no day: the analysis raises
    assert code == 1 and json.loads(out)["error_type"] == "analysis_error"
    code, _, err = cli("jobs", "show", "0" * 32)
    assert code == 2 and "404" in err and "no job" in err


def test_schedules_and_refusals(cli: Any, tmp_path: Path) -> None:
    script = tmp_path / "nightly.py"
    script.write_text("def run(ctx, parameters):\n    return 1\n")
    assert cli("analyses", "push", str(script))[0] == 0
    code, out, _ = cli("schedule", "add", "nightly", "--cron", "0 2 * * *", "--timezone", "Asia/Tokyo")
    schedule = json.loads(out)
    assert code == 0 and schedule["timezone"] == "Asia/Tokyo"
    assert cli("schedule", "pause", schedule["id"])[0] == 0
    code, out, _ = cli("schedule", "list")
    assert code == 0 and "paused" in out and schedule["id"] in out
    assert json.loads(cli("schedule", "resume", schedule["id"])[1])["paused"] is False
    assert cli("schedule", "rm", schedule["id"])[0] == 0
    assert cli("schedule", "list")[1] == ""
    code, _, err = cli("schedule", "add", "nightly", "--cron", "whenever")
    assert code == 2 and "not a valid cron expression" in err
    bad = tmp_path / "bad.py"
    bad.write_text("def run(:\n")
    code, _, err = cli("analyses", "push", str(bad))
    assert code == 2 and "syntax error" in err
    code, _, err = cli("jobs", "list", "--token", "an_wrong")
    assert code == 2 and "401" in err

"""Bad options of ``analysis worker`` and ``serve --workers``: exit 2 with one line naming the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "--db", "sqlite:///store.sqlite3"], "--db must be a PostgreSQL URL"),
        (["worker", "--db", "postgresql://x@127.0.0.1/db", "--concurrency", "0"], "--concurrency must be"),
        (["worker", "--db", "postgresql://x@127.0.0.1/db", "--poll", "0"], "--poll must be more than 0"),
        (["serve", "--workers"], "--workers needs --db postgresql://"),
        (["serve", "--workers", "--db", "sqlite:///store.sqlite3"], "--workers needs --db postgresql://"),
    ],
)
def test_bad_worker_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.runner.cli", *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing left behind

"""Shared fixtures: a projects root, a helper that runs a script in a real kernel, leak checks.

Also the hypothesis profiles (schemathesis runs on hypothesis): with ``CI=true`` the ``ci``
profile draws the same bounded set of examples on every run (derandomized), so CI passes or
fails by what the code does; elsewhere the ``dev`` profile draws new random examples each run,
more of them, to explore. ``HYPOTHESIS_PROFILE=ci|dev`` picks one explicitly. A failure found
while exploring becomes an explicit regression test (see tests/files/test_fileserver.py).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, settings

from analysis.runner import JobResult, JobSpec, run_job

_SLOW_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None, database=None, suppress_health_check=_SLOW_CHECKS
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=_SLOW_CHECKS)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev")
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh projects root (``.clients``)."""
    return tmp_path / ".clients"


@pytest.fixture
def no_leftovers(root: Path) -> Iterator[None]:
    """After the test: no child process of ours survives and no job directory is left."""
    yield
    alive = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
    _, alive = psutil.wait_procs(alive, timeout=3)
    assert not alive, f"processes left behind: {[p.cmdline() for p in alive]}"
    temp_dirs = list(root.glob("*/analysis/temp/*"))
    assert not temp_dirs, f"job directories left behind: {temp_dirs}"


RunScript = Callable[..., JobResult]


@pytest.fixture
def run_script(tmp_path: Path, root: Path, no_leftovers: None) -> RunScript:
    """Write ``source`` to a file and run it as a job in a real kernel."""

    def run(source: str, parameters: dict[str, Any] | None = None, **options: Any) -> JobResult:
        path = tmp_path / "analysis_under_test.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return run_job(JobSpec(source_path=path, parameters=parameters or {}, root=root, **options))

    return run

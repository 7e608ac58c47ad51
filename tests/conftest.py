"""Shared fixtures: a projects root, a helper that runs a script in a real kernel, leak checks."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from analysis.runner import JobResult, JobSpec, run_job


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

"""Sandboxed jobs for the escape tests: real bubblewrap, real kernels.

Without bubblewrap or user namespaces the tests skip, except with ``CI=true``, where a missing
sandbox is a failure (``.ci/setup`` installs bubblewrap).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from analysis.runner import JobResult, JobSpec, run_job
from analysis.runner.sandbox import sandbox_available

RunSandboxed = Callable[..., JobResult]


@pytest.fixture
def sandbox_ready() -> None:
    reason = sandbox_available()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing sandbox is a failure)")
    pytest.skip(reason)


@pytest.fixture
def run_sandboxed(tmp_path: Path, root: Path, no_leftovers: None, sandbox_ready: None) -> RunSandboxed:
    """Write ``source`` to a file and run it as a sandboxed job (``sandbox="on"``)."""

    def run(source: str, parameters: dict[str, Any] | None = None, **options: Any) -> JobResult:
        path = tmp_path / "escape_attempt.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        options.setdefault("sandbox", "on")
        return run_job(JobSpec(source_path=path, parameters=parameters or {}, root=root, **options))

    return run

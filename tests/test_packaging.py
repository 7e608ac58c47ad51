"""Packaging guards (DESIGN.md traps 1, 4, 6): the wheel holds every module; imports stay light."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import analysis
import analysis.runner

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_module(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("analysis_kernel-*.whl")
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py") or n.endswith("py.typed")}
    expected = {f"analysis/{p.relative_to(REPO / 'kernel_ext')}" for p in (REPO / "kernel_ext").rglob("*.py")}
    expected |= {f"analysis/runner/{p.relative_to(REPO / 'runner')}" for p in (REPO / "runner").rglob("*.py")}
    expected.add("analysis/py.typed")
    assert expected - in_wheel == set(), "modules missing from the wheel: add their packages to pyproject"


def test_importing_the_runner_pulls_in_no_duckdb_nor_ipython() -> None:
    code = (
        "import sys, analysis.runner; "
        "heavy = [m for m in ('duckdb', 'pyarrow', 'IPython', 'ipykernel', 'pandas') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""


def test_public_names() -> None:
    assert set(analysis.__all__) == {
        "AnalysisError",
        "Context",
        "QueryResult",
        "load_ipython_extension",
        "unload_ipython_extension",
    }
    assert set(analysis.runner.__all__) == {
        "AnalysisService",
        "JobResult",
        "JobSpec",
        "run_job",
        "run_job_async",
    }
    for name in analysis.__all__:
        assert getattr(analysis, name) is not None
    assert analysis.__file__ is not None and "kernel_ext" in analysis.__file__  # the package, not a copy

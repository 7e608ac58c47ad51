"""Jobs whose analyses bring their own packages, in real kernels, resolved offline from tiny wheels."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest

from analysis.runner import JobSpec, run_job, run_job_async
from analysis.runner.deps import DepsSettings, list_environments

pytestmark = pytest.mark.slow

USES_TINYPKG = """
def run(ctx, parameters):
    import sys
    import tinypkg
    runtime = ctx.query("select 41 + 1 as x").rows
    return {"version": tinypkg.__version__, "python": sys.executable, "runtime": runtime}
"""


def script(
    folder: Path, name: str, dependencies: list[str], body: str = USES_TINYPKG, python: str = ""
) -> Path:
    header = "# /// script\n" + f"# dependencies = {json.dumps(dependencies)}\n"
    header += f"# requires-python = {json.dumps(python)}\n" if python else ""
    path = folder / f"{name}.py"
    path.write_text(header + "# ///\n" + textwrap.dedent(body), encoding="utf-8")
    return path


def test_conflicting_pins_run_side_by_side(
    tmp_path: Path, root: Path, deps_env: DepsSettings, no_leftovers: None
) -> None:
    one = script(tmp_path, "one", ["tinypkg==1.0"])
    two = script(tmp_path, "two", ["tinypkg==2.0"])

    async def both() -> list[object]:
        jobs = [run_job_async(JobSpec(source_path=p, root=root)) for p in (one, two)]
        return list(await asyncio.gather(*jobs))

    first, second = asyncio.run(both())
    assert first.success and second.success, (first.to_dict(), second.to_dict())  # type: ignore[attr-defined]
    assert first.result["version"] == "1.0" and second.result["version"] == "2.0"  # type: ignore[attr-defined]
    assert first.result["runtime"] == [{"x": 42}]  # type: ignore[attr-defined]  # the runtime's own packages
    assert first.result["python"] != second.result["python"]  # type: ignore[attr-defined]
    assert len(list_environments(deps_env)) == 2
    plain = run_job(JobSpec(source_path=script(tmp_path, "plain", [], USES_TINYPKG), root=root))
    assert plain.error_type == "analysis_error" and "tinypkg" in (plain.error or "")


def test_a_missing_package_is_a_dependency_error_naming_it(
    tmp_path: Path, root: Path, deps_env: DepsSettings, no_leftovers: None
) -> None:
    result = run_job(JobSpec(source_path=script(tmp_path, "a", ["tinypkg", "nothing-here>=1"]), root=root))
    assert result.error_type == "dependency_error"
    assert "'nothing-here'" in (result.error or ""), result.error
    assert list_environments(deps_env) == []


def test_an_incompatible_requires_python_fails_before_any_resolution(
    tmp_path: Path, root: Path, deps_env: DepsSettings, no_leftovers: None
) -> None:
    result = run_job(JobSpec(source_path=script(tmp_path, "a", ["tinypkg"], python=">=4"), root=root))
    assert result.error_type == "dependency_error"
    assert "requires Python >=4" in (result.error or "")
    assert not (deps_env.cache_dir / "resolutions").exists() or not any(
        (deps_env.cache_dir / "resolutions").iterdir()
    )


def test_the_same_analysis_keeps_its_locked_versions_when_newer_ones_appear(
    tmp_path: Path, root: Path, wheelhouse: Path, deps_env: DepsSettings, no_leftovers: None
) -> None:
    (wheelhouse / "tinypkg-2.0-py3-none-any.whl").unlink()
    path = script(tmp_path, "a", ["tinypkg"])
    first = run_job(JobSpec(source_path=path, root=root))
    assert first.result["version"] == "1.0", first.to_dict()  # type: ignore[index]
    assert any("[deps] built environment" in line for line in first.logs)
    from wheels import write_wheel

    write_wheel(wheelhouse, "tinypkg", "2.0")
    again = run_job(JobSpec(source_path=path, root=root))
    assert again.result["version"] == "1.0"  # type: ignore[index]
    assert not any("[deps]" in line for line in again.logs)  # cached: nothing built
    (env,) = list_environments(deps_env)
    assert "tinypkg==1.0" in (env.path / "analysis-lock.txt").read_text()
    from analysis.runner.cli import main

    assert main(["deps", "build", "--upgrade", str(path)]) == 0  # asked for: resolve again
    assert run_job(JobSpec(source_path=path, root=root)).result["version"] == "2.0"  # type: ignore[index]


def test_notebooks_and_project_defaults_declare_dependencies(
    tmp_path: Path, root: Path, deps_env: DepsSettings, no_leftovers: None
) -> None:
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"script": {"dependencies": ["tinypkg==2.0"]}},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
                "source": "import tinypkg\nctx.set_result(tinypkg.__version__)",
            }
        ],
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    result = run_job(JobSpec(source_path=path, root=root))
    assert result.success and result.result == "2.0", result.to_dict()
    project = root / "p1" / "analysis"
    project.mkdir(parents=True)
    (project / "dependencies.toml").write_text('dependencies = ["other1"]\n')
    body = "def run(ctx, parameters):\n    import other1\n    return other1.__version__\n"
    uses_default = script(tmp_path, "d", [], body)
    assert run_job(JobSpec(source_path=uses_default, root=root, project_id="p1")).result == "1.0"


@pytest.mark.usefixtures("slow_uv", "no_leftovers")
def test_waiting_for_a_build_counts_towards_the_job_deadline(
    tmp_path: Path, root: Path, deps_env: DepsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOW_UV_SLEEP", "60")
    result = run_job(JobSpec(source_path=script(tmp_path, "a", ["tinypkg"]), root=root, timeout_s=3))
    assert result.error_type == "timeout", result.to_dict()
    assert "while its dependencies were being installed" in (result.error or "")
    assert list_environments(deps_env) == []
    assert list((deps_env.cache_dir / "tmp").iterdir()) == []


@pytest.mark.usefixtures("slow_uv", "no_leftovers")
def test_the_build_timeout_is_a_dependency_error(
    tmp_path: Path, root: Path, deps_env: DepsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOW_UV_SLEEP", "60")
    monkeypatch.setenv("ANALYSIS_DEPS_BUILD_TIMEOUT_S", "2")
    result = run_job(JobSpec(source_path=script(tmp_path, "a", ["tinypkg"]), root=root, timeout_s=60))
    assert result.error_type == "dependency_error", result.to_dict()
    assert "ANALYSIS_DEPS_BUILD_TIMEOUT_S" in (result.error or "")
    assert list((deps_env.cache_dir / "tmp").iterdir()) == []


def test_an_unusable_cache_is_a_dependency_error_and_spares_analyses_without_dependencies(
    tmp_path: Path, root: Path, deps_env: DepsSettings, no_leftovers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ANALYSIS_DEPS_CACHE", str(blocker / "cache"))
    result = run_job(JobSpec(source_path=script(tmp_path, "a", ["tinypkg"]), root=root))
    assert result.error_type == "dependency_error", result.to_dict()
    assert "ANALYSIS_DEPS_CACHE" in (result.error or "")
    monkeypatch.setenv("ANALYSIS_DEPS_MAX_BYTES", "lots")
    plain = tmp_path / "plain.py"
    plain.write_text("def run(ctx, parameters):\n    return 7\n")
    assert run_job(JobSpec(source_path=plain, root=root)).result == 7
    bad = run_job(JobSpec(source_path=script(tmp_path, "b", ["tinypkg"]), root=root))
    assert bad.error_type == "dependency_error" and "ANALYSIS_DEPS" in (bad.error or ""), bad.to_dict()

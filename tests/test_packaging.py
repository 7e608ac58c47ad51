"""Packaging guards: the wheel holds every module, imports stay light, the core install works alone."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import analysis
import analysis.runner

REPO = Path(__file__).resolve().parents[1]

#: What the optional extras install (README, Quickstart): none of it may come with the core.
OPTIONAL = ("pandas", "polars", "psycopg", "adbc_driver_manager", "adbc_driver_postgresql", "mysql",
            "connectorx", "arrow_odbc", "vl_convert", "starlette", "uvicorn")  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("analysis_kernel-*.whl")
    return built


def test_wheel_contains_every_module(wheel: Path) -> None:
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


def _envelope(venv: Path, cwd: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [str(venv / "bin" / "analysis"), "run", *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return dict(json.loads(done.stdout))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_core_install_runs_the_quickstart_and_names_the_extra_a_datasource_needs(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True, timeout=540
    )
    python = str(venv / "bin" / "python")
    code = f"import importlib.util as u; print([m for m in {OPTIONAL!r} if u.find_spec(m)])"
    assert subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"

    # the Quickstart's first command: the sample analysis on its SQLite datasource
    sample = REPO / "examples"
    ok = _envelope(venv, tmp_path, str(sample / "monthly_revenue.py"), "--datasources",
                   str(sample / "datasources.toml"), "-p", "month=2024-03")  # fmt: skip
    assert ok["success"] is True, ok

    config = tmp_path / "datasources.toml"
    config.write_text('[pg]\nkind = "postgres"\ndatabase = "dw"\n\n[my]\nkind = "mysql"\ndatabase = "shop"\n')
    for name, kind, module in (("pg", "postgres", "psycopg"), ("my", "mysql", "mysql.connector")):
        script = tmp_path / f"uses_{name}.py"
        script.write_text(
            f"def run(ctx, parameters):\n    return ctx.query_datasource({name!r}, 'SELECT 1').rows\n"
        )
        failed = _envelope(venv, tmp_path, str(script), "--datasources", str(config))
        assert failed["error_type"] == "datasource_error", failed
        assert failed["error"] == (
            f"Datasource {name!r} ({kind}) needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'analysis-kernel[{kind}]'"
        )


def test_gitignore_covers_notebook_checkpoints() -> None:
    done = subprocess.run(
        ["git", "check-ignore", "-q", "notebooks/.ipynb_checkpoints/quickstart-checkpoint.ipynb"],
        cwd=REPO,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, "notebooks/.ipynb_checkpoints/ is not ignored"


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def test_ci_setup_shows_apt_and_pip_progress(tmp_path: Path) -> None:
    """``.ci/setup`` on a fresh machine, with apt, dpkg and python3 replaced by recording stand-ins."""
    repo, shims = tmp_path / "repo", tmp_path / "shims"
    (repo / ".ci").mkdir(parents=True)
    shims.mkdir()
    (repo / ".ci" / "setup").write_text((REPO / ".ci" / "setup").read_text())
    _shim(shims, "dpkg", "exit 1")  # nothing installed yet
    _shim(shims, "service", "exit 0")
    _shim(shims, "sudo", '"$@"')
    _shim(
        shims, "apt-get", 'echo "[apt-get $*]"; echo "Get:1 http://deb.debian.org/debian bookworm InRelease"'
    )
    pip = '#!/usr/bin/env bash\\necho "[pip $*]"; echo "Collecting duckdb>=1.1"'
    _shim(
        shims,
        "python3",
        f"mkdir -p .venv/bin && printf '{pip}\\n' > .venv/bin/python && chmod +x .venv/bin/python",
    )
    env = {"PATH": f"{shims}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(repo / ".ci" / "setup")], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    log = done.stdout + done.stderr
    commands = [line for line in log.splitlines() if line.startswith("[")]
    assert any(c.startswith("[apt-get install") for c in commands), log
    assert any(c.startswith("[pip -m pip install -e") for c in commands), log
    assert not [c for c in commands if " -q" in c], f"silenced: {commands}"
    assert "Get:1 http://deb.debian.org" in log and "Collecting duckdb" in log  # their output is shown
    assert "==> pip: installing the project" in log

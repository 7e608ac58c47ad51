"""Notebooks as saved analyses, run headless in real kernels (issue 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from analysis.runner import AnalysisService, JobResult, JobSpec, run_job

MakeNotebook = Callable[..., Path]


@pytest.fixture
def make_notebook(tmp_path: Path) -> MakeNotebook:
    def make(
        *sources: str, parameters: str | None = "start = '2024-01-01'\nlimit = 3", name: str = "report"
    ) -> Path:
        cells = [new_markdown_cell("# Report")]
        if parameters is not None:
            cell = new_code_cell(parameters)
            cell.metadata["tags"] = ["parameters"]
            cells.append(cell)
        cells.extend(new_code_cell(source) for source in sources)
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = tmp_path / f"{name}.ipynb"
        nbformat.write(nb, path)
        return path

    return make


def run_notebook(path: Path, root: Path, **options: Any) -> JobResult:
    return run_job(JobSpec(source_path=path, root=root, **options))


def cells_of(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["cells"])


def test_parameters_are_injected_as_data_and_set_result_is_the_result(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path, no_leftovers: None
) -> None:
    path = make_notebook(
        "print('start is', start)\nrows = ctx.query('SELECT range AS i FROM range(?)', [limit]).rows",
        "ctx.set_result({'start': start, 'n': len(rows), 'params': ctx.parameters})",
    )
    out = tmp_path / "out.ipynb"
    evil = "'); import os; os.system('touch pwned'); ('"
    result = run_notebook(path, root, parameters={"start": evil, "limit": 5}, output_notebook=out)
    assert result.success, result.to_dict()
    assert result.result == {"start": evil, "n": 5, "params": {"start": evil, "limit": 5}}
    assert f"start is {evil}" in result.logs
    cells = cells_of(out)
    injected = cells[2]
    assert injected["metadata"]["tags"] == ["injected-parameters"]
    assert "globals().update(ctx.parameters)" in "".join(injected["source"])
    assert evil not in json.dumps(injected)
    assert [c["metadata"].get("analysis", {}).get("status") for c in cells] == [None, "ok", "ok", "ok", "ok"]
    stdout = [o["text"] for o in cells[3]["outputs"] if o.get("name") == "stdout"]
    assert stdout == [f"start is {evil}\n"]
    assert cells[3]["execution_count"] is not None
    assert nbformat.validate(nbformat.reads(out.read_text(), as_version=4)) is None
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_without_set_result_the_result_is_null(make_notebook: MakeNotebook, root: Path) -> None:
    result = run_notebook(make_notebook("x = 1"), root)
    assert result.success and result.result is None


def test_unknown_parameters_are_refused_before_a_kernel_starts(
    make_notebook: MakeNotebook, root: Path
) -> None:
    result = run_notebook(make_notebook("x = 1"), root, parameters={"start": "x", "stat_date": "y"})
    assert result.error_type == "invalid_parameters"
    assert "Unknown parameter 'stat_date'" in (result.error or "") and "defines limit, start" in (
        result.error or ""
    )
    assert not root.exists()


def test_a_failing_cell_is_named_and_marked(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path, no_leftovers: None
) -> None:
    out = tmp_path / "out.ipynb"
    path = make_notebook("total = 10\nshare = total / 0", "ctx.set_result('never')")
    result = run_notebook(path, root, output_notebook=out)
    assert result.error_type == "analysis_error"
    cause = "The analysis raised ZeroDivisionError: division by zero"
    assert result.error == f"{cause} (in cell 3 (total = 10 / share = total / 0))."
    assert result.stack is not None and "share = total / 0" in result.stack
    cells = cells_of(out)
    assert cells[3]["metadata"]["analysis"]["status"] == "failed"
    assert cells[3]["outputs"][-1]["ename"] == "ZeroDivisionError"
    assert "analysis" not in cells[4]["metadata"] and cells[4]["outputs"] == []


def test_analysis_errors_in_cells_keep_their_error_type(make_notebook: MakeNotebook, root: Path) -> None:
    result = run_notebook(
        make_notebook("ctx.query_datasource('warehouse', 'SELECT 1')", parameters=None), root
    )
    assert result.error_type == "datasource_not_found"
    assert "(in cell 1 (ctx.query_datasource('warehouse', 'SELECT 1')))" in (result.error or "")


def test_timeout_leaves_the_evidence(make_notebook: MakeNotebook, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ipynb"
    path = make_notebook("print('before')", "import time\ntime.sleep(60)", "print('after')")
    result = run_notebook(path, root, output_notebook=out, timeout_s=3)
    assert result.error_type == "timeout"
    cells = cells_of(out)
    assert cells[3]["outputs"][0]["text"] == "before\n"
    assert cells[4]["metadata"]["analysis"]["status"] == "timeout"
    assert any(o["output_type"] == "error" for o in cells[4]["outputs"])
    assert cells[5]["outputs"] == [] and "analysis" not in cells[5]["metadata"]


def test_a_dead_kernel_leaves_the_evidence(make_notebook: MakeNotebook, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ipynb"
    result = run_notebook(make_notebook("import os\nos._exit(9)", parameters=None), root, output_notebook=out)
    assert result.error_type == "kernel_died"
    cell = cells_of(out)[1]
    assert cell["metadata"]["analysis"]["status"] == "kernel_died"
    assert "exited with code 9" in cell["outputs"][-1]["evalue"]


def test_set_result_goes_through_the_same_limits(make_notebook: MakeNotebook, root: Path) -> None:
    too_large = run_notebook(make_notebook("ctx.set_result('x' * 5000)"), root, max_result_bytes=1000)
    assert too_large.error_type == "result_too_large"
    strange = run_notebook(make_notebook("ctx.set_result({'f': open})"), root)
    assert strange.error_type == "result_not_serializable"


def test_parameter_values_never_reach_the_output_notebook(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.ipynb"
    path = make_notebook("x = len(token)", parameters="token = ''")
    result = run_notebook(path, root, parameters={"token": "s3cr3t-value"}, output_notebook=out)
    assert result.success
    assert "s3cr3t-value" not in out.read_text()


def test_saved_notebooks_run_through_the_service(root: Path, make_notebook: MakeNotebook) -> None:
    scripts = root / "acme" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    make_notebook("ctx.set_result(limit * 2)").rename(scripts / "weekly.ipynb")
    result = AnalysisService(root=root).submit_analysis_job("weekly", {"limit": 21}, project_id="acme")
    assert result.success and result.result == 42


def test_cli_runs_notebooks_with_progress(make_notebook: MakeNotebook, tmp_path: Path) -> None:
    path = make_notebook("ctx.set_result(start)")
    out = tmp_path / "executed.ipynb"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.runner.cli",
            "run",
            str(path),
            "-p",
            "start=2024-03-01",
            "--output-notebook",
            str(out),
            "--progress",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == "2024-03-01"
    assert "3/3" in done.stderr  # the progress bar: parameters, injected, one cell
    assert out.is_file()


def test_not_a_notebook(tmp_path: Path, root: Path) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text("{not json")
    result = run_notebook(path, root)
    assert result.error_type == "invalid_analysis" and "cannot be read as JSON" in (result.error or "")


def test_cells_tagged_raises_exception_may_fail(tmp_path: Path, root: Path) -> None:
    expected = new_code_cell("1 / 0")
    expected.metadata["tags"] = ["raises-exception"]
    nb = new_notebook(cells=[expected, new_code_cell("ctx.set_result('went on')")])
    path = tmp_path / "expected.ipynb"
    out = tmp_path / "out.ipynb"
    nbformat.write(nb, path)
    result = run_notebook(path, root, output_notebook=out)
    assert result.success and result.result == "went on"
    assert cells_of(out)[0]["metadata"]["analysis"]["status"] == "raised"

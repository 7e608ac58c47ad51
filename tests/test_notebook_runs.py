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


def test_a_failing_cell_is_named_as_the_users_notebook_numbers_it(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path, no_leftovers: None
) -> None:
    out = tmp_path / "out.ipynb"
    path = make_notebook("", "x = 1", "\n# shares\ntotal = 10\nshare = total / 0", "ctx.set_result('never')")
    result = run_notebook(path, root, output_notebook=out)
    assert result.error_type == "analysis_error"
    cause = "The analysis raised ZeroDivisionError: division by zero"
    # markdown, parameters [1], injected (no number), empty (not run), x = 1 [2], the failing cell [3]
    assert result.error == f"{cause} (in code cell 4, In [3]: # shares)."
    assert result.stack is not None and "share = total / 0" in result.stack
    cells = cells_of(out)
    assert [c["execution_count"] for c in cells[1:6]] == [1, None, None, 2, 3]
    assert "analysis" not in cells[3]["metadata"]  # the empty cell did not run
    assert cells[5]["metadata"]["analysis"]["status"] == "failed"
    assert cells[5]["outputs"][-1]["ename"] == "ZeroDivisionError"
    assert "analysis" not in cells[6]["metadata"] and cells[6]["outputs"] == []


def test_analysis_errors_in_cells_keep_their_error_type(make_notebook: MakeNotebook, root: Path) -> None:
    result = run_notebook(
        make_notebook("ctx.query_datasource('warehouse', 'SELECT 1')", parameters=None), root
    )
    assert result.error_type == "datasource_not_found"
    assert "(in code cell 1, In [1]: ctx.query_datasource('warehouse', 'SELECT 1'))" in (result.error or "")


def test_timeout_leaves_the_evidence(make_notebook: MakeNotebook, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ipynb"
    path = make_notebook("print('before')", "import time\ntime.sleep(60)", "print('after')")
    result = run_notebook(path, root, output_notebook=out, timeout_s=8)
    assert result.error_type == "timeout"
    assert (result.error or "").endswith("(in code cell 3, In [3]: import time).")
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


def test_a_notebook_papermill_ran_takes_the_new_parameters(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path
) -> None:
    import papermill

    path = make_notebook("assert limit > 0, 'limit must be positive'", "ctx.set_result([start, limit])")
    ran = tmp_path / "ran-by-papermill.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):  # it leaves its error-marker cells too
        papermill.execute_notebook(
            str(path), str(ran), parameters={"limit": -1}, kernel_name="python3", progress_bar=False
        )
    out = tmp_path / "out.ipynb"
    result = run_notebook(ran, root, parameters={"limit": 7}, output_notebook=out)
    assert result.success, result.to_dict()
    assert result.result == ["2024-01-01", 7]
    nb = json.loads(out.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "globals().update(ctx.parameters)" in "".join(injected[0]["source"])
    assert not [c for c in nb["cells"] if "papermill-error-cell-tag" in c["metadata"].get("tags", [])]
    assert "papermill" not in nb["metadata"]
    assert not [c for c in nb["cells"] if {"papermill", "execution"} & set(c["metadata"])]
    nbformat.validate(nbformat.reads(out.read_text(), as_version=4))


def test_display_updates_and_clear_output_are_kept_as_jupyter_shows_them(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.ipynb"
    path = make_notebook(
        "from IPython.display import clear_output\nh = display('first', display_id=True)\nh.update('second')",
        "h.update('third')\ndisplay('other', display_id='x')\ndisplay('other again', display_id='x');",
        "print('kept')\nclear_output(wait=True)",
        "for i in range(3):\n    clear_output(wait=True)\n    print(i)",
        "from tqdm import tqdm\nfor step in tqdm(range(500), mininterval=0, ncols=60):\n    pass\n"
        "print('10%', end='\\r'); print('20%', end='\\r'); print('done')",
        parameters=None,
    )
    result = run_notebook(path, root, output_notebook=out)
    assert result.success, result.to_dict()
    shown = [[o.get("text") or o["data"]["text/plain"] for o in c["outputs"]] for c in cells_of(out)[1:]]
    assert shown[:4] == [["'third'"], ["'other again'", "'other again'"], ["kept\n"], ["2\n"]]
    streams = {o["name"]: o["text"] for o in cells_of(out)[5]["outputs"][::-1]}  # the first of each
    progress = streams["stderr"]  # kept as its last state, as JupyterLab shows it
    assert progress.startswith("100%|") and progress.count("500/500") == 1 and "\r" not in progress
    assert streams["stdout"] == "done\n"


def test_a_deadline_before_the_first_cell_ends_still_leaves_the_notebook(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path, no_leftovers: None
) -> None:
    out = tmp_path / "out.ipynb"
    path = make_notebook("import time\ntime.sleep(60)")
    result = run_notebook(path, root, output_notebook=out, timeout_s=0.05)  # no kernel starts that fast
    assert result.error_type == "timeout"
    nb = nbformat.reads(out.read_text(), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["analysis"] == {"success": False, "error_type": "timeout", "error": result.error}
    assert [c.metadata.get("tags") for c in nb.cells] == [None, ["parameters"], ["injected-parameters"], None]
    assert all(c.get("outputs", []) == [] and "analysis" not in c.metadata for c in nb.cells)


def test_the_output_notebook_says_how_the_job_ended(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.ipynb"
    assert run_notebook(make_notebook("x = 1"), root, output_notebook=out).success
    assert json.loads(out.read_text())["metadata"]["analysis"] == {"success": True}


def test_an_unwritable_output_notebook_is_an_envelope(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "no-such-folder" / "out.ipynb"
    result = run_notebook(make_notebook("x = 1"), root, output_notebook=out)
    assert result.error_type == "invalid_parameters"
    assert result.error == f"The output notebook {out} cannot be written: No such file or directory."
    assert not root.exists()  # refused before a job directory or a kernel


def test_parameters_of_every_parameters_cell_are_known(tmp_path: Path, root: Path) -> None:
    first = new_code_cell("start = '2024-01-01'")
    second = new_code_cell("limit = 3")
    first.metadata["tags"] = second.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[
            first,
            new_code_cell("label = 'from ' + start"),
            second,
            new_code_cell("ctx.set_result([label, limit])"),
        ]
    )
    path = tmp_path / "two.ipynb"
    nbformat.write(nb, path)
    result = run_notebook(path, root, parameters={"start": "2025-06-01", "limit": 7})
    assert result.success, result.to_dict()
    assert result.result == ["from 2025-06-01", 7]
    unknown = run_notebook(path, root, parameters={"stat": 1})
    assert unknown.error == "Unknown parameter 'stat': the notebook's parameters cells define limit, start."


def test_a_notebook_runs_in_its_own_folder_as_in_jupyter(tmp_path: Path, root: Path) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "targets.csv").write_text("category,target\ncoffee,2500\n")
    (folder / "report_helpers.py").write_text("def lines(path):\n    return open(path).read().splitlines()\n")
    cells = [
        new_code_cell("from report_helpers import lines"),
        new_code_cell("ctx.set_result(lines('targets.csv'))"),
    ]
    nbformat.write(new_notebook(cells=cells), folder / "report.ipynb")
    # unsandboxed: a sandboxed notebook sees only its own copy, not its folder (README, "Security model")
    result = run_notebook(folder / "report.ipynb", root, sandbox="off")  # run from another folder
    assert result.success, result.to_dict()
    assert result.result == ["category,target", "coffee,2500"]


DATASOURCES = """
[shop]
kind = "sqlite"
path = "shop.db"
"""


def test_env_above_load_ext_names_the_datasources_as_interactively(tmp_path: Path, root: Path) -> None:
    import sqlite3

    config = tmp_path / "config"
    config.mkdir()
    (config / "datasources.toml").write_text(DATASOURCES)
    with sqlite3.connect(config / "shop.db") as db:
        db.execute("CREATE TABLE t AS SELECT 42 AS answer")
    folder = tmp_path / "reports"
    folder.mkdir()
    nb = new_notebook(
        cells=[
            new_code_cell("%env ANALYSIS_DATASOURCES_FILE=../config/datasources.toml\n%load_ext analysis"),
            new_code_cell("ctx.set_result(ctx.query_datasource('shop', 'SELECT answer FROM t').rows)"),
        ]
    )
    nbformat.write(nb, folder / "report.ipynb")
    result = run_notebook(folder / "report.ipynb", root)
    assert result.success, result.to_dict()
    assert result.result == [{"answer": 42}]


def test_a_saved_notebook_may_only_name_its_own_projects_datasources(root: Path) -> None:
    scripts = root / "acme" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    (root / "other" / "analysis").mkdir(parents=True)
    (root / "other" / "analysis" / "datasources.toml").write_text(DATASOURCES)
    nb = new_notebook(
        cells=[new_code_cell("%env ANALYSIS_DATASOURCES_FILE=../../../other/analysis/datasources.toml")]
    )
    nbformat.write(nb, scripts / "weekly.ipynb")
    result = AnalysisService(root=root).submit_analysis_job("weekly", {}, project_id="acme")
    assert result.error_type == "invalid_analysis"
    assert "outside the folder of project 'acme'" in (result.error or "")


def test_analysis_cells_of_a_headless_notebook_use_the_jobs_project_and_datasources(
    tmp_path: Path, root: Path
) -> None:
    (tmp_path / "config.toml").write_text(DATASOURCES)
    cell = (
        "%%analysis -o seen\ndef run(ctx, parameters):\n    return [ctx.project_id, ctx.datasource_names()]"
    )
    nb = new_notebook(
        cells=[
            new_code_cell("%load_ext analysis"),
            new_code_cell(cell),
            new_code_cell("ctx.set_result(seen)"),
        ]
    )
    nbformat.write(nb, tmp_path / "report.ipynb")
    spec = {"project_id": "acme", "datasources_file": tmp_path / "config.toml"}
    result = run_notebook(tmp_path / "report.ipynb", root, **spec)
    assert result.success, result.to_dict()
    assert result.result == ["acme", ["shop"]]  # what ctx itself sees in this job


def test_a_notebook_for_another_language_is_refused(tmp_path: Path, root: Path) -> None:
    nb = new_notebook(cells=[new_code_cell("x <- 1")])
    nb.metadata["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}
    nbformat.write(nb, tmp_path / "report.ipynb")
    result = run_notebook(tmp_path / "report.ipynb", root)
    assert result.error_type == "invalid_analysis"
    assert (
        result.error
        == "The notebook is for the R kernel (language R); analysis runs notebooks in a Python kernel."
    )
    assert not root.exists()


def test_a_cell_printing_megabytes_keeps_a_bounded_output(
    make_notebook: MakeNotebook, root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.ipynb"
    path = make_notebook(
        "for i in range(200_000):\n    print(f'row {i:07d}')\nprint('the end')", parameters=None
    )
    result = run_notebook(path, root, output_notebook=out, max_log_bytes=20_000)
    assert result.success, result.to_dict()
    text = cells_of(out)[1]["outputs"][0]["text"]
    assert out.stat().st_size < 30_000
    assert text.startswith("row 0000000\n") and text.endswith("row 0199999\nthe end\n")
    assert "characters dropped here: a stream output keeps 20,000 characters" in text

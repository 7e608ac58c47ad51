"""The ``analysis`` console script as a user runs it: a subprocess, stdout, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ANALYSIS = [sys.executable, "-m", "analysis.runner.cli"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ANALYSIS, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "revenue.py"
    path.write_text("def run(ctx, parameters):\n    return parameters\n")
    return path


def test_run_prints_the_envelope_and_parses_values_as_json(script: Path, tmp_path: Path) -> None:
    done = cli(
        "run",
        str(script),
        "-p",
        "startDate=2024-03-01",
        "-p",
        "n=3",
        "-p",
        "flags=[1,true]",
        "-p",
        "name=plain text",
        "--params-json",
        '{"n": 1, "extra": null}',
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    envelope = json.loads(done.stdout)
    assert envelope["success"] is True
    assert envelope["result"] == {
        "n": 3,
        "extra": None,
        "startDate": "2024-03-01",
        "flags": [1, True],
        "name": "plain text",
    }
    assert not list((tmp_path / ".clients").glob("*/analysis/temp/*"))


def test_failed_analysis_exits_1_with_the_envelope(tmp_path: Path) -> None:
    path = tmp_path / "slow.py"
    path.write_text("import time\ndef run(ctx, parameters):\n    time.sleep(60)\n")
    done = cli("run", str(path), "--timeout", "1", cwd=tmp_path)
    assert done.returncode == 1
    envelope = json.loads(done.stdout)
    assert envelope["error_type"] == "timeout" and "1 s deadline" in envelope["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py"], "does not exist"),
        (["run", "{script}", "--project", "../etc"], "Project id '../etc' is invalid"),
        (["run", "{script}", "-p", "novalue"], "KEY=VALUE"),
        (["run", "{script}", "--params-json", "[1]"], "JSON object"),
        (["run", "{script}", "--timeout", "-1"], "positive"),
        (["run", "{script}", "--max-result-bytes", "abc"], "must be a positive integer, not 'abc'"),
        (["frobnicate"], "invalid choice"),
        (["run", "{script}", "--timeout", "abc"], "must be a positive number of seconds, not 'abc'"),
        (["run", "{script}", "--params-json", '{"x": NaN}'], "NaN is not JSON"),
        (["run", "{script}", "--params-json", "[" * 10_000 + "]" * 10_000], "nested too deeply"),
        (["run", "{script}", "-p", "x=" + "[" * 10_000 + "]" * 10_000], "nested too deeply"),
        (["run", "{script}", "--timeuot", "3"], "usage: analysis run"),
    ],
)
def test_usage_errors_exit_2(script: Path, tmp_path: Path, args: list[str], message: str) -> None:
    done = cli(*[a.replace("{script}", str(script)) for a in args], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / ".clients").exists()


def test_validate_notebooks(tmp_path: Path) -> None:
    import nbformat

    cell = nbformat.v4.new_code_cell("start = '2024'")
    cell.metadata["tags"] = ["parameters"]
    good = tmp_path / "good.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell("x = 1")]), good)
    done = cli("validate", str(good), cwd=tmp_path)
    assert done.returncode == 0 and "a notebook of 2 code cells" in done.stdout
    cell.source = "start = "
    bad = tmp_path / "bad.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), bad)
    done = cli("validate", str(bad), cwd=tmp_path)
    assert done.returncode == 1 and "parameters cell has a syntax error" in done.stdout
    (tmp_path / "binary.py").write_bytes(b"\xff\xfe")
    assert "not UTF-8" in cli("validate", "binary.py", cwd=tmp_path).stdout


def test_validate(script: Path, tmp_path: Path) -> None:
    ok = cli("validate", str(script), cwd=tmp_path)
    assert ok.returncode == 0 and "ok:" in ok.stdout
    bad = tmp_path / "bad.py"
    bad.write_text("def run(ctx):\n    pass\n")
    done = cli("validate", str(bad), cwd=tmp_path)
    assert done.returncode == 1 and "two positional arguments" in done.stdout


def test_readme_quickstart_runs_the_sample_analysis(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    done = cli(
        "run",
        str(repo / "examples" / "monthly_revenue.py"),
        "--datasources",
        str(repo / "examples" / "datasources.toml"),
        "-p",
        "month=2024-03",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)["result"]
    assert result["month"] == "2024-03"
    assert result["revenue"] == pytest.approx(sum(r["revenue"] for r in result["by_category"]))
    assert {r["category"] for r in result["by_category"]} == {"coffee", "tea", "gear"}


def test_ctrl_c_cancels_the_job_and_still_prints_the_envelope(tmp_path: Path) -> None:
    import signal
    import time

    path = tmp_path / "slow.py"
    path.write_text(
        "import time\ndef run(ctx, parameters):\n    print('started', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen([*ANALYSIS, "run", str(path)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    envelope = json.loads(out)
    assert envelope["error_type"] == "cancelled"
    assert not list((tmp_path / ".clients").glob("*/analysis/temp/*"))


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    done = cli("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"analysis {version('analysis-kernel')}"


def test_root_option_reaches_the_kernel(tmp_path: Path) -> None:
    import sqlite3

    root = tmp_path / "srv" / "projects"
    project = root / "acme" / "analysis"
    project.mkdir(parents=True)
    sqlite3.connect(project / "shop.db").executescript("CREATE TABLE t(x); INSERT INTO t VALUES (7);")
    (project / "datasources.toml").write_text(f'[shop]\nkind = "sqlite"\npath = "{project / "shop.db"}"\n')
    script = tmp_path / "q.py"
    script.write_text(
        "def run(ctx, parameters):\n    return ctx.query_datasource('shop', 'SELECT x FROM t').rows\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    done = cli("run", str(script), "--root", str(root), "--project", "acme", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"] == [{"x": 7}]


def test_log_output_streams_lines_while_the_job_runs(tmp_path: Path) -> None:
    import time

    path = tmp_path / "chatty.py"
    path.write_text(
        "import time\ndef run(ctx, parameters):\n    ctx.log('first')\n    time.sleep(30)\n    return 1\n"
    )
    proc = subprocess.Popen(
        [*ANALYSIS, "run", str(path), "--log-output", "--timeout", "60"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        started = time.monotonic()
        line = proc.stderr.readline()
        while line and "first" not in line:
            line = proc.stderr.readline()
        assert line.strip() == "[log] first"
        assert time.monotonic() - started < 25  # seen long before the job ends
    finally:
        proc.kill()
        proc.communicate()


def test_progress_for_a_script(script: Path, tmp_path: Path) -> None:
    done = cli("run", str(script), "--progress", cwd=tmp_path)
    assert done.returncode == 0
    assert "2/2" in done.stderr and "analysis" in done.stderr


def _job_pids(root: Path) -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(str(root) in part for part in (p.info["cmdline"] or []))
    ]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_runner_stops_the_kernel(tmp_path: Path, how: str) -> None:
    import signal
    import tempfile

    import psutil

    # deep enough that the job's sockets are reached by a short path: nothing of it may outlive the runner
    root = tmp_path / ("d" * 60) / ("e" * 60) / "projects"
    temp = Path(tempfile.gettempdir())
    before = {p.name for p in temp.glob("analysis-k-*")}
    path = tmp_path / "slow.py"
    path.write_text(
        "import time\ndef run(ctx, parameters):\n    print('started', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [*ANALYSIS, "run", str(path), "--root", str(root), "--log-output"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    while "started" not in (proc.stderr.readline() or "started"):
        pass
    kernels = [p for p in psutil.Process(proc.pid).children(recursive=True)]
    assert kernels
    proc.send_signal(getattr(signal, how))
    out, _ = proc.communicate(timeout=30)
    if how == "SIGTERM":
        assert proc.returncode == 1
        assert json.loads(out)["error_type"] == "cancelled"
        assert not list(root.glob("*/analysis/temp/*"))
    _, alive = psutil.wait_procs(kernels, timeout=5)
    assert not alive, f"kernel processes outlived their runner: {alive}"
    assert {p.name for p in temp.glob("analysis-k-*")} <= before, "a socket folder outlived its runner"
    if how == "SIGKILL":  # the next runner sweeps the job directory the dead one left
        assert list(root.glob("*/analysis/temp/*"))
        assert cli("run", str(tmp_path / "slow.py"), "--root", str(root), "--timeout", "1", cwd=tmp_path)
        assert not list(root.glob("*/analysis/temp/*"))


def test_result_file_takes_a_table_result_too_large_for_the_envelope(tmp_path: Path) -> None:
    script = tmp_path / "big.py"
    script.write_text(
        "def run(ctx, parameters):\n"
        "    return ctx.query('SELECT range AS i, repeat(\\'x\\', 20) AS s FROM range(100000)')\n"
    )
    target = tmp_path / "out.parquet"
    done = cli("run", str(script), "--max-result-bytes", "100000", "--result-file", str(target), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    envelope = json.loads(done.stdout)
    assert envelope["result"] is None and envelope["result_ref"]["rows"] == 100000
    assert envelope["result_preview"][0] == {"i": 0, "s": "x" * 20}
    import pyarrow.parquet as pq

    table = pq.read_table(target)
    assert table.num_rows == 100000 and table.column_names == ["i", "s"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".analysis-")] == []
    without = cli("run", str(script), "--max-result-bytes", "100000", cwd=tmp_path)
    assert json.loads(without.stdout)["error_type"] == "result_too_large"

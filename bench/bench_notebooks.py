"""Notebook speed figures, measured in one run on one machine (issue 5).

    .venv/bin/python bench/bench_notebooks.py [--repeat N]

1. The same parameterised notebook (three cells: parameters, a DuckDB aggregate over 1M
   generated rows, the result) run whole-process through ``analysis run`` and ``papermill``.
2. A 1M-row DuckDB result to a pandas DataFrame, in the same (in-process IPython) kernel:
   ``%%analysis --sql -o df``; jupysql's ``%%sql df <<`` with ``autopandas`` on a native DuckDB
   connection; DuckDB's own ``.df()``.

Figures are medians of ``--repeat`` runs; ratios compare figures from this same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from timing import median_s

BIN = Path(sys.executable).parent
QUERY = (
    "SELECT range AS id, range * 1.5 AS amount, 'customer-' || (range % 1000) AS customer, "
    "DATE '2024-01-01' + (range % 365)::INTEGER AS day FROM range(1000000)"
)


def notebook_runs(repeat: int) -> list[tuple[str, float]]:
    import nbformat

    work = Path(tempfile.mkdtemp(prefix="bench-nb-"))
    params = nbformat.v4.new_code_cell("rows = 1_000_000")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(
        cells=[
            params,
            nbformat.v4.new_code_cell(
                "import duckdb\n"
                "sql = f'SELECT range % 100 AS k, sum(range) AS s FROM range({rows}) GROUP BY 1'\n"
                "totals = duckdb.sql(sql).fetchall()"
            ),
            nbformat.v4.new_code_cell(
                "result = len(totals)\ntry:\n    ctx.set_result(result)\nexcept NameError:\n    pass"
            ),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, work / "report.ipynb")

    def ours() -> None:
        subprocess.run(
            [str(BIN / "analysis"), "run", "report.ipynb", "-p", "rows=1000000"],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=300,
        )

    def papermill() -> None:
        subprocess.run(
            [
                str(BIN / "papermill"),
                "report.ipynb",
                "out.ipynb",
                "-p",
                "rows",
                "1000000",
                "--no-progress-bar",
            ],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=300,
        )

    return [
        ("analysis run report.ipynb", median_s(ours, repeat)),
        ("papermill", median_s(papermill, repeat)),
    ]


def to_pandas(repeat: int) -> list[tuple[str, float]]:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.history_manager.enabled = False
    quiet = contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        shell.run_line_magic("load_ext", "analysis")
        shell.run_line_magic("load_ext", "sql")
        shell.run_cell("import duckdb\nconn = duckdb.connect()")
        shell.run_line_magic("sql", "conn --alias duck")
        for setting in ("SqlMagic.autopandas = True", "SqlMagic.displaylimit = 0", "SqlMagic.feedback = 0"):
            shell.run_line_magic("config", setting)
        cells = {
            "%%analysis --sql -o df": f"%%analysis --sql -o df\n{QUERY}",
            "jupysql %%sql (autopandas)": f"%%sql df <<\n{QUERY}",
            "duckdb .df()": f"df = conn.sql({QUERY!r}).df()",
        }
        results = []
        for name, cell in cells.items():
            shell.run_cell(cell)  # warm up
            results.append((name, median_s(lambda cell=cell: shell.run_cell(cell), repeat)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    runs = notebook_runs(args.repeat)
    print(f"\nParameterised 3-cell notebook, whole process (median of {args.repeat})")
    print(f"{'path':30} {'seconds':>8} {'x ours':>7}")
    for name, seconds in runs:
        print(f"{name:30} {seconds:8.3f} {seconds / runs[0][1]:7.2f}")
    print(f"papermill / analysis run: {runs[1][1] / runs[0][1]:.2f} (target: > 1, ours faster)")

    frames = to_pandas(args.repeat)
    duck = frames[2][1]
    print(f"\n1M-row DuckDB result to a pandas DataFrame, same kernel (median of {args.repeat})")
    print(f"{'path':30} {'seconds':>8} {'x duckdb':>8}")
    for name, seconds in frames:
        print(f"{name:30} {seconds:8.3f} {seconds / duck:8.2f}")
    print(f"ours / duckdb .df(): {frames[0][1] / duck:.2f} (target: <= 1.1)")


if __name__ == "__main__":
    main()

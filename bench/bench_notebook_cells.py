"""Executing notebooks: our cell loop against nbclient's, measured in one run (issue 8).

    .venv/bin/python bench/bench_notebook_cells.py [--repeat N] [--cells N]

Why the runner keeps its own cell loop rather than executing through nbclient:

1. Per-cell cost: a notebook of ``--cells`` trivial cells and one of 1 cell, each executed
   (kernel start included) by ``run_job`` and by ``nbclient.NotebookClient.execute``; the
   difference divided by the extra cells is the per-cell cost of each loop.
2. Import cost in the runner: ``import analysis.runner.jobs`` alone and with ``nbclient``.
3. Install size nbclient would add to the core install (its dependency closure minus the core's).

Figures are medians of ``--repeat`` runs; ratios compare figures from this same run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from timing import median_s


def _notebook(path: Path, cells: int) -> Path:
    import nbformat

    source = "h = display(0, display_id=True)\nfor i in range(3):\n    h.update(i)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for _ in range(cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def per_cell(repeat: int, cells: int) -> list[tuple[str, float, float]]:
    import nbformat
    from nbclient import NotebookClient

    from analysis.runner import JobSpec, run_job

    work = Path(tempfile.mkdtemp(prefix="bench-cells-"))
    small, large = _notebook(work / "one.ipynb", 1), _notebook(work / "many.ipynb", cells)

    def ours(path: Path) -> None:
        result = run_job(
            JobSpec(source_path=path, root=work / ".clients", output_notebook=work / "out.ipynb")
        )
        assert result.success, result.to_dict()

    def theirs(path: Path) -> None:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
        nbformat.write(nb, work / "out-nbclient.ipynb")

    rows = []
    for name, run in (("analysis run_job", ours), ("nbclient execute", theirs)):
        one = median_s(lambda run=run: run(small), repeat)
        many = median_s(lambda run=run: run(large), repeat)
        rows.append((name, one, (many - one) / (cells - 1) * 1000))
    return rows


def import_cost(repeat: int) -> list[tuple[str, float]]:
    def importing(modules: str) -> float:
        code = f"import {modules}"
        return median_s(lambda: subprocess.run([sys.executable, "-c", code], check=True), repeat)

    base = importing("analysis.runner.jobs")
    return [
        ("import analysis.runner.jobs", base),
        ("  + nbclient, nbformat", importing("analysis.runner.jobs, nbclient, nbformat")),
    ]


def _closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(r for r in requires if "extra ==" not in r)
    return seen


def _size_mb(name: str) -> float:
    dist = metadata.distribution(name)
    return sum((f.size or 0) for f in dist.files or []) / 1e6


def added_install() -> list[tuple[str, float]]:
    core = _closure([r for r in metadata.requires("analysis-kernel") or [] if "extra ==" not in r])
    added = sorted(_closure(["nbclient"]) - core)
    return [(name, _size_mb(name)) for name in added]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cells", type=int, default=201)
    args = parser.parse_args()

    rows = per_cell(args.repeat, args.cells)
    print(f"\nNotebook execution, kernel start included (median of {args.repeat})")
    print(f"{'loop':20} {'1 cell s':>9} {'ms/extra cell':>14} {'x ours':>7}")
    for name, one, ms in rows:
        print(f"{name:20} {one:9.3f} {ms:14.2f} {ms / rows[0][2]:7.2f}")

    imports = import_cost(args.repeat)
    print(f"\nRunner import, fresh interpreter (median of {args.repeat})")
    for name, seconds in imports:
        print(f"{name:32} {seconds:7.3f} s")
    print(f"extra import time with nbclient: {(imports[1][1] - imports[0][1]) * 1000:.0f} ms")

    added = added_install()
    print("\nInstalled packages nbclient would add to the core install")
    for name, size in added:
        print(f"{name:32} {size:7.2f} MB")
    print(f"{'total':32} {sum(size for _, size in added):7.2f} MB")


if __name__ == "__main__":
    main()

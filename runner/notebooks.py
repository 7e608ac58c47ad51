"""Notebooks as analyses, runner side: reading, parameters, and the output notebook.

A notebook is read as the JSON it is (nbformat 4). Its cell tagged ``parameters`` holds the
defaults; the runner adds an ``injected-parameters`` cell after it whose code is always
``globals().update(ctx.parameters)``: values travel in the job's JSON document and never
become source code. A parameter the ``parameters`` cell does not assign is refused
(``invalid_parameters``). The output notebook is rewritten (atomically) after every cell.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.errors import InvalidAnalysisError, InvalidParametersError

__all__ = ["INJECTED_SOURCE", "NotebookRun", "error_stack", "load_notebook"]

INJECTED_SOURCE = (
    "# Parameters injected by analysis from the job's parameters document.\nglobals().update(ctx.parameters)"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_notebook(path: Path) -> dict[str, Any]:
    """The notebook at ``path`` as a dict; ``InvalidAnalysisError`` unless it is an nbformat 4 notebook."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidAnalysisError(f"The notebook {path} cannot be read as JSON: {exc}.") from None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise InvalidAnalysisError(f"The notebook {path} is not an nbformat 4 notebook.")
    return nb


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _assigned_names(source: str) -> set[str]:
    """Names a parameters cell assigns at top level (magics and shell lines ignored)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise InvalidAnalysisError(
            f"The parameters cell has a syntax error at line {exc.lineno}: {exc.msg}."
        ) from None
    names: set[str] = set()
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign | ast.AugAssign)
            else []
        )
        for target in targets:
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _first_lines(source: str, count: int = 2) -> str:
    lines = [line for line in source.strip().splitlines() if line.strip()][:count]
    return " / ".join(lines)[:160]


@dataclass
class NotebookRun:
    """The notebook as it runs: the cells to execute and the output notebook being written.

    Parameters
    ----------
    notebook
        The source notebook (left untouched).
    parameters
        The job's parameters.
    output_path
        Where to write the executed notebook after every cell (``None``: nowhere).
    """

    notebook: dict[str, Any]
    parameters: dict[str, Any]
    output_path: Path | None = None
    cells: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.cells = []
        for cell in copy.deepcopy(self.notebook["cells"]):
            self.cells.append(cell)
            if "parameters" in cell.get("metadata", {}).get("tags", []) and cell.get("cell_type") == "code":
                known = _assigned_names(_source(cell))
                unknown = sorted(set(self.parameters) - known)
                if unknown:
                    names = ", ".join(map(repr, unknown))
                    raise InvalidParametersError(
                        f"Unknown parameter{'s' if len(unknown) > 1 else ''} {names}: "
                        f"the notebook's parameters cell defines {', '.join(sorted(known)) or 'none'}."
                    )
                injected: dict[str, Any] = {"id": f"injected-{uuid.uuid4().hex[:8]}"}
                if self.notebook.get("nbformat_minor", 0) < 5:  # cell ids came with nbformat 4.5
                    injected = {}
                self.cells.append(
                    {
                        **injected,
                        "cell_type": "code",
                        "execution_count": None,
                        "metadata": {"tags": ["injected-parameters"]},
                        "outputs": [],
                        "source": INJECTED_SOURCE,
                    }
                )
        for cell in self.cells:
            if cell.get("cell_type") == "code":
                cell["outputs"] = []
                cell["execution_count"] = None
                cell.setdefault("metadata", {}).pop("analysis", None)

    def code_cells(self) -> list[tuple[int, str]]:
        """``(index, source)`` of every code cell to run, in order (indexes into :attr:`cells`)."""
        return [(i, _source(c)) for i, c in enumerate(self.cells) if c.get("cell_type") == "code"]

    def may_raise(self, index: int) -> bool:
        """Whether the cell is tagged ``raises-exception`` (its error is expected; the run goes on)."""
        return "raises-exception" in self.cells[index].get("metadata", {}).get("tags", [])

    def describe_cell(self, index: int) -> str:
        """``cell 3 (first lines...)``, for error messages."""
        return f"cell {index} ({_first_lines(_source(self.cells[index]))})"

    def add_output(self, index: int, kind: str, content: dict[str, Any]) -> None:
        """Record an iopub output message of the cell as an nbformat output."""
        outputs = self.cells[index]["outputs"]
        if kind == "execute_input":
            self.cells[index]["execution_count"] = content.get("execution_count")
        elif kind == "stream":
            if (
                outputs
                and outputs[-1].get("output_type") == "stream"
                and outputs[-1]["name"] == content["name"]
            ):
                outputs[-1]["text"] += content["text"]
            else:
                outputs.append({"output_type": "stream", "name": content["name"], "text": content["text"]})
        elif kind in ("display_data", "execute_result"):
            output = {
                "output_type": kind,
                "data": content.get("data", {}),
                "metadata": content.get("metadata", {}),
            }
            if kind == "execute_result":
                output["execution_count"] = content.get("execution_count")
            outputs.append(output)
        elif kind == "error":
            outputs.append(
                {
                    "output_type": "error",
                    "ename": content.get("ename", ""),
                    "evalue": content.get("evalue", ""),
                    "traceback": content.get("traceback", []),
                }
            )
        elif kind == "clear_output":
            outputs.clear()

    def mark(
        self, index: int, status: str, *, execution_count: int | None = None, error: str | None = None
    ) -> None:
        """Set a cell's status (``ok``, ``failed``, ``timeout``...) and, for failures, show why."""
        cell = self.cells[index]
        cell["metadata"]["analysis"] = {"status": status}
        if execution_count is not None:
            cell["execution_count"] = execution_count
        if error is not None and not any(o.get("output_type") == "error" for o in cell["outputs"]):
            cell["outputs"].append(
                {"output_type": "error", "ename": status, "evalue": error, "traceback": [error]}
            )

    def save(self) -> None:
        """Write the output notebook (atomically), if there is one."""
        if self.output_path is None:
            return
        nb = dict(self.notebook, cells=self.cells)
        tmp = self.output_path.with_name(f".{self.output_path.name}.tmp")
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.output_path)


def error_stack(content: dict[str, Any] | None) -> str | None:
    """The traceback of an error message as plain text."""
    if not content:
        return None
    return _ANSI.sub("", "\n".join(content.get("traceback", []))) or None

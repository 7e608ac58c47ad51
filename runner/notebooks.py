"""Notebooks as analyses, runner side: reading, parameters, and the output notebook.

A notebook is read as the JSON it is (nbformat 4). Its cells tagged ``parameters`` hold the
defaults; the runner adds an ``injected-parameters`` cell after each of them whose code is
always ``globals().update(ctx.parameters)``: values travel in the job's JSON document and never
become source code. A parameter no ``parameters`` cell assigns is refused
(``invalid_parameters``). What an earlier papermill (or analysis) run left in the notebook is
dropped first, as papermill does: its injected cell, its error-marker cells, its metadata.
The output notebook is written before the kernel starts and (atomically) after every cell.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.config import Settings
from analysis.errors import InvalidAnalysisError, InvalidParametersError
from analysis.runner.notebook_outputs import OutputRecorder

__all__ = ["INJECTED_SOURCE", "NotebookRun", "error_stack", "load_notebook"]

INJECTED_SOURCE = (
    "# Parameters injected by analysis from the job's parameters document.\nglobals().update(ctx.parameters)"
)
INJECTED_TAG = "injected-parameters"
#: Cells papermill adds to a notebook whose run failed (it removes them before a new run).
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"
#: Metadata of an earlier run, stale in a new one: papermill's, nbclient's timings, ours.
_STALE_METADATA = ("papermill", "execution", "analysis")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: ``%env NAME=VALUE`` / ``%env NAME VALUE`` (and ``%set_env``), split as IPython splits them.
_ENV_MAGIC = re.compile(r"^\s*%(?:set_)?env\s+(\w+)(?:\s*=\s*|\s+)(\S.*?)\s*$")
_LOAD_EXT = re.compile(r"^\s*%(?:re)?load_ext\s+analysis\s*$")


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


def _tags(cell: dict[str, Any]) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return tags if isinstance(tags, list) else []


def _is_parameters_cell(cell: dict[str, Any]) -> bool:
    return cell.get("cell_type") == "code" and "parameters" in _tags(cell)


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


def _first_line(source: str) -> str:
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= 80 else line[:79] + "…"


def _clean(cell: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``cell`` without outputs or metadata of an earlier run."""
    cell = copy.deepcopy(cell)
    metadata = cell.setdefault("metadata", {})
    for key in _STALE_METADATA:
        metadata.pop(key, None)
    if cell.get("cell_type") == "code":
        cell["outputs"] = []
        cell["execution_count"] = None
    return cell


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
        Where to write the executed notebook (``None``: nowhere).
    max_stream_chars
        Characters kept of one stream output (first and last halves); ``None``: all of them.
    """

    notebook: dict[str, Any]
    parameters: dict[str, Any]
    output_path: Path | None = None
    max_stream_chars: int | None = None
    cells: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self._check_language()
        own = [
            _clean(cell)
            for cell in self.notebook["cells"]
            if not {INJECTED_TAG, PAPERMILL_ERROR_TAG} & set(_tags(cell))
        ]
        self._check_parameters(own)
        self.metadata = {
            k: v for k, v in self.notebook.get("metadata", {}).items() if k not in _STALE_METADATA
        }
        self.cells = []
        #: index in :attr:`cells` -> number of the code cell in the user's notebook (1-based)
        self._numbers: dict[int, int] = {}
        self._injected: set[int] = set()
        for cell in own:
            if cell.get("cell_type") == "code":
                self._numbers[len(self.cells)] = len(self._numbers) + 1
            self.cells.append(cell)
            if _is_parameters_cell(cell):
                self._injected.add(len(self.cells))
                self.cells.append(self._injected_cell())
        self.outputs = OutputRecorder(self.cells, self.max_stream_chars)

    def _check_language(self) -> None:
        """Refuse a notebook written for another language's kernel (R, Julia...)."""
        metadata = self.notebook.get("metadata") or {}
        kernelspec, language_info = metadata.get("kernelspec") or {}, metadata.get("language_info") or {}
        language = kernelspec.get("language") or language_info.get("name")
        if isinstance(language, str) and language.lower() != "python":
            name = kernelspec.get("display_name") or kernelspec.get("name") or language
            raise InvalidAnalysisError(
                f"The notebook is for the {name} kernel (language {language}); "
                "analysis runs notebooks in a Python kernel."
            )

    def _check_parameters(self, cells: list[dict[str, Any]]) -> None:
        declared = [_assigned_names(_source(cell)) for cell in cells if _is_parameters_cell(cell)]
        if not declared:
            return
        known = set().union(*declared)
        unknown = sorted(set(self.parameters) - known)
        if unknown:
            names = ", ".join(map(repr, unknown))
            which = "parameters cells define" if len(declared) > 1 else "parameters cell defines"
            raise InvalidParametersError(
                f"Unknown parameter{'s' if len(unknown) > 1 else ''} {names}: "
                f"the notebook's {which} {', '.join(sorted(known)) or 'none'}."
            )

    def _injected_cell(self) -> dict[str, Any]:
        cell: dict[str, Any] = {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {"tags": [INJECTED_TAG]},
            "outputs": [],
            "source": INJECTED_SOURCE,
        }
        if self.notebook.get("nbformat_minor", 0) >= 5:  # cell ids came with nbformat 4.5
            cell = {"id": f"injected-{uuid.uuid4().hex[:8]}", **cell}
        return cell

    def job_settings(
        self,
        source: Path,
        *,
        datasources_file: Path | None,
        cwd: Path | None,
        root: Path,
        project_id: str,
    ) -> tuple[Path, Path]:
        """The job's kernel folder and datasources file, found as a notebook in Jupyter finds them.

        Jupyter starts a notebook's kernel in the notebook's folder, and ``%load_ext analysis``
        reads ``ANALYSIS_DATASOURCES_FILE`` as it is then, so a ``%env`` line above it counts.
        The datasources file is, in order: ``datasources_file`` (the caller's); the notebook's own
        ``%env ANALYSIS_DATASOURCES_FILE=...`` above ``%load_ext analysis`` (relative to the
        kernel's folder); the runner's ``ANALYSIS_DATASOURCES_FILE``; the project's
        ``{root}/{project_id}/analysis/datasources.toml``. It goes to the job document as an
        absolute path. A saved analysis (a notebook under ``root``) may only name a file of its
        own project.
        """
        folder = (cwd or source.parent).resolve()
        if datasources_file is not None:
            return folder, datasources_file.resolve()
        declared = self._declared_env().get("ANALYSIS_DATASOURCES_FILE")
        if declared is not None:
            path = (folder / Path(declared).expanduser()).resolve()
            project = (root / project_id).resolve()
            if source.resolve().is_relative_to(root.resolve()) and not path.is_relative_to(project):
                raise InvalidAnalysisError(
                    f"The notebook sets ANALYSIS_DATASOURCES_FILE to {path}, outside the folder of "
                    f"project {project_id!r} ({project}): a saved analysis uses its project's datasources."
                )
            return folder, path
        settings = dataclasses.replace(Settings.from_env(), root=root)  # the magics' rule, the job's root
        return folder, settings.datasources_path(project_id).resolve()

    def _declared_env(self) -> dict[str, str]:
        """Variables the notebook sets with ``%env`` before its ``%load_ext analysis``."""
        env: dict[str, str] = {}
        for _, source in self.code_cells():
            for line in source.splitlines():
                if _LOAD_EXT.match(line):
                    return env
                match = _ENV_MAGIC.match(line)
                if match and not {"$", "{"} & set(match[2]):  # IPython would expand these
                    env[match[1]] = match[2]
        return env

    def code_cells(self) -> list[tuple[int, str]]:
        """``(index, source)`` of every code cell to run, in order (indexes into :attr:`cells`).

        Empty code cells are skipped, as JupyterLab and nbclient skip them.
        """
        cells = [(i, _source(c)) for i, c in enumerate(self.cells) if c.get("cell_type") == "code"]
        return [(i, source) for i, source in cells if source.strip()]

    def is_injected(self, index: int) -> bool:
        """Whether the cell is one the runner added (it takes no execution count)."""
        return index in self._injected

    def may_raise(self, index: int) -> bool:
        """Whether the cell is tagged ``raises-exception`` (its error is expected; the run goes on)."""
        return "raises-exception" in _tags(self.cells[index])

    def describe_cell(self, index: int) -> str:
        """The cell as the user's notebook numbers it: ``code cell 3, In [3]: first line``."""
        if index in self._injected:
            return "the injected-parameters cell"
        count = self.cells[index].get("execution_count")
        prompt = f", In [{count}]" if count is not None else ""
        return f"code cell {self._numbers[index]}{prompt}: {_first_line(_source(self.cells[index]))}"

    def add_output(self, index: int, kind: str, content: dict[str, Any]) -> None:
        """Record an iopub message of the cell (its execution count, or an output)."""
        if kind == "execute_input":
            if index not in self._injected:
                self.cells[index]["execution_count"] = content.get("execution_count")
            return
        self.outputs.record(index, kind, content)

    def mark(self, index: int, status: str, *, error: str | None = None) -> None:
        """Set a cell's status (``ok``, ``failed``, ``timeout``...) and, for failures, show why."""
        cell = self.cells[index]
        cell["metadata"]["analysis"] = {"status": status}
        if error is not None and not any(o.get("output_type") == "error" for o in cell["outputs"]):
            cell["outputs"].append(
                {"output_type": "error", "ename": status, "evalue": error, "traceback": [error]}
            )

    def finish(self, outcome: dict[str, Any]) -> None:
        """Record how the job ended in the notebook's ``metadata.analysis`` and write it."""
        ended: dict[str, Any] = {"success": bool(outcome.get("success"))}
        if not ended["success"]:
            ended.update(error_type=outcome.get("error_type"), error=outcome.get("error"))
        self.metadata["analysis"] = ended
        self.save()

    def save(self) -> None:
        """Write the output notebook (atomically), if there is one."""
        if self.output_path is None:
            return
        nb = dict(self.notebook, metadata=self.metadata, cells=self.cells)
        tmp = self.output_path.with_name(f".{self.output_path.name}.tmp")
        try:
            tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, self.output_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InvalidParametersError(
                f"The output notebook {self.output_path} cannot be written: {exc.strerror}."
            ) from None


def error_stack(content: dict[str, Any] | None) -> str | None:
    """The traceback of an error message as plain text."""
    if not content:
        return None
    return _ANSI.sub("", "\n".join(content.get("traceback", []))) or None

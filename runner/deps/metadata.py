"""What an analysis declares it needs: PEP 723 inline metadata, notebook metadata, project defaults.

* A script holds a ``# /// script`` block (PEP 723) with ``dependencies = [...]`` and
  ``requires-python = "..."``.
* A notebook holds the same table in its metadata under the key ``script``
  (``{"script": {"dependencies": [...], "requires-python": "..."}}``), or a first code cell
  holding the same ``# /// script`` block as a script (declaring both is refused).
* A project may add defaults for all of its analyses in ``{root}/{project}/analysis/dependencies.toml``
  (the same two keys, as TOML); they are resolved together with the analysis's own.
"""

from __future__ import annotations

import json
import platform
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from analysis.errors import DependencyError, InvalidAnalysisError

__all__ = ["NOTEBOOK_KEY", "PROJECT_DEFAULTS_FILE", "Requirements", "read_requirements"]

#: The notebook metadata key holding the ``script`` table.
NOTEBOOK_KEY = "script"
#: The file of a project's default dependencies, in ``{root}/{project}/analysis/``.
PROJECT_DEFAULTS_FILE = "dependencies.toml"
# The reference regular expression of PEP 723.
_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


@dataclass(frozen=True)
class Requirements:
    """The packages an analysis needs (PEP 508 strings, normalised and sorted) and its Python range."""

    dependencies: tuple[str, ...] = ()
    requires_python: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dependencies)

    def merged(self, other: Requirements) -> Requirements:
        """Both sets of requirements together."""
        return Requirements(
            tuple(sorted({*self.dependencies, *other.dependencies})),
            tuple(sorted({*self.requires_python, *other.requires_python})),
        )

    def check_python(self, version: str | None = None) -> None:
        """Raise ``DependencyError`` unless the runtime's Python is in every ``requires-python`` range."""
        version = version or platform.python_version()
        for spec in self.requires_python:
            if not SpecifierSet(spec).contains(version, prereleases=True):
                raise DependencyError(
                    f"The analysis requires Python {spec} (requires-python) but the runtime runs "
                    f"Python {version}.",
                    package="python",
                )


def _table(data: Any, where: str) -> Requirements:
    """Check a ``script`` table and turn it into :class:`Requirements`."""
    if not isinstance(data, dict):
        raise InvalidAnalysisError(f"The dependencies of {where} must be a table.")
    deps = data.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise InvalidAnalysisError(f"'dependencies' in {where} must be a list of strings.")
    normalised = set()
    for text in deps:
        try:
            normalised.add(str(Requirement(text)))
        except InvalidRequirement as exc:
            raise InvalidAnalysisError(f"The dependency {text!r} in {where} is not valid: {exc}.") from None
    python = data.get("requires-python")
    pythons: tuple[str, ...] = ()
    if python is not None:
        try:
            pythons = (str(SpecifierSet(python)),)
        except (InvalidSpecifier, TypeError):
            raise InvalidAnalysisError(f"'requires-python' in {where} is not valid: {python!r}.") from None
    return Requirements(tuple(sorted(normalised)), pythons)


def script_block(text: str, where: str) -> Requirements | None:
    """The requirements of a ``# /// script`` block in ``text``; ``None`` when it has none."""
    blocks = [m for m in _BLOCK.finditer(text) if m.group("type") == "script"]
    if not blocks:
        return None
    if len(blocks) > 1:
        raise InvalidAnalysisError(f"{where} has more than one '# /// script' block.")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidAnalysisError(f"The '# /// script' block of {where} is not valid TOML: {exc}.") from None
    return _table(data, f"the '# /// script' block of {where}")


def _notebook(text: str, where: str) -> Requirements | None:
    try:
        nb = json.loads(text)
    except ValueError as exc:
        raise InvalidAnalysisError(f"The notebook {where} cannot be read as JSON: {exc}.") from None
    metadata = nb.get("metadata") if isinstance(nb, dict) else None
    declared = metadata.get(NOTEBOOK_KEY) if isinstance(metadata, dict) else None
    code = [c for c in nb.get("cells", []) if isinstance(c, dict) and c.get("cell_type") == "code"]
    in_cell = None
    if code:
        source = code[0].get("source", "")
        in_cell = script_block("".join(source) if isinstance(source, list) else str(source), where)
    if declared is not None and in_cell is not None:
        raise InvalidAnalysisError(
            f"{where} declares its dependencies twice (metadata {NOTEBOOK_KEY!r} and a first cell "
            "'# /// script' block): keep one."
        )
    if declared is not None:
        return _table(declared, f"the notebook metadata {NOTEBOOK_KEY!r} of {where}")
    return in_cell


def read_requirements(source: Path, *, project_dir: Path | None = None) -> Requirements:
    """Everything the analysis at ``source`` needs: its own declaration plus the project's defaults.

    Parameters
    ----------
    source
        A ``.py`` script or an ``.ipynb`` notebook.
    project_dir
        The project's ``{root}/{project}/analysis`` folder, whose ``dependencies.toml`` adds defaults.
    """
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidAnalysisError(f"The analysis {source} cannot be read: {exc}.") from None
    own = _notebook(text, str(source)) if source.suffix == ".ipynb" else script_block(text, str(source))
    found = own or Requirements()
    if project_dir is not None:
        defaults = project_dir / PROJECT_DEFAULTS_FILE
        if defaults.is_file():
            try:
                data = tomllib.loads(defaults.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise InvalidAnalysisError(
                    f"The project defaults {defaults} cannot be read: {exc}."
                ) from None
            found = found.merged(_table(data, str(defaults)))
    return found

"""The environment of a kernel whose job uses the broker: the runner's, minus every secret.

Removed: ``ANALYSIS_SECRET_KEY``, ``ANALYSIS_BACKEND_TOKEN``, and every variable that a
``password_env`` of any project's datasources file (or the datasources file the runner was
told to use) names. The kernel needs none of them: the broker holds the credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from analysis.config import Settings
from analysis.errors import DatasourceError
from analysis.sources import load_config

__all__ = ["SECRET_VARIABLES", "kernel_environ"]

#: Variables that always hold secrets.
SECRET_VARIABLES = frozenset({"ANALYSIS_SECRET_KEY", "ANALYSIS_BACKEND_TOKEN"})


def _password_variables(path: Path) -> set[str]:
    try:
        config = load_config(path)
    except DatasourceError:
        return set()
    found: set[str] = set()
    for entry in config.values():
        for table in (entry, entry.get("options")):
            if isinstance(table, Mapping) and isinstance(table.get("password_env"), str):
                found.add(table["password_env"])
    return found


def kernel_environ(environ: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """``environ`` without the secrets listed in the module docstring."""
    files = set(settings.root.glob("*/analysis/datasources.toml"))
    if settings.datasources_file is not None:
        files.add(settings.datasources_file)
    drop = set(SECRET_VARIABLES)
    for path in files:
        drop |= _password_variables(path)
    return {k: v for k, v in environ.items() if k not in drop}

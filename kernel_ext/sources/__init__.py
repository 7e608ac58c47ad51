"""Datasources: a project's configured databases, by kind, opened lazily per ``Context``.

A project declares its datasources in a TOML file (``{root}/{project}/analysis/datasources.toml``
unless ``ANALYSIS_DATASOURCES_FILE`` names another), one table per datasource::

    [shop]
    kind = "sqlite"
    path = "shop.db"

``KINDS`` maps each ``kind`` to the class implementing it (imported only when used), so a
new kind is one module and one line here.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.errors import DatasourceError, DatasourceNotFoundError
from analysis.sources.base import Datasource, Params

__all__ = ["KINDS", "Datasource", "Datasources", "Params", "load_config"]

#: kind -> "module:Class" of its implementation.
KINDS: dict[str, str] = {
    "sqlite": "analysis.sources.sqlite:SQLiteDatasource",
}

_PATH_KEYS = ("path",)


def load_config(path: Path) -> dict[str, dict[str, Any]]:
    """Read a datasources file; a missing file is an empty configuration.

    Relative ``path`` values are resolved against the file's folder.
    """
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DatasourceError(f"The datasources file {str(path)!r} cannot be read: {exc}.") from exc
    config: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise DatasourceError(f"Datasource {name!r} in {str(path)!r} must be a table ([{name}]).")
        entry = dict(table)
        for key in _PATH_KEYS:
            if isinstance(entry.get(key), str):
                entry[key] = str((path.parent / entry[key]).resolve())
        config[name] = entry
    return config


class Datasources:
    """The datasources of one job: configuration read once, connections opened on first use.

    Parameters
    ----------
    config_path
        The project's datasources file (it may not exist).
    """

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._config: dict[str, dict[str, Any]] | None = None
        self._open: dict[str, Datasource] = {}

    @property
    def config(self) -> Mapping[str, Mapping[str, Any]]:
        """The parsed configuration, read on first access."""
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def names(self) -> list[str]:
        """Configured datasource names, sorted."""
        return sorted(self.config)

    def get(self, name: str) -> Datasource:
        """The datasource called ``name``, created on first use."""
        if name in self._open:
            return self._open[name]
        entry = self.config.get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise DatasourceNotFoundError(
                f"Datasource {name!r} is not configured (configured: {known}; file {str(self.config_path)!r})."
            )
        kind = entry.get("kind")
        target = KINDS.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise DatasourceError(
                f"Datasource {name!r} has unknown kind {kind!r} (known kinds: {', '.join(sorted(KINDS))})."
            )
        module_name, _, class_name = target.partition(":")
        cls: type[Datasource] = getattr(importlib.import_module(module_name), class_name)
        source = cls(name, entry)
        self._open[name] = source
        return source

    def interrupt(self) -> None:
        """Cancel whatever statement any open datasource is running."""
        for source in list(self._open.values()):
            source.interrupt()

    def close(self) -> None:
        """Close every open datasource."""
        sources, self._open = list(self._open.values()), {}
        for source in sources:
            source.close()

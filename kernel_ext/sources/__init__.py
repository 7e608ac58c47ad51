"""Datasources: a project's configured databases, by kind, opened lazily per ``Context``.

A project declares its datasources in a TOML file (``{root}/{project}/analysis/datasources.toml``
unless ``ANALYSIS_DATASOURCES_FILE`` names another), one table per datasource::

    [shop]
    kind = "sqlite"
    path = "shop.db"

    [warehouse]
    kind = "postgres"                 # or "mysql" (MySQL and MariaDB)
    host = "db.internal"
    port = 5432
    database = "dw"
    user = "analyst"
    password_encrypted = "gAAAA..."   # `analysis datasource add`; or password_env = "DW_PASSWORD"
    read_only = true                  # default
    connect_timeout_s = 10            # default
    statement_timeout_s = 60          # optional; the job's deadline always applies

Passwords are resolved (:mod:`analysis.sources.secrets`) only when a datasource is first used.
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
from analysis.extras import MissingExtraError, ensure
from analysis.sources.base import Datasource, Params

__all__ = ["KINDS", "Datasource", "Datasources", "Params", "load_config"]

#: kind -> "module:Class" of its implementation.
KINDS: dict[str, str] = {
    "sqlite": "analysis.sources.sqlite:SQLiteDatasource",
    "postgres": "analysis.sources.postgres:PostgresDatasource",
    "mysql": "analysis.sources.mysql:MySQLDatasource",
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
    secret_key
        ``ANALYSIS_SECRET_KEY`` (``Settings.secret_key``), which decrypts ``password_encrypted``;
        ``None`` reads it from the environment.
    environ
        Where ``password_env`` variables are looked up (default: the environment, read by
        :class:`~analysis.config.Settings`).
    """

    def __init__(
        self,
        config_path: Path,
        *,
        secret_key: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self._secret_key = secret_key
        self._environ = environ
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
                f"Datasource {name!r} is not configured "
                f"(configured: {known}; file {str(self.config_path)!r})."
            )
        kind = entry.get("kind")
        target = KINDS.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise DatasourceError(
                f"Datasource {name!r} has unknown kind {kind!r} (known kinds: {', '.join(sorted(KINDS))})."
            )
        module_name, _, class_name = target.partition(":")
        cls: type[Datasource] = getattr(importlib.import_module(module_name), class_name)
        try:
            ensure(cls.requires, f"Datasource {name!r} ({kind})")
        except MissingExtraError as exc:
            raise DatasourceError(str(exc)) from None
        source = cls(name, self._with_password(name, entry))
        self._open[name] = source
        return source

    def password(self, name: str) -> Any:
        """The password of datasource ``name`` (a ``Secret``), resolved without opening it; ``None`` if none.

        Raises what resolving raises (a wrong key, an unset variable).
        """
        entry = self.config.get(name)
        return None if entry is None else self._with_password(name, entry).get("password")

    def _with_password(self, name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """``entry`` with ``password_env``/``password_encrypted`` resolved into a ``Secret`` ``password``."""
        if not {"password", "password_env", "password_encrypted"} & set(entry):
            return dict(entry)
        from analysis.config import Settings
        from analysis.sources.secrets import resolve_password

        settings = Settings.from_env()  # read only when a password has to be resolved
        secret_key = self._secret_key if self._secret_key is not None else settings.secret_key
        environ = self._environ if self._environ is not None else settings.environ
        secret = resolve_password(name, entry, secret_key=secret_key, environ=environ)
        resolved = {k: v for k, v in entry.items() if k not in ("password_env", "password_encrypted")}
        if secret is not None:
            resolved["password"] = secret
        return resolved

    def interrupt(self) -> None:
        """Cancel whatever statement any open datasource is running."""
        for source in list(self._open.values()):
            source.interrupt()

    def close(self) -> None:
        """Close every open datasource."""
        sources, self._open = list(self._open.values()), {}
        for source in sources:
            source.close()

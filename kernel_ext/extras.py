"""Optional libraries and the pip extras that install them.

A feature whose library is not installed fails with one sentence naming the extra to install
(``pip install 'analysis-kernel[charts]'``), never with a deep ``ModuleNotFoundError``. Every
import of an optional library goes through :func:`require`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from types import ModuleType

from analysis.errors import AnalysisError

__all__ = ["EXTRAS", "MissingExtraError", "ensure", "require"]

#: Top-level module -> the extra of ``analysis-kernel`` that installs it.
EXTRAS: dict[str, str] = {
    "pandas": "pandas",
    "polars": "polars",
    "psycopg": "postgres",
    "adbc_driver_manager": "postgres",
    "adbc_driver_postgresql": "postgres",
    "mysql": "mysql",
    "connectorx": "mysql",
    "arrow_odbc": "mysql",
    "vl_convert": "charts",
    "uv": "deps",
    "starlette": "server",
    "uvicorn": "server",
    "sqlalchemy": "server",
    "alembic": "server",
    "croniter": "server",
    "prometheus_client": "server",
    "procrastinate": "server",
}


class MissingExtraError(AnalysisError, ImportError):
    """An optional library is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs {module.split('.', maxsplit=1)[0]}, which is not installed: "
            f"pip install 'analysis-kernel[{extra}]'"
        )
        self.name = module
        self.extra = extra


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming its extra.

    Parameters
    ----------
    module
        The module to import, e.g. ``"pandas"`` or ``"mysql.connector"``.
    feature
        What needs it, as the user knows it, e.g. ``"QueryResult.df()"``.
    """
    top = module.split(".", maxsplit=1)[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the library is there but one of its own dependencies is broken
        raise MissingExtraError(module, EXTRAS.get(top, top), feature) from None


def ensure(modules: Iterable[str], feature: str) -> None:
    """Raise :class:`MissingExtraError` for the first of ``modules`` that is not installed.

    Nothing is imported (only the top-level packages are looked up), so a feature can check its
    libraries up front and import them later, when and where it needs them.

    Parameters
    ----------
    modules
        Modules the feature imports, e.g. ``("psycopg", "adbc_driver_postgresql")``.
    feature
        What needs them, as the user knows it.
    """
    for module in modules:
        top = module.split(".", maxsplit=1)[0]
        if importlib.util.find_spec(top) is None:
            raise MissingExtraError(module, EXTRAS.get(top, top), feature)

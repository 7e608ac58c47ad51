"""Optional libraries and the pip extras that install them.

A feature whose library is not installed fails with one sentence naming the extra to install
(``pip install 'analysis-kernel[charts]'``), never with a deep ``ModuleNotFoundError``. Every
import of an optional library goes through :func:`require`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from analysis.errors import AnalysisError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

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
    "sqlalchemy": "server",
    "alembic": "server",
    "croniter": "server",
    "prometheus_client": "server",
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

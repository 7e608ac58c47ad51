"""``analysis``: SQL on DuckDB, datasources and files for notebook analyses, run the same headless.

``%load_ext analysis`` puts ``ctx`` in the notebook; :mod:`analysis.runner` runs saved analyses
in fresh kernels. Importing this package is cheap: DuckDB, pyarrow and IPython load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from analysis.errors import AnalysisError

if TYPE_CHECKING:
    from analysis.context import Context
    from analysis.duck import QueryResult

__version__ = "0.1.0"
__all__ = ["AnalysisError", "Context", "QueryResult", "load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name: str) -> Any:
    if name == "Context":
        from analysis.context import Context

        return Context
    if name == "QueryResult":
        from analysis.duck import QueryResult

        return QueryResult
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext analysis``: register the magics and put ``ctx`` in the namespace."""
    from analysis.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext analysis``: close what loading opened and remove ``ctx``."""
    from analysis.magics import unload

    unload(ipython)

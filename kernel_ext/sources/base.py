"""What every datasource kind implements, and the parameter types they accept."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

if TYPE_CHECKING:
    import pyarrow as pa

    from analysis.duck import Duck

__all__ = ["Datasource", "Params"]

#: Query parameters: a sequence for positional placeholders, a mapping for named ones.
Params: TypeAlias = Sequence[Any] | Mapping[str, Any] | None


class Datasource(ABC):
    """One configured datasource of a project, connected lazily, owned by one ``Context``.

    Parameters
    ----------
    name
        The datasource's name in the project's configuration.
    config
        Its table from the configuration file (``kind`` included), with relative paths
        already resolved against the configuration file's folder.
    """

    #: The ``kind`` value in the configuration that selects this class.
    kind: ClassVar[str]

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.config = dict(config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @abstractmethod
    def query(self, sql: str, params: Params, *, timeout_s: float | None) -> pa.Table:
        """Run ``sql`` with bound ``params`` and return the whole result as an Arrow table.

        ``timeout_s`` is the most the statement may run (what is left of the job's
        deadline), or ``None``. Driver errors are raised as ``DatasourceError``.
        """

    def query_into(
        self, duck: Duck, table: str, sql: str, params: Params, *, timeout_s: float | None
    ) -> int:
        """Stream the result of ``sql`` into DuckDB table ``table``; return the row count.

        Kinds with a bulk path (COPY, a columnar reader) override this; the default loads
        the Arrow result of :meth:`query`.
        """
        return duck.load_data(table, self.query(sql, params, timeout_s=timeout_s))

    def interrupt(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Cancel the running statement, if any; called from another thread."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection, if one was opened. Safe to call twice."""

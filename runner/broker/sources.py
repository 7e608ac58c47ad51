"""A job's datasources, leased from the connection pool for one broker request."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.runner.broker.pool import ConnectionPool, PoolKey
from analysis.sources import Datasource, Datasources

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["PooledSources"]


class PooledSources(Datasources):
    """The project's datasources, as :class:`~analysis.sources.Datasources`, but leased from a pool.

    ``get`` takes an idle datasource of the same project and configuration from ``pool`` (or
    opens one); ``close`` gives it back, unless :meth:`discard` said its state is unknown.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        project_id: str,
        config_path: Path,
        *,
        config: Mapping[str, Mapping[str, Any]],
        secret_key: str | None,
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(config_path, secret_key=secret_key, environ=environ)
        self._config = {name: dict(entry) for name, entry in config.items()}
        self._pool = pool
        self._project_id = project_id
        self._keys: dict[str, PoolKey] = {}
        self._reusable = True

    def get(self, name: str) -> Datasource:
        if name in self._open:
            return self._open[name]
        entry = self.config.get(name)
        if entry is None:
            return super().get(name)  # raises DatasourceNotFoundError
        key = PoolKey.of(self._project_id, str(self.config_path), name, entry)
        source = self._pool.lease(key, lambda: super(PooledSources, self).get(name))
        self._open[name], self._keys[name] = source, key
        return source

    def discard(self) -> None:
        """Close the leased datasources at :meth:`close` instead of giving them back."""
        self._reusable = False

    def close(self) -> None:
        leased, self._open = dict(self._open), {}
        for name, source in leased.items():
            self._pool.give_back(self._keys[name], source, reusable=self._reusable)

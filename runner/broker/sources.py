"""A job's datasources, leased from the connection pool for one broker request."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.runner.broker.pool import ConnectionPool, PoolKey
from analysis.sources import KINDS, Datasource, Datasources, load_config

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["PooledSources", "warm_up"]

_warmed: set[str] = set()
_warm_lock = threading.Lock()


def warm_up(config_path: Path) -> None:
    """Import the libraries of the datasource kinds in ``config_path``, once per process.

    The broker runs this beside the kernel's start, so that a job's first query (often the
    runner's first) does not wait for its driver's imports. Problems are left for the query
    to report: an unreadable file or a missing library changes nothing here.
    """
    try:
        kinds = {str(entry.get("kind")) for entry in load_config(config_path).values()}
    except Exception:  # the query says what is wrong with the file
        return
    for kind in sorted(kinds & set(KINDS)):
        with _warm_lock:
            if kind in _warmed:
                continue
            _warmed.add(kind)
        module_name, _, class_name = KINDS[kind].partition(":")
        try:
            cls: type[Datasource] = getattr(importlib.import_module(module_name), class_name)
            cls.warm_up()
        except Exception:  # e.g. pyarrow missing: the query reports it
            pass


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
        job: str,
    ) -> None:
        super().__init__(config_path, secret_key=secret_key, environ=environ)
        self._job = job
        self._config = {name: dict(entry) for name, entry in config.items()}
        self._pool = pool
        self._project_id = project_id
        self._keys: dict[str, PoolKey] = {}
        self._reused: set[str] = set()
        self._fresh: set[str] = set()  # names whose next lease must open a new connection
        self._reusable = True

    def get(self, name: str) -> Datasource:
        if name in self._open:
            return self._open[name]
        entry = self.config.get(name)
        if entry is None:
            return super().get(name)  # raises DatasourceNotFoundError
        key = PoolKey.of(self._project_id, str(self.config_path), name, entry)
        created: list[Datasource] = []

        def create() -> Datasource:
            created.append(super(PooledSources, self).get(name))
            return created[0]

        source = create() if name in self._fresh else self._pool.lease(key, create, job=self._job)
        self._open[name], self._keys[name] = source, key
        if not created:
            self._reused.add(name)
        return source

    def maybe_stale(self, name: str, error: Exception) -> bool:
        """Whether ``error`` may come from a pooled connection that died while idle, and a retry is safe.

        True for a connection failure of a datasource reused from the pool that is read-only
        (so running its statement again changes nothing).
        """
        source = self._open.get(name)
        return (
            name in self._reused
            and source is not None
            and getattr(source, "read_only", False) is True
            and "connection" in str(error).lower()
        )

    def replace(self, name: str) -> None:
        """Close the leased datasource ``name``; the next :meth:`get` opens a new one."""
        source = self._open.pop(name, None)
        self._reused.discard(name)
        if source is not None:
            try:
                source.close()
            except Exception:  # it is broken already
                pass
        self._fresh.add(name)

    def discard(self) -> None:
        """Close the leased datasources at :meth:`close` instead of giving them back."""
        self._reusable = False

    def close(self) -> None:
        leased, self._open = dict(self._open), {}
        for name, source in leased.items():
            self._pool.give_back(self._keys[name], source, reusable=self._reusable, job=self._job)

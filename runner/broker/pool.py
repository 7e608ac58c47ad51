"""Open datasources kept between jobs, per project and datasource, so a job's first query is warm.

A job's broker leases a datasource for one request and gives it back afterwards. The pool
keeps up to ``max_idle_per_source`` idle ones per key for ``idle_timeout_s``; a datasource that
ended a request in an unknown state (the kernel went away mid-stream, the request was
cancelled) is closed instead of kept. The key holds the project, the configuration file and
a fingerprint of the datasource's table, so an edited configuration gets new connections and
no project ever gets another project's.
"""

from __future__ import annotations

import atexit
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

from analysis.sources import Datasource

__all__ = ["ConnectionPool", "PoolKey", "shared_pool"]


class PoolKey(NamedTuple):
    """What makes two leases interchangeable."""

    project_id: str
    config_path: str
    name: str
    fingerprint: str

    @classmethod
    def of(cls, project_id: str, config_path: str, name: str, entry: Mapping[str, Any]) -> PoolKey:
        """The key of datasource ``name`` configured as ``entry``."""
        digest = hashlib.sha256(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
        return cls(project_id, config_path, name, digest)


class ConnectionPool:
    """Idle datasources with their open connections (see the module docstring).

    Parameters
    ----------
    max_idle_per_source
        Idle datasources kept per key; more are closed when given back.
    idle_timeout_s
        An idle datasource older than this is closed at the next lease or give-back.
    """

    def __init__(self, *, max_idle_per_source: int = 4, idle_timeout_s: float = 300.0) -> None:
        self.max_idle_per_source = max_idle_per_source
        self.idle_timeout_s = idle_timeout_s
        self._idle: dict[PoolKey, list[tuple[float, Datasource]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def lease(self, key: PoolKey, create: Callable[[], Datasource]) -> Datasource:
        """An idle datasource for ``key``, else a new one from ``create``."""
        self._expire()
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()[1]
        return create()

    def give_back(self, key: PoolKey, source: Datasource, *, reusable: bool) -> None:
        """Keep ``source`` for the next lease of ``key`` if ``reusable`` and there is room; else close it."""
        keep = False
        with self._lock:
            if reusable and not self._closed:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self.max_idle_per_source:
                    idle.append((time.monotonic(), source))
                    keep = True
        if not keep:
            _close(source)
        self._expire()

    def idle_count(self) -> int:
        """How many idle datasources the pool holds."""
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def _expire(self) -> None:
        limit = time.monotonic() - self.idle_timeout_s
        stale: list[Datasource] = []
        with self._lock:
            for key, idle in list(self._idle.items()):
                stale += [s for t, s in idle if t < limit]
                idle[:] = [(t, s) for t, s in idle if t >= limit]
                if not idle:
                    del self._idle[key]
        for source in stale:
            _close(source)

    def close(self) -> None:
        """Close every idle datasource; later give-backs are closed at once. Safe to call twice."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for entries in idle.values():
            for _, source in entries:
                _close(source)


def _close(source: Datasource) -> None:
    try:
        source.close()
    except Exception:  # a connection that is already broken: nothing more to release
        pass


_SHARED: list[ConnectionPool] = []
_SHARED_LOCK = threading.Lock()


def shared_pool() -> ConnectionPool:
    """The runner process's pool, used by brokers not given one; closed when the process exits."""
    with _SHARED_LOCK:
        if not _SHARED:
            pool = ConnectionPool()
            atexit.register(pool.close)
            _SHARED.append(pool)
        return _SHARED[0]

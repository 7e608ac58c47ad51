"""Open datasources kept between jobs, per project and datasource, so a job's first query is warm.

A job's broker leases a datasource for one request and gives it back afterwards. The pool
keeps up to ``max_idle_per_source`` idle ones per key for ``idle_timeout_s``; a datasource that
ended a request in an unknown state (the kernel went away mid-stream, the request was
cancelled) is closed instead of kept. A datasource that passes to another job has its session
reset first (``Datasource.reset_session``): nothing a job's statements did to the session
(variables, ``search_path``, ``USE``, temporary tables, locks) reaches the next job, while the
requests of one job keep theirs. The key holds the project, the configuration file and
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
        #: per key: when each idle datasource was given back, by which job, and the datasource
        self._idle: dict[PoolKey, list[tuple[float, str, Datasource]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def lease(self, key: PoolKey, create: Callable[[], Datasource], *, job: str) -> Datasource:
        """An idle datasource for ``key`` (``job``'s own last one first, else another job's, its
        session reset), else a new one from ``create``."""
        self._expire()
        with self._lock:
            idle = self._idle.get(key)
            if not idle:
                source = None
            else:
                mine = [i for i, entry in enumerate(idle) if entry[1] == job]
                _, owner, source = idle.pop(mine[-1] if mine else -1)
        if source is None:
            return create()
        if owner != job:
            source.reset_session()
        return source

    def give_back(self, key: PoolKey, source: Datasource, *, reusable: bool, job: str) -> None:
        """Keep ``source`` (last used by ``job``) for the next lease of ``key`` if ``reusable`` and
        there is room; else close it."""
        keep = False
        with self._lock:
            if reusable and not self._closed:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self.max_idle_per_source:
                    idle.append((time.monotonic(), job, source))
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
                stale += [entry[2] for entry in idle if entry[0] < limit]
                idle[:] = [entry for entry in idle if entry[0] >= limit]
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
            for _, _, source in entries:
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

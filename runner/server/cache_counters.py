"""The result cache's counters of jobs run by workers, kept in the store for the server's ``/metrics``.

README: "Result cache". A job's cache counts in the process whose data broker served it
(:func:`analysis.result_cache.project_cache_stats`): an ``analysis worker`` on another machine,
or the local worker of a server on PostgreSQL. After each job a worker adds what its process's
counters grew by since it last did to the store's ``cache_counters`` table, one row per project
(:func:`publish`: an upsert that adds, so any number of workers can share a row). The server's
``/metrics`` reports those rows plus what its own process counted and has not added there (the
jobs it ran itself over SQLite): :func:`totals`. A process's counts are moved under one lock,
so no scrape sees them twice or not at all, and the totals only grow.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analysis.result_cache import project_cache_stats

__all__ = ["COUNTERS", "publish", "totals"]

log = logging.getLogger("analysis.server")

#: The counters of :class:`analysis.result_cache.CacheStats`, as the table's columns.
COUNTERS = (
    "hits", "misses", "stored", "dropped", "evicted", "bytes_read", "bytes_written", "write_failures",
)  # fmt: skip
_TABLE = sa.Table(
    "cache_counters",
    sa.MetaData(),
    sa.Column("project_id", sa.String(64), primary_key=True),
    *(sa.Column(name, sa.BigInteger, nullable=False) for name in COUNTERS),
    sa.Column("updated_at", sa.Float, nullable=False),
)
#: What this process has added to the store so far, per project.
_published: dict[str, dict[str, int]] = {}
_lock = threading.Lock()


def _upsert(engine: Engine, project: str, counts: dict[str, int]) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    dialects: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
    insert = dialects.get(engine.dialect.name)
    if insert is None:
        raise ValueError(f"the store's database {engine.dialect.name!r} is neither PostgreSQL nor SQLite")
    row = {"project_id": project, **counts, "updated_at": time.time()}
    statement = insert(_TABLE).values(row)
    grown = {name: _TABLE.c[name] + statement.excluded[name] for name in COUNTERS}
    return statement.on_conflict_do_update(
        index_elements=["project_id"], set_={**grown, "updated_at": statement.excluded.updated_at}
    )


def publish(engine: Engine) -> None:
    """Add to the store what this process's cache counters grew by since the last call.

    A failure (the database is away) is logged; what was not added is added next time.
    """
    with _lock:
        now = project_cache_stats()
        grown = {
            project: {name: counts[name] - _published.get(project, {}).get(name, 0) for name in COUNTERS}
            for project, counts in now.items()
        }
        grown = {project: counts for project, counts in grown.items() if any(counts.values())}
        if not grown:
            return
        try:
            with engine.begin() as connection:
                for project, counts in grown.items():
                    connection.execute(_upsert(engine, project, counts))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("the result cache's counters could not be stored: %s", type(exc).__name__)
            return
        for project in grown:
            _published[project] = {name: now[project][name] for name in COUNTERS}


def totals(engine: Engine | None) -> dict[str, dict[str, int]]:
    """Per project: the store's counters (the workers') plus this process's counts not yet in the store."""
    with _lock:
        out = {
            project: {name: counts[name] - _published.get(project, {}).get(name, 0) for name in COUNTERS}
            for project, counts in project_cache_stats().items()
        }
        if engine is None:
            return out
        with engine.connect() as connection:
            rows = connection.execute(sa.select(_TABLE)).mappings().all()
    for row in rows:
        counts = out.setdefault(str(row["project_id"]), dict.fromkeys(COUNTERS, 0))
        for name in COUNTERS:
            counts[name] += int(row[name])
    return dict(sorted(out.items()))

"""Prometheus metrics of one server (its own registry), and the result cache's counters per project.

The cache counters are those of the jobs this process ran (their data brokers run here) plus
those workers added to the store (``analysis.runner.server.cache_counters``; README: "Result cache").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from analysis.runner.server.store import Store

__all__ = ["ServerMetrics"]

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_BYTES = (1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)


_CACHE_COUNTERS = (
    ("hits", "analysis_cache_hits", "Result cache hits (queries and files served from the cache)."),
    ("misses", "analysis_cache_misses", "Result cache misses (the query ran, or the file was fetched)."),
    ("stored", "analysis_cache_stored", "Results stored in the result cache."),
    ("dropped", "analysis_cache_dropped", "Damaged result cache entries dropped."),
    ("evicted", "analysis_cache_evicted", "Result cache entries evicted for the size budget."),
    ("bytes_read", "analysis_cache_read_bytes", "Bytes served from the result cache."),
    ("bytes_written", "analysis_cache_written_bytes", "Bytes written to the result cache."),
    (
        "write_failures", "analysis_cache_write_failures",
        "Results the result cache could not store (a full or read-only disk); their queries still returned.",
    ),
)  # fmt: skip


class CacheCollector(Collector):
    """The result cache's counters, one series per project: this process's and the workers' (``store``)."""

    def __init__(self, store: Store | None) -> None:
        self._engine = None if store is None else store.engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        import sqlalchemy as sa

        from analysis.runner.server.cache_counters import totals

        try:
            by_project = totals(self._engine)
        except sa.exc.SQLAlchemyError as exc:  # no series rather than counts that go down
            logging.getLogger("analysis.server").warning("cache counters unavailable: %s", type(exc).__name__)
            return
        for field, name, documentation in _CACHE_COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=["project"])
            for project, counts in by_project.items():
                family.add_metric([project], counts[field])
            yield family


class ServerMetrics:
    """Counters, histograms and gauges the server updates as jobs move (``store``: workers' cache counts)."""

    def __init__(self, store: Store | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "analysis_jobs",
            "Jobs that reached a final state.",
            ["project", "status", "error_type"],
            registry=r,
        )
        self.duration = Histogram(
            "analysis_job_duration_seconds", "Run time of finished jobs.", ["project"], buckets=_SECONDS,
            registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "analysis_job_queue_wait_seconds", "Time from submit to start.", ["project"], buckets=_SECONDS,
            registry=r,
        )  # fmt: skip
        self.result_bytes = Histogram(
            "analysis_job_result_bytes", "Size of the envelopes of finished jobs.", ["project"],
            buckets=_BYTES, registry=r,
        )  # fmt: skip
        self.kernel_start = Histogram(
            "analysis_kernel_start_seconds", "Time from job start to a kernel that answers.", ["project"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("analysis_queue_depth", "Jobs waiting to start.", registry=r)
        self.running = Gauge("analysis_running_jobs", "Jobs running now.", registry=r)
        self.workers = Gauge(
            "analysis_workers", "Workers registered in the queue (serve --workers).", registry=r
        )
        r.register(CacheCollector(store))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

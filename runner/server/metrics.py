"""Prometheus metrics of one server (its own registry: no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServerMetrics"]

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_BYTES = (1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)


class ServerMetrics:
    """Counters, histograms and gauges the server updates as jobs move."""

    def __init__(self) -> None:
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

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

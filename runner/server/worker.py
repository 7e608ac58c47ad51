"""``analysis worker``: runs the jobs ``analysis serve`` queued in PostgreSQL, on any machine.

A worker shares nothing with the server but the database. Each of its slots takes a turn from
the queue and claims with it the job to run next, fairly across projects and under the
per-project cap (:mod:`.fairqueue`); it reads the analysis version from the store, writes it
under its own root, runs the job in a local kernel (``run_job_async``, a warm one of the
worker's pool when one is idle, the broker included), appends the lines the job prints to the
store as it prints them (:mod:`.joblogs`), and writes the envelope and any Parquet artifact back
to the store. Each change of a job is a compare-and-set on (status, attempt), so a worker the
server declared lost can no longer finish a job that another worker now runs. SIGTERM stops
fetching jobs and lets running ones finish within the grace period; those still running then
go back to the queue. If the worker dies, its guard (:mod:`.orphans`) kills its kernels. The
worker's own ``/metrics`` reports its slots and heartbeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from analysis.errors import AnalysisError
from analysis.runner.envelope import JobResult
from analysis.runner.jobs import JobSpec, run_job_async
from analysis.runner.logbuffer import DEFAULT_MAX_LOG_BYTES
from analysis.runner.server.cache_counters import publish as publish_cache_counters
from analysis.runner.server.config import default_pool_size
from analysis.runner.server.fairqueue import FairQueue, defer_turn_async
from analysis.runner.server.joblogs import LiveLog
from analysis.runner.server.manager import failure, final_envelope, materialize
from analysis.runner.server.orphans import start_guard
from analysis.runner.server.queue import DEFAULT_QUEUE, TASK, ensure_schema, notify_final, open_app
from analysis.runner.server.store import Store, open_store

if TYPE_CHECKING:
    from analysis.runner.pool import KernelPool

__all__ = ["WorkerConfig", "WorkerMetrics", "open_pool", "procrastinate_worker", "run_worker"]

log = logging.getLogger("analysis.worker")


@dataclass(frozen=True)
class WorkerConfig:
    """Options of one ``analysis worker``.

    Parameters
    ----------
    db_url
        The server's PostgreSQL store.
    root
        The worker's own working directory (versions, job directories, datasources files).
    concurrency
        Jobs run at once (slots).
    queues
        Queues to take jobs from (default: every queue).
    name
        The worker's name in job rows and logs (default: host name and process id).
    grace_s
        On SIGTERM, how long running jobs may take to finish.
    heartbeat_s
        How often the worker tells the database it is alive.
    metrics_host, metrics_port
        Where ``/metrics`` listens (no listener when the port is ``None``).
    job_options
        Defaults of every job (``timeout_s``...; see ``JobSpec``).
    pool_size
        Warm kernels kept ready per project (README, "Warm kernels"); ``0``: cold kernels.
        Default: one per slot, up to 4.
    poll_s
        How often a worker with a free slot looks for a turn without being told of one (turns
        wake it at once through LISTEN/NOTIFY; this only backs up a lost connection).
    """

    db_url: str
    root: Path
    concurrency: int = 2
    queues: tuple[str, ...] = ()
    name: str | None = None
    grace_s: float = 30.0
    heartbeat_s: float = 2.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    job_options: dict[str, Any] = field(default_factory=dict)
    pool_size: int | None = None
    poll_s: float = 5.0

    @property
    def warm_kernels(self) -> int:
        """Warm kernels per project: ``pool_size``, else one per slot (up to 4)."""
        return default_pool_size(self.concurrency) if self.pool_size is None else self.pool_size


class WorkerMetrics:
    """The worker's gauges and counters (its own registry)."""

    def __init__(self, slots: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("analysis_worker_jobs_running", "Jobs running on this worker.", registry=r)
        self.slots_free = Gauge("analysis_worker_slots_free", "Free job slots.", registry=r)
        self.slots_free.set(slots)
        self.jobs = Counter("analysis_worker_jobs", "Jobs this worker finished.", ["status"], registry=r)
        self.heartbeats = Counter(
            "analysis_worker_heartbeats", "Heartbeats this worker recorded in the database.", registry=r
        )
        self.last_heartbeat = Gauge(
            "analysis_worker_last_heartbeat_timestamp_seconds", "Time of the last heartbeat.", registry=r
        )


class _Runner:
    """The task body: one turn, which claims the job to run fairly (:mod:`.fairqueue`) and runs it."""

    def __init__(
        self, app: Any, store: Store, config: WorkerConfig, name: str, metrics: WorkerMetrics,
        *, pool: KernelPool | None, label: str = "worker", requeue_on_shutdown: bool = True,
    ) -> None:  # fmt: skip
        self.app = app
        self.pool = pool
        self.store = store
        self.queue = FairQueue(store)
        self.config = config
        self.name = name
        self.metrics = metrics
        self.label = label
        self.requeue_on_shutdown = requeue_on_shutdown
        self.root = config.root.resolve()
        self.running = 0

    async def __call__(self, context: Any, cap: int = 0) -> None:
        job = await asyncio.to_thread(self.queue.claim, cap, self.name, context.job.id)
        if job is None:  # no project may start a job now (capped, or nothing queued)
            return
        self._slots(+1)
        kernel_start: list[float] = []
        live = LiveLog(
            self.store, job["id"], self.config.job_options.get("max_log_bytes", DEFAULT_MAX_LOG_BYTES)
        )
        try:
            result = await self._execute(job, live, kernel_start)
        except Exception as exc:  # a fault of the worker, not of the job: the job still ends
            log.exception("job %s could not run", job["id"])
            fault = AnalysisError(f"The {self.label} could not run the job: {type(exc).__name__}: {exc}")
            result = failure(job, fault)
        finally:
            self._slots(-1)
            await live.close()
        if (
            self.requeue_on_shutdown and result.error_type == "cancelled" and context.should_abort()
            and _shutting_down(context)
        ):  # fmt: skip
            await self._requeue(job, cap)
            return
        # store writes off the event loop, which serves the other slots and the heartbeat
        await asyncio.to_thread(self._finish, job, result, kernel_start[0] if kernel_start else None)
        # for the server's /metrics (README: "Result cache")
        await asyncio.to_thread(publish_cache_counters, self.store.engine)
        await notify_final(self.app, job["id"])
        if cap and await asyncio.to_thread(self.queue.has_queued, job["project_id"]):
            await defer_turn_async(self.app, cap)  # the project may start one more now

    def _slots(self, delta: int) -> None:
        self.running += delta
        self.metrics.running.set(self.running)
        self.metrics.slots_free.set(self.config.concurrency - self.running)

    async def _execute(self, job: dict[str, Any], live: LiveLog, kernel_start: list[float]) -> JobResult:
        project = job["project_id"]
        self._write_datasources(project)
        source = materialize(self.store, self.root, project, job["analysis_id"], job["analysis_version"])
        options = dict(self.config.job_options)
        if job["timeout_s"] is not None:
            options["timeout_s"] = job["timeout_s"]
        artifacts = self.root / project / "analysis" / "artifacts"
        spec = JobSpec(
            source_path=source, parameters=json.loads(job["parameters"]), project_id=project,
            root=self.root, trigger=job["trigger"], job_id=job["id"], artifact_dir=artifacts,
            on_log=live.write, on_kernel_ready=kernel_start.append, **options,
        )  # fmt: skip
        cancelled: list[JobResult] = []
        try:
            result = await run_job_async(spec, on_cancelled=cancelled.append, pool=self.pool)
        except asyncio.CancelledError:  # aborted: the job ends with its cancelled envelope
            if not cancelled:
                raise
            result = cancelled[0]
        artifact = artifacts / f"{job['id']}.parquet"
        if artifact.is_file():
            try:
                self.store.put_artifact(job["id"], artifact.read_bytes())
            finally:
                artifact.unlink()
        return result

    def _write_datasources(self, project_id: str) -> None:
        """The project's datasources file as the server shared it (its passwords stay encrypted)."""
        path = self.root / project_id / "analysis" / "datasources.toml"
        text = self.store.get_datasources(project_id)
        if text is None:
            path.unlink(missing_ok=True)
            return
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".datasources.{uuid.uuid4().hex}.tmp")
        partial.touch(mode=0o600)
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)

    def _finish(self, job: dict[str, Any], result: JobResult, kernel_start_s: float | None) -> None:
        status = "succeeded" if result.success else (
            "cancelled" if result.error_type == "cancelled" else "failed"
        )  # fmt: skip
        if self.store.update_job(
            job["id"], only_if_status=("running",), only_if_attempt=job["attempt"], status=status,
            finished_at=time.time(), envelope=final_envelope(job, result), error_type=result.error_type,
            kernel_start_s=kernel_start_s,
        ):  # fmt: skip
            self.metrics.jobs.labels(status).inc()

    async def _requeue(self, job: dict[str, Any], cap: int) -> None:
        """A job the grace period cut short: queue it again (the attempt does not count)."""
        if self.store.update_job(
            job["id"], only_if_status=("running",), only_if_attempt=job["attempt"], status="queued",
            started_at=None, worker=None, attempt=job["attempt"] - 1, queue_job_id=None,
        ):  # fmt: skip
            await defer_turn_async(self.app, cap)
            self.metrics.jobs.labels("requeued").inc()


def _shutting_down(context: Any) -> bool:
    from procrastinate.job_context import AbortReason

    return bool(context.abort_reason() == AbortReason.SHUTDOWN)


async def _count_heartbeats(app: Any, worker: Any, metrics: WorkerMetrics, every_s: float) -> None:
    last = None
    while True:
        await asyncio.sleep(every_s)
        if worker.worker_id is None:
            continue
        async with app.connector.pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT extract(epoch FROM last_heartbeat) FROM procrastinate_workers WHERE id = %s",
                (worker.worker_id,),
            )
            row = await cursor.fetchone()
        if row is not None and row[0] != last:
            last = row[0]
            metrics.heartbeats.inc()
            metrics.last_heartbeat.set(float(last))


def procrastinate_worker(
    app: Any, store: Store, config: WorkerConfig, name: str, metrics: WorkerMetrics,
    *, pool: KernelPool | None, install_signal_handlers: bool = True, server: bool = False,
) -> Any:  # fmt: skip
    """Register the job task on ``app`` and return the procrastinate worker that runs it.

    ``server``: the worker is a server's own (``--local-workers``): its faults read "The server
    could not run the job", and the jobs still running past the grace period on shutdown are
    cancelled, as a server with a SQLite store cancels them, instead of queued again.
    """
    from analysis.runner.server.turn_worker import TurnWorker

    runner = _Runner(
        app, store, config, name, metrics, pool=pool, label="server" if server else "worker",
        requeue_on_shutdown=not server,
    )  # fmt: skip
    app.task(name=TASK, queue=DEFAULT_QUEUE, pass_context=True)(runner.__call__)
    return TurnWorker(
        app, queues=list(config.queues) or None, name=name, concurrency=config.concurrency,
        fetch_job_polling_interval=config.poll_s,
        shutdown_graceful_timeout=config.grace_s, update_heartbeat_interval=config.heartbeat_s,
        stalled_worker_timeout=max(30.0, 5 * config.heartbeat_s),
        delete_jobs="always",  # the store keeps the history; the queue keeps only live jobs
        install_signal_handlers=install_signal_handlers,
    )  # fmt: skip


def open_pool(config: WorkerConfig) -> KernelPool | None:
    """The worker's kernel pool (``None`` with ``pool_size=0``); close it once its jobs ended."""
    if not config.warm_kernels:
        return None
    from analysis.runner.pool import KernelPool

    return KernelPool(config.warm_kernels)


async def run_worker(config: WorkerConfig) -> None:
    """Run the worker until SIGTERM or SIGINT (running jobs finish within ``grace_s``)."""
    config.root.mkdir(parents=True, exist_ok=True)
    start_guard(config.root)  # kill -9 of this process must not leave its kernels running
    name = config.name or f"{socket.gethostname()}:{os.getpid()}"
    store = open_store(config.db_url)
    metrics = WorkerMetrics(config.concurrency)
    if config.metrics_port is not None:
        start_http_server(config.metrics_port, config.metrics_host, registry=metrics.registry)
    app = open_app(config.db_url)
    pool = open_pool(config)
    try:
        async with app.open_async():
            await ensure_schema(app)
            worker = procrastinate_worker(app, store, config, name, metrics, pool=pool)
            counting = asyncio.create_task(_count_heartbeats(app, worker, metrics, config.heartbeat_s))
            try:
                log.info("worker %s: %d slots", name, config.concurrency)
                await worker.run()
            finally:
                counting.cancel()
    finally:
        try:
            if pool is not None:  # after the worker's jobs ended: their pooled kernels die with it
                await asyncio.to_thread(pool.close)
        finally:
            store.close()

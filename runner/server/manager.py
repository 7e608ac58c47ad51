"""``JobManager``: the durable queue, fair dispatch, running, cancelling and recovering jobs.

Every accepted job is a row of the store before the client hears of it, and reaches a final state:
on start-up the jobs a killed server left ``running`` are failed with ``worker_lost`` (or queued
again when their analysis declares ``retries``), and their orphaned kernels are killed.
Jobs take warm kernels from the server's :class:`~analysis.runner.pool.KernelPool` (``pool_size``
per project), which is closed, its kernels killed, once the running jobs ended on shutdown.
Dispatch is fair across projects: a free slot goes to the project with the fewest running jobs,
then to the one served least recently (round robin), then to the oldest queued job; never past
``max_jobs_per_project``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from analysis.errors import AnalysisError, JobCancelledError, WorkerLostError
from analysis.runner.envelope import JobResult
from analysis.runner.jobdirs import sweep_orphans
from analysis.runner.jobs import JobSpec, run_job_async
from analysis.runner.server.config import ServerConfig
from analysis.runner.server.errors import ApiError
from analysis.runner.server.metrics import ServerMetrics
from analysis.runner.server.store import Store

if TYPE_CHECKING:
    from analysis.runner.pool import KernelPool

__all__ = ["FINAL", "JobManager", "failure", "final_envelope", "materialize"]

log = logging.getLogger("analysis.server")

FINAL = ("succeeded", "failed", "cancelled")


class JobManager:
    """Queues, runs and tracks the server's jobs.

    Parameters
    ----------
    store
        The store of jobs and versions.
    config
        Concurrency limits and job defaults.
    metrics
        Where job figures are counted.
    """

    def __init__(self, store: Store, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.root = config.root.resolve()
        self.accepting = False
        self._queued: dict[str, deque[str]] = {}
        self._queued_rows: dict[str, dict[str, Any]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._running_by_project: dict[str, int] = {}
        self._last_served: dict[str, int] = {}
        self._dispatched = 0
        self._listeners: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._partial_lines: dict[tuple[str, str], str] = {}
        self.pool: KernelPool | None = None

    # life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover what a previous process left behind, load the queue, and start dispatching."""
        for job in self.store.jobs_in(("running",)):
            self._recover(job)
        sweep_orphans(self.root)  # the other job directories of a killed server (its pool's, say)
        if self.config.warm_kernels:
            from analysis.runner.pool import KernelPool

            self.pool = KernelPool(self.config.warm_kernels)
        for job in self.store.jobs_in(("queued",)):
            self._enqueue(job)
        self.accepting = True
        self._pump()

    async def shutdown(self) -> None:
        """Stop accepting; let running jobs finish within the grace period, then cancel them."""
        self.accepting = False
        tasks = list(self._running.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.close_pool()

    async def close_pool(self) -> None:
        """Kill the pool's kernels and stop its thread (once no job runs: theirs would die too)."""
        pool, self.pool = self.pool, None
        if pool is not None:
            await asyncio.to_thread(pool.close)

    def _recover(self, job: dict[str, Any]) -> None:
        """A job left ``running`` by a killed server: kill its kernel, then retry or fail it."""
        job_dir = self.root / job["project_id"] / "analysis" / "temp" / job["id"]
        _kill_kernels_of(job_dir)
        shutil.rmtree(job_dir, ignore_errors=True)
        if job["attempt"] <= job["max_retries"]:
            self.store.update_job(job["id"], status="queued", started_at=None)
            return
        lost = WorkerLostError(
            f"The server stopped while the job was running (attempt {job['attempt']}); "
            "its kernel was killed and the job was not retried."
        )
        self._finish_row(job, failure(job, lost), "failed")

    # submitting ---------------------------------------------------------------------------------
    def submit(self, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store and queue a job; ``(job, created)``, the earlier job when the idempotency key repeats."""
        if not self.accepting:
            raise ApiError(503, "shutting_down", "The server is shutting down; submit again later.")
        key = row.get("idempotency_key")
        if key is not None:
            earlier = self.store.job_by_key(row["project_id"], key)
            if earlier is not None:
                return self._replay(earlier, row), False
        if self.queue_depth() >= self.config.max_queued_jobs:
            raise ApiError(
                429, "queue_full",
                f"{self.queue_depth()} jobs are queued (max_queued_jobs); submit again later.",
                {"Retry-After": "5"},
            )  # fmt: skip
        job_id = uuid.uuid4().hex
        stored = self.store.insert_job(
            {**row, "id": job_id, "status": "queued", "attempt": 0, "created_at": time.time()}
        )
        if stored is None:  # a concurrent submit with the same key won the race
            earlier = self.store.job_by_key(row["project_id"], key or "")
            assert earlier is not None
            return self._replay(earlier, row), False
        self._enqueue(stored)
        self._pump()
        return stored, True

    @staticmethod
    def _replay(earlier: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        if earlier["request_hash"] != row.get("request_hash"):
            raise ApiError(
                409, "idempotency_conflict",
                "This Idempotency-Key was used for a different request; use a new key.",
            )  # fmt: skip
        return earlier

    def queue_depth(self) -> int:
        """Jobs waiting to start."""
        return sum(len(q) for q in self._queued.values())

    def running_count(self) -> int:
        """Jobs running now."""
        return len(self._running)

    def refresh_metrics(self) -> None:
        """Bring the figures of ``/metrics`` up to date (this process counts them as jobs move)."""

    def _enqueue(self, job: dict[str, Any]) -> None:
        self._queued.setdefault(job["project_id"], deque()).append(job["id"])
        self._queued_rows[job["id"]] = job
        self._done.setdefault(job["id"], asyncio.Event())
        self.metrics.queue_depth.set(self.queue_depth())

    # dispatching --------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Start queued jobs while slots are free, fairly across projects."""
        while self.accepting and len(self._running) < self.config.max_concurrent_jobs:
            project = self._next_project()
            if project is None:
                break
            job_id = self._queued[project].popleft()
            row = self._queued_rows.pop(job_id)
            self._running_by_project[project] = self._running_by_project.get(project, 0) + 1
            self._dispatched += 1
            self._last_served[project] = self._dispatched
            task = asyncio.get_running_loop().create_task(self._run(row))
            task.add_done_callback(partial(self._released, job_id, project))
            self._running[job_id] = task
        self.metrics.queue_depth.set(self.queue_depth())
        self.metrics.running.set(len(self._running))

    def _next_project(self) -> str | None:
        best: tuple[int, int, int, str] | None = None
        for project, waiting in self._queued.items():
            running = self._running_by_project.get(project, 0)
            if not waiting or running >= self.config.project_cap:
                continue
            candidate = (
                running,
                self._last_served.get(project, 0),
                self._queued_rows[waiting[0]]["seq"],
                project,
            )
            if best is None or candidate < best:
                best = candidate
        return None if best is None else best[3]

    async def _run(self, job: dict[str, Any]) -> None:
        job_id, project = job["id"], job["project_id"]
        started = time.time()
        if not self.store.update_job(
            job_id, only_if_status=("queued",), status="running", started_at=started,
            attempt=job["attempt"] + 1,
        ):  # fmt: skip
            return
        job = {**job, "status": "running", "started_at": started, "attempt": job["attempt"] + 1}
        self.metrics.queue_wait.labels(project).observe(max(0.0, started - job["created_at"]))
        self._publish(job_id, {"type": "status", "status": "running"})
        try:
            result = await self._execute(job)
        except Exception as exc:  # a fault of the server, not of the job: the job still ends
            log.exception("job %s could not run", job_id)
            fault = AnalysisError(f"The server could not run the job: {type(exc).__name__}: {exc}")
            result = failure(job, fault)
        status = "succeeded" if result.success else (
            "cancelled" if result.error_type == "cancelled" else "failed"
        )  # fmt: skip
        self._finish_row(job, result, status)

    def _released(self, job_id: str, project: str, _task: asyncio.Task[None]) -> None:
        """A job task ended (even one cancelled before it started): free its slot, start the next."""
        self._running.pop(job_id, None)
        self._running_by_project[project] -= 1
        self._pump()

    async def _execute(self, job: dict[str, Any]) -> JobResult:
        source = self.materialize(job["project_id"], job["analysis_id"], job["analysis_version"])
        options = dict(self.config.job_options)
        if job["timeout_s"] is not None:
            options["timeout_s"] = job["timeout_s"]
        spec = JobSpec(
            source_path=source, parameters=json.loads(job["parameters"]), project_id=job["project_id"],
            root=self.root, trigger=job["trigger"], job_id=job["id"],
            artifact_dir=self.artifact_path(job["project_id"], job["id"]).parent,
            on_log=partial(self._on_log, job["id"]),
            on_kernel_ready=self.metrics.kernel_start.labels(job["project_id"]).observe, **options,
        )  # fmt: skip
        try:
            return await run_job_async(spec, pool=self.pool)
        except asyncio.CancelledError:  # a runner that lets the cancellation through
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return failure(
                job, JobCancelledError("The job was cancelled before it finished; its kernel was stopped.")
            )

    def artifact_path(self, project_id: str, job_id: str) -> Path:
        """Where the Parquet artifact of a job's large table result is kept."""
        return self.root / project_id / "analysis" / "artifacts" / f"{job_id}.parquet"

    def materialize(self, project_id: str, analysis_id: str, version: str) -> Path:
        """The immutable file of a stored version, written from the store when missing."""
        return materialize(self.store, self.root, project_id, analysis_id, version)

    def _finish_row(self, job: dict[str, Any], result: JobResult, status: str) -> None:
        envelope = final_envelope(job, result)
        finished = time.time()
        if not self.store.update_job(
            job["id"], only_if_status=("queued", "running"), status=status, finished_at=finished,
            envelope=envelope, error_type=result.error_type,
        ):  # fmt: skip
            return
        project = job["project_id"]
        self.metrics.jobs.labels(project, status, result.error_type or "").inc()
        if job.get("started_at") is not None:
            self.metrics.duration.labels(project).observe(finished - job["started_at"])
        self.metrics.result_bytes.labels(project).observe(len(envelope))
        for stream in ("stdout", "stderr"):
            rest = self._partial_lines.pop((job["id"], stream), "")
            if rest:
                self._publish(job["id"], {"type": "log", "line": rest})
        self._publish(job["id"], {"type": "status", "status": status})
        self._publish(job["id"], {"type": "end", "status": status})
        done = self._done.pop(job["id"], None)
        if done is not None:
            done.set()

    # cancelling and waiting ---------------------------------------------------------------------
    async def cancel(self, job: dict[str, Any]) -> None:
        """Cancel a queued or running job (409 when it already finished)."""
        if job["status"] in FINAL:
            raise ApiError(409, "job_finished", f"Job {job['id']} already finished ({job['status']}).")
        task = self._running.get(job["id"])
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            job = self.store.get_job(job["project_id"], job["id"]) or job
            if job["status"] in FINAL:
                return
        queue = self._queued.get(job["project_id"])
        if queue is not None and job["id"] in queue:
            queue.remove(job["id"])
            self._queued_rows.pop(job["id"], None)
        self._finish_row(
            job, failure(job, JobCancelledError("The job was cancelled before it started.")), "cancelled"
        )
        self.metrics.queue_depth.set(self.queue_depth())

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Wait until the job is final or ``timeout_s`` passed (returns at once for a final job)."""
        event = self._done.get(job_id)
        if event is None:
            return
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass

    def _on_log(self, job_id: str, stream: str, text: str) -> None:
        """Publish each complete line a running job prints, as it prints it."""
        pending = self._partial_lines.pop((job_id, stream), "") + text
        *lines, rest = pending.split("\n")
        if rest:
            self._partial_lines[job_id, stream] = rest
        for line in lines:
            self._publish(job_id, {"type": "log", "line": line})

    def _publish(self, job_id: str, event: dict[str, Any]) -> None:
        for queue in self._listeners.get(job_id, []):
            queue.put_nowait(event)

    async def events(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Status changes and log lines of a job, from its current status until it is final."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listeners.setdefault(job["id"], []).append(queue)
        try:
            current = self.store.get_job(job["project_id"], job["id"]) or job
            yield {"type": "status", "status": current["status"]}
            if current["status"] in FINAL:
                for line in json.loads(current["envelope"] or "{}").get("logs", []):
                    yield {"type": "log", "line": line}
                yield {"type": "end", "status": current["status"]}
                return
            while True:
                event = await queue.get()
                yield event
                if event["type"] == "end":
                    return
        finally:
            self._listeners[job["id"]].remove(queue)
            if not self._listeners[job["id"]]:
                del self._listeners[job["id"]]


def materialize(store: Store, root: Path, project_id: str, analysis_id: str, version: str) -> Path:
    """The file of a stored version under ``root``, written from the store when missing."""
    row = store.get_version(project_id, analysis_id, version)
    if row is None:
        raise ApiError(404, "not_found", f"Analysis {analysis_id!r} has no version {version!r}.")
    folder = root / project_id / "analysis" / "versions" / analysis_id
    path = folder / f"{version}.{row['kind']}"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{version}.{uuid.uuid4().hex}.tmp"
        partial.write_text(row["source"], encoding="utf-8")
        os.replace(partial, path)
    return path


def final_envelope(job: dict[str, Any], result: JobResult) -> str:
    """The stored envelope of a finished job: the runner's, with its version and trigger."""
    text = result.to_json()
    extra = json.dumps({"analysis_version": job["analysis_version"], "trigger": job["trigger"]})
    return f"{text[:-1]}, {extra[1:]}"


def failure(job: dict[str, Any], error: AnalysisError) -> JobResult:
    """The envelope of a job that ended without running (cancelled, lost, refused)."""
    return JobResult(
        success=False, job_id=job["id"], logs=[], duration_ms=0, stack=None, trigger=job["trigger"],
        **error.to_dict(),
    )  # fmt: skip


def _kill_kernels_of(job_dir: Path) -> None:
    """Kill every process (and its group) started for ``job_dir`` (a kernel a dead server left)."""
    marker = str(job_dir) + os.sep
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in arg for arg in proc.info["cmdline"] or ()):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
        except psutil.Error:
            continue

"""``RemoteJobManager``: the server's side of ``analysis serve --workers``.

The server stores each job, then defers it through procrastinate; ``analysis worker`` processes
on any machine run it. The server runs nothing itself: it watches the store (waits, event
streams, the queue gauges), cancels through procrastinate's abort (LISTEN/NOTIFY reaches the
worker at once), and reaps the jobs of workers whose heartbeat stopped (:class:`LostWorkerReaper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from analysis.errors import JobCancelledError
from analysis.runner.envelope import JobResult
from analysis.runner.server.config import ServerConfig
from analysis.runner.server.errors import ApiError
from analysis.runner.server.manager import FINAL, JobManager, failure, final_envelope
from analysis.runner.server.metrics import ServerMetrics
from analysis.runner.server.queue import DEFAULT_QUEUE, TASK, LostWorkerReaper
from analysis.runner.server.store import Store

__all__ = ["RemoteJobManager"]

log = logging.getLogger("analysis.server")

_WATCH_S = 0.1  # how often waits and event streams look at the store
_QUEUE_SQL = (
    "SELECT (SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'),"
    " (SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'),"
    " (SELECT count(*) FROM procrastinate_workers)"
)


class RemoteJobManager(JobManager):
    """A job manager whose jobs run on ``analysis worker`` processes.

    Parameters
    ----------
    store, config, metrics
        As for :class:`JobManager`.
    app
        The open procrastinate app (async connector).
    sync_app
        The same app on a synchronous connector (submitting is synchronous).
    """

    def __init__(
        self, store: Store, config: ServerConfig, metrics: ServerMetrics, app: Any, sync_app: Any
    ) -> None:
        super().__init__(store, config, metrics)
        self.app = app
        self.sync_app = sync_app
        self.reaper = LostWorkerReaper(app, store, config.heartbeat_timeout_s)
        self._watching: asyncio.Task[None] | None = None
        self._seen: dict[str, str] = {}
        self._datasources: dict[str, str | None] = {}

    def start(self) -> None:
        """Start accepting, watching the store and reaping lost workers."""
        self.accepting = True
        self._watching = asyncio.get_running_loop().create_task(self._watch())

    async def shutdown(self) -> None:
        """Stop accepting; jobs keep running on their workers."""
        self.accepting = False
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching

    def queue_depth(self) -> int:
        """Jobs waiting for a worker (queued in the store: no worker claimed them yet)."""
        return self.store.count_jobs(("queued",))

    def _enqueue(self, job: dict[str, Any]) -> None:
        self._share_datasources(job["project_id"])
        queued = self.sync_app.configure_task(TASK, queue=DEFAULT_QUEUE).defer(job_id=job["id"])
        self.store.update_job(job["id"], queue_job_id=queued)

    def _share_datasources(self, project_id: str) -> None:
        """Put the project's datasources file (tokens and names, no plaintext) where workers read it."""
        path = self.root / project_id / "analysis" / "datasources.toml"
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        if self._datasources.get(project_id, "") != text:
            self.store.put_datasources(project_id, text)
            self._datasources[project_id] = text

    def _pump(self) -> None:
        """Workers take the jobs; nothing to start here."""

    def artifact_path(self, project_id: str, job_id: str) -> Path:
        """The artifact a worker stored, copied from the store on first download."""
        path = super().artifact_path(project_id, job_id)
        if not path.is_file():
            data = self.store.get_artifact(job_id)
            if data is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{time.monotonic_ns()}.tmp")
                partial.write_bytes(data)
                partial.replace(path)
        return path

    async def cancel(self, job: dict[str, Any]) -> None:
        """Cancel a queued job at once, or abort it on its worker (a 409 when already final)."""
        if job["status"] in FINAL:
            raise ApiError(409, "job_finished", f"Job {job['id']} already finished ({job['status']}).")
        job = self.store.get_job(job["project_id"], job["id"]) or job
        if job["queue_job_id"] is not None:
            await self.app.job_manager.cancel_job_by_id_async(job["queue_job_id"], abort=True)
        if job["status"] == "queued":
            result = failure(job, JobCancelledError("The job was cancelled before it started."))
            if self.store.update_job(
                job["id"], only_if_status=("queued",), status="cancelled", finished_at=time.time(),
                envelope=final_envelope(job, result), error_type="cancelled",
            ):  # fmt: skip
                return
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while time.monotonic() < deadline:  # the worker stops the kernel and writes the envelope
            current = self.store.get_job(job["project_id"], job["id"])
            if current is None or current["status"] in FINAL:
                return
            await asyncio.sleep(_WATCH_S)

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Wait until the job is final or ``timeout_s`` passed."""
        self._done.setdefault(job_id, asyncio.Event())
        await super().wait(job_id, timeout_s)

    async def events(self, job: dict[str, Any]) -> Any:
        """As for :class:`JobManager`, from what the store shows."""
        self._done.setdefault(job["id"], asyncio.Event())
        async for event in super().events(job):
            yield event

    async def _watch(self) -> None:
        reap_every = max(1.0, self.config.heartbeat_timeout_s / 4)
        next_reap = 0.0
        while True:
            try:
                self._look()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + reap_every
                    await self.reaper.reap()
                    await self._count_queue()
            except Exception:  # a store hiccup must not end the watch
                log.exception("watching the queue failed")
            await asyncio.sleep(_WATCH_S)

    def _look(self) -> None:
        """Publish the changes of the jobs someone waits for or streams."""
        statuses = self.store.job_statuses(list(self._done)) if self._done else {}
        for job_id in list(self._done):
            status = statuses.get(job_id)
            if status is None:
                self._done.pop(job_id, None)
                continue
            if self._seen.get(job_id) == status:
                continue
            self._seen[job_id] = status
            self._publish(job_id, {"type": "status", "status": status})
            if status in FINAL:
                job = self.store.job_by_id(job_id) or {}
                for line in json.loads(job.get("envelope") or "{}").get("logs", []):
                    self._publish(job_id, {"type": "log", "line": line})
                self._publish(job_id, {"type": "end", "status": status})
                self._seen.pop(job_id, None)
                done = self._done.pop(job_id, None)
                if done is not None:
                    done.set()

    async def _count_queue(self) -> None:
        async with self.app.connector.pool.connection() as connection:
            cursor = await connection.execute(_QUEUE_SQL)
            row = await cursor.fetchone()
        if row is not None:
            self.metrics.queue_depth.set(row[0])
            self.metrics.running.set(row[1])
            self.metrics.workers.set(row[2])

    def _finish_row(self, job: dict[str, Any], result: JobResult, status: str) -> None:
        raise AssertionError("workers finish the jobs of a RemoteJobManager")

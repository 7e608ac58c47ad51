"""``RemoteJobManager``: the server's side of jobs in a PostgreSQL store (run by workers).

The server stores each job ``queued`` and defers a turn through procrastinate; a worker slot
that takes the turn claims the job to run, fairly across projects and under the per-project cap
(:mod:`.fairqueue`). The server runs nothing itself (its local worker is a worker): it watches
the store (waits, event streams with the log lines workers append as jobs print them, the
queue gauges and the job figures of ``/metrics``), cancels through procrastinate's abort
(LISTEN/NOTIFY reaches the worker at once), reaps the jobs of workers whose heartbeat stopped
(:class:`LostWorkerReaper`), and adds the turns a queued job that may start lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from analysis.errors import JobCancelledError
from analysis.runner.envelope import JobResult
from analysis.runner.server.config import ServerConfig
from analysis.runner.server.errors import ApiError
from analysis.runner.server.fairqueue import FairQueue, defer_turn_async
from analysis.runner.server.joblogs import delete_lines_of_jobs_ended_before, lines_after
from analysis.runner.server.manager import FINAL, JobManager, failure, final_envelope
from analysis.runner.server.metrics import ServerMetrics
from analysis.runner.server.queue import TASK, LostWorkerReaper, listen_final
from analysis.runner.server.store import Store

__all__ = ["RemoteJobManager"]

log = logging.getLogger("analysis.server")

_WATCH_S = 0.1  # how often waits and event streams look at the store (at once when a job ends)
_KEEP_LINES_S = 60.0  # live log lines of an ended job are kept this long (late readers)
_SLACK_S = 30.0  # finished jobs are counted once if workers' clocks differ by less than this
_QUEUE_SQL = (
    "SELECT (SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND task_name = %s),"
    " (SELECT count(*) FROM procrastinate_workers)"
)


class RemoteJobManager(JobManager):
    """A job manager whose jobs run on workers (the server's local one, ``analysis worker``\\ s).

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
        self.cap = config.max_jobs_per_project or 0  # cluster-wide; no cap unless asked
        self.fair = FairQueue(store)
        self.reaper = LostWorkerReaper(app, store, config.heartbeat_timeout_s)
        self._watching: asyncio.Task[None] | None = None
        self._listening: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._seen: dict[str, str] = {}
        self._log_cursor: dict[str, int] = {}
        self._datasources: dict[str, str | None] = {}
        self._counted: dict[str, float] = {}
        self._counted_since = time.time()

    def start(self) -> None:
        """Start accepting, watching the store and reaping lost workers."""
        self.accepting = True
        loop = asyncio.get_running_loop()
        self._watching = loop.create_task(self._watch())
        self._listening = loop.create_task(listen_final(self.config.db_url or "", self._wake))

    async def shutdown(self) -> None:
        """Stop accepting; jobs keep running on their workers."""
        self.accepting = False
        for task in (self._watching, self._listening):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def queue_depth(self) -> int:
        """Jobs waiting for a worker (queued in the store: no worker claimed them yet)."""
        return self.store.count_jobs(("queued",))

    def _enqueue(self, job: dict[str, Any]) -> None:
        self._share_datasources(job["project_id"])
        self._defer_turn()

    def _defer_turn(self) -> None:
        from analysis.runner.server.fairqueue import defer_turn

        defer_turn(self.sync_app, self.cap)

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
        deadline = time.monotonic() + self.config.shutdown_grace_s
        aborted = False
        while True:
            current = self.store.get_job(job["project_id"], job["id"])
            if current is None or current["status"] in FINAL:
                return
            if current["status"] == "queued":
                result = failure(current, JobCancelledError("The job was cancelled before it started."))
                if self.store.update_job(
                    job["id"], only_if_status=("queued",), status="cancelled", finished_at=time.time(),
                    envelope=final_envelope(current, result), error_type="cancelled",
                ):  # fmt: skip
                    return
                continue  # a worker claimed it meanwhile: abort it there
            if not aborted and current["queue_job_id"] is not None:
                # the worker stops the kernel and writes the envelope
                await self.app.job_manager.cancel_job_by_id_async(current["queue_job_id"], abort=True)
                aborted = True
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(_WATCH_S)

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Wait until the job is final or ``timeout_s`` passed."""
        self._done.setdefault(job_id, asyncio.Event())
        await super().wait(job_id, timeout_s)

    async def events(self, job: dict[str, Any]) -> Any:
        """As for :class:`JobManager`, from what the store shows; log lines from the start of the job."""
        self._done.setdefault(job["id"], asyncio.Event())
        self._log_cursor.setdefault(job["id"], 0)
        async for event in super().events(job):
            yield event

    def refresh_metrics(self) -> None:
        """Count the jobs that ended since the last look (on any worker) and the queue, from the store."""
        j = self.store.jobs.c
        query = sa.select(
            j.id, j.project_id, j.status, j.error_type, j.created_at, j.started_at, j.finished_at,
            sa.func.length(j.envelope).label("envelope_chars"), j.kernel_start_s,
        ).where(j.finished_at >= self._counted_since - _SLACK_S)  # fmt: skip
        with self.store.engine.connect() as db:
            rows = list(db.execute(query))
        m = self.metrics
        for row in rows:
            if row.id in self._counted or row.status not in FINAL:
                continue
            self._counted[row.id] = row.finished_at
            m.jobs.labels(row.project_id, row.status, row.error_type or "").inc()
            m.result_bytes.labels(row.project_id).observe(row.envelope_chars or 0)
            if row.started_at is not None:
                m.duration.labels(row.project_id).observe(max(0.0, row.finished_at - row.started_at))
                m.queue_wait.labels(row.project_id).observe(max(0.0, row.started_at - row.created_at))
            if row.kernel_start_s is not None:
                m.kernel_start.labels(row.project_id).observe(row.kernel_start_s)
        if rows:
            self._counted_since = max(self._counted_since, *(row.finished_at for row in rows))
        horizon = self._counted_since - _SLACK_S
        self._counted = {k: v for k, v in self._counted.items() if v >= horizon}
        m.queue_depth.set(self.store.count_jobs(("queued",)))
        m.running.set(self.store.count_jobs(("running",)))

    async def _watch(self) -> None:
        every = max(1.0, self.config.heartbeat_timeout_s / 4)
        next_pass = next_cleanup = 0.0
        while True:
            try:
                self._look()
                if time.monotonic() >= next_pass:
                    next_pass = time.monotonic() + every
                    await self.reaper.reap()
                    await self._add_missing_turns()
                    self.refresh_metrics()
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + _KEEP_LINES_S
                    delete_lines_of_jobs_ended_before(self.store, time.time() - _KEEP_LINES_S)
            except Exception:  # a store hiccup must not end the watch
                log.exception("watching the queue failed")
            with contextlib.suppress(TimeoutError):  # a worker's notice of a finished job comes first
                await asyncio.wait_for(self._wake.wait(), _WATCH_S)
            self._wake.clear()

    def _look(self) -> None:
        """Publish the log lines and status changes of the jobs someone waits for or streams."""
        statuses = self.store.job_statuses(list(self._done)) if self._done else {}
        for job_id in [j for j in self._log_cursor if j not in self._listeners]:
            del self._log_cursor[job_id]
        # after the statuses: the lines of a job are stored before its final status
        for line_id, job_id, line in lines_after(self.store, self._log_cursor):
            self._log_cursor[job_id] = line_id
            self._publish(job_id, {"type": "log", "line": line})
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
                self._publish(job_id, {"type": "end", "status": status})
                self._seen.pop(job_id, None)
                done = self._done.pop(job_id, None)
                if done is not None:
                    done.set()

    async def _add_missing_turns(self) -> None:
        """Defer the turns that queued jobs which may start lack (a server killed mid-submit, say)."""
        async with self.app.connector.pool.connection() as connection:
            cursor = await connection.execute(_QUEUE_SQL, (TASK,))
            row = await cursor.fetchone()
        if row is None:
            return
        todo, workers = row
        self.metrics.workers.set(workers)
        for _ in range(self.fair.turns_missing(self.cap, int(todo))):
            await defer_turn_async(self.app, self.cap)

    def _finish_row(self, job: dict[str, Any], result: JobResult, status: str) -> None:
        raise AssertionError("workers finish the jobs of a RemoteJobManager")

"""The queue between ``analysis serve`` and ``analysis worker``: procrastinate on the store's PostgreSQL.

The server and every worker open the same procrastinate app on the store's database. A job is a
store row (its history, envelope, version); a procrastinate job of task :data:`TASK` is a turn
that claims the job to run when a worker slot takes it (:mod:`.fairqueue`), and then carries it
(``jobs.queue_job_id``: aborts, heartbeats); procrastinate brings ``FOR UPDATE SKIP LOCKED`` fetching,
LISTEN/NOTIFY wake-ups and aborts, and worker heartbeats. :class:`LostWorkerReaper` turns the jobs
of a worker whose heartbeat stopped into a retry or a ``worker_lost`` failure.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import sqlalchemy as sa

from analysis.errors import WorkerLostError
from analysis.runner.server.manager import failure, final_envelope
from analysis.runner.server.store import Store

__all__ = [
    "DEFAULT_QUEUE", "FINAL_CHANNEL", "TASK", "LostWorkerReaper", "conninfo", "ensure_schema", "listen_final",
    "notify_final", "open_app",
]  # fmt: skip

log = logging.getLogger("analysis.server")

#: The procrastinate task that runs one analysis job.
TASK = "analysis.run_job"
#: The queue jobs go to unless ``--queues`` says otherwise.
DEFAULT_QUEUE = "analysis"
#: The channel on which a worker names a job it just finished (servers wake their waits at once).
FINAL_CHANNEL = "analysis_job_final"


def conninfo(url: str) -> str:
    """The libpq connection string of a SQLAlchemy or libpq PostgreSQL URL."""
    parsed = sa.make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        raise ValueError(f"Workers need a PostgreSQL store; {parsed.drivername!r} is not one.")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def open_app(url: str) -> Any:
    """A procrastinate app on the database at ``url`` (open it with ``async with app.open_async()``)."""
    from analysis.extras import require

    procrastinate = require("procrastinate", "analysis worker")
    connector = procrastinate.PsycopgConnector(conninfo=conninfo(url))
    return procrastinate.App(connector=connector)


async def ensure_schema(app: Any) -> None:
    """Create procrastinate's tables once, whichever process of many gets there first."""
    connector = app.connector
    lock = "SELECT pg_advisory_xact_lock(hashtext('analysis.procrastinate_schema'))"
    async with connector.pool.connection() as connection, connection.transaction():
        await connection.execute(lock)
        cursor = await connection.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        row = await cursor.fetchone()
        if row is not None and row[0]:
            return
        await connection.execute(app.schema_manager.get_schema())


async def notify_final(app: Any, job_id: str) -> None:
    """Tell the servers (LISTEN on :data:`FINAL_CHANNEL`) that ``job_id`` is final."""
    try:
        async with app.connector.pool.connection() as connection:
            await connection.execute("SELECT pg_notify(%s, %s)", (FINAL_CHANNEL, job_id))
    except Exception:  # the servers' polling still sees the job end, a little later
        log.warning("could not notify the end of job %s", job_id, exc_info=True)


async def listen_final(url: str, wake: asyncio.Event) -> None:
    """Set ``wake`` at each job a worker finished, until cancelled (reconnecting after a failure)."""
    import psycopg

    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True) as connection:
                await connection.execute(f"LISTEN {FINAL_CHANNEL}")
                async for _ in connection.notifies():
                    wake.set()
        except psycopg.Error:
            log.warning("listening for finished jobs failed; retrying in 1 s", exc_info=True)
            await asyncio.sleep(1)


class LostWorkerReaper:
    """Retries or fails the jobs of workers whose heartbeat stopped.

    Parameters
    ----------
    app
        The open procrastinate app.
    store
        The store of the jobs.
    heartbeat_timeout_s
        A worker silent this long is lost (its heartbeat runs every ``heartbeat_timeout_s / 5``).
    on_final
        Called with each job the reaper failed (to publish its end).
    """

    def __init__(self, app: Any, store: Store, heartbeat_timeout_s: float, on_final: Any = None) -> None:
        self.app = app
        self.store = store
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.on_final = on_final

    async def reap(self) -> int:
        """One pass; how many jobs were retried or failed."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(
            task_name=TASK, seconds_since_heartbeat=self.heartbeat_timeout_s
        )
        moved = 0
        for queued in stalled:
            job = self.store.running_job_of_turn(queued.id)
            if job is None:  # a turn that had claimed nothing
                await manager.finish_job_by_id_async(queued.id, _status("failed"), delete_job=False)
                continue
            if job["attempt"] <= job["max_retries"]:
                if self.store.update_job(
                    job["id"], only_if_status=("running",), only_if_attempt=job["attempt"],
                    status="queued", started_at=None, worker=None, queue_job_id=None,
                ):  # fmt: skip
                    await manager.retry_job_by_id_async(queued.id, retry_at=_now())  # the job's turn
                    log.warning("job %s: worker %s lost; retrying", job["id"], job["worker"])
                    moved += 1
                continue
            lost = WorkerLostError(
                f"The worker running the job ({job['worker']}) stopped sending heartbeats "
                f"(attempt {job['attempt']}); the job was not retried."
            )
            result = failure(job, lost)
            if self.store.update_job(
                job["id"], only_if_status=("running",), only_if_attempt=job["attempt"], status="failed",
                finished_at=_now().timestamp(), envelope=final_envelope(job, result),
                error_type=result.error_type,
            ):  # fmt: skip
                moved += 1
                if self.on_final is not None:
                    self.on_final(job, result)
            await manager.finish_job_by_id_async(queued.id, _status("failed"), delete_job=False)
        return moved


def _status(name: str) -> Any:
    from procrastinate.jobs import Status

    return Status(name)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)

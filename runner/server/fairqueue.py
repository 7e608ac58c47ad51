"""Fair, capped dispatch of the jobs of a PostgreSQL store, and the turns that carry it to the workers.

With a PostgreSQL store a submitted job stays ``queued`` in the store; what goes through
procrastinate is a *turn*: a procrastinate job of task :data:`~.queue.TASK` with no job in it,
only the per-project cap. A worker that fetches a turn (a slot of it was free) claims, in one
transaction under an advisory lock (so one claim at a time across every worker and server), the
job the in-process dispatcher would start: of the projects under the cap, the one with the
fewest running jobs, then the one served least recently (``project_turns``), then its oldest
queued job. A turn that finds nothing to claim ends. Turns are added when a job is submitted,
when a job of a capped project ends (its project may now run one more), and by the servers'
reconciliation (:meth:`FairQueue.turns_missing`), so a queued job that may run always has a turn.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from analysis.runner.server.store import Store

__all__ = ["FairQueue", "defer_turn", "defer_turn_async"]

_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtext('analysis.dispatch'))")
#: Each project's oldest queued job: a loose index scan of ``ix_jobs_queued_project`` (one probe per
#: project, however many jobs are queued).
_HEADS = sa.text(
    """
    WITH RECURSIVE projects(project_id) AS (
        (SELECT project_id FROM jobs WHERE status = 'queued' ORDER BY project_id LIMIT 1)
        UNION ALL
        SELECT (SELECT j.project_id FROM jobs j WHERE j.status = 'queued' AND j.project_id > p.project_id
                ORDER BY j.project_id LIMIT 1)
        FROM projects p WHERE p.project_id IS NOT NULL
    )
    SELECT p.project_id,
           (SELECT min(j.seq) FROM jobs j WHERE j.status = 'queued' AND j.project_id = p.project_id)
    FROM projects p WHERE p.project_id IS NOT NULL
    """
)


def defer_turn(app: Any, cap: int) -> int:
    """Queue one turn (synchronous connector); its procrastinate job id."""
    from analysis.runner.server.queue import DEFAULT_QUEUE, TASK

    queued: int = app.configure_task(TASK, queue=DEFAULT_QUEUE).defer(cap=cap)
    return queued


async def defer_turn_async(app: Any, cap: int) -> int:
    """Queue one turn (asynchronous connector); its procrastinate job id."""
    from analysis.runner.server.queue import DEFAULT_QUEUE, TASK

    queued: int = await app.configure_task(TASK, queue=DEFAULT_QUEUE).defer_async(cap=cap)
    return queued


class FairQueue:
    """Claims of queued jobs, fair across projects and capped per project, over the whole store.

    Parameters
    ----------
    store
        The store (PostgreSQL: the advisory lock serializes claims across processes).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def claim(self, cap: int, worker: str, queue_job_id: int | None) -> dict[str, Any] | None:
        """Move the next job to ``running`` for ``worker``; ``None`` when no project may start one.

        ``cap``: jobs of one project running at once (``0``: no cap).
        """
        jobs = self.store.jobs
        with self.store.engine.begin() as db:
            if db.dialect.name == "postgresql":
                db.execute(_LOCK)
            while True:
                pick = self._pick(db, cap)
                if pick is None:
                    return None
                project, seq = pick
                row = db.execute(
                    jobs.select().where(jobs.c.seq == seq, jobs.c.status == "queued")
                ).mappings().first()  # fmt: skip
                if row is None:  # cancelled since: pick again
                    continue
                values = {
                    "status": "running", "started_at": time.time(), "attempt": row["attempt"] + 1,
                    "worker": worker, "queue_job_id": queue_job_id,
                }  # fmt: skip
                claimed = db.execute(
                    jobs.update().where(jobs.c.seq == seq, jobs.c.status == "queued").values(**values)
                )  # fmt: skip
                if claimed.rowcount != 1:
                    continue
                self._served(db, project)
                return {**dict(row), **values}

    def turns_missing(self, cap: int, todo: int) -> int:
        """How many turns to add so each queued job that may start now has one (``todo``: turns queued)."""
        with self.store.engine.connect() as db:
            running, queued = self._counts(db)
        may_start = sum(
            n if not cap else max(0, min(n, cap - running.get(project, 0))) for project, n in queued.items()
        )
        return max(0, may_start - todo)

    def has_queued(self, project_id: str) -> bool:
        """Whether ``project_id`` has a job waiting."""
        j = self.store.jobs.c
        query = sa.select(j.seq).where(j.project_id == project_id, j.status == "queued").limit(1)
        with self.store.engine.connect() as db:
            return db.execute(query).first() is not None

    def _counts(self, db: Connection) -> tuple[dict[str, int], dict[str, int]]:
        """Running and queued jobs per project."""
        j = self.store.jobs.c
        query = (
            sa.select(j.project_id, j.status, sa.func.count())
            .where(j.status.in_(("queued", "running")))
            .group_by(j.project_id, j.status)
        )
        running: dict[str, int] = {}
        queued: dict[str, int] = {}
        for project, status, count in db.execute(query):
            (running if status == "running" else queued)[project] = int(count)
        return running, queued

    def _pick(self, db: Connection, cap: int) -> tuple[str, int] | None:
        """(project, seq of its oldest queued job) to start next, fairly."""
        j, t = self.store.jobs.c, self.store.project_turns.c
        heads = {str(project): int(seq) for project, seq in db.execute(_HEADS)}
        if not heads:
            return None
        running_query = (
            sa.select(j.project_id, sa.func.count())
            .where(j.status == "running", j.project_id.in_(list(heads)))
            .group_by(j.project_id)
        )
        running = {str(project): int(count) for project, count in db.execute(running_query)}
        served_query = sa.select(t.project_id, t.served).where(t.project_id.in_(list(heads)))
        served = {str(project): int(turn) for project, turn in db.execute(served_query)}
        best: tuple[int, int, int, str] | None = None
        for project, seq in heads.items():
            now_running = running.get(project, 0)
            if cap and now_running >= cap:
                continue
            candidate = (now_running, served.get(project, 0), seq, project)
            if best is None or candidate < best:
                best = candidate
        return None if best is None else (best[3], best[2])

    def _served(self, db: Connection, project: str) -> None:
        """Note that ``project`` was served last (a counter, so ties never depend on clocks)."""
        turns = self.store.project_turns
        following = db.execute(sa.select(sa.func.coalesce(sa.func.max(turns.c.served), 0) + 1)).scalar_one()
        updated = db.execute(turns.update().where(turns.c.project_id == project).values(served=following))
        if updated.rowcount == 0:
            db.execute(turns.insert().values(project_id=project, served=following))

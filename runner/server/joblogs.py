"""Live log lines of jobs that workers run: appended to ``job_logs`` as printed, read by the servers.

A worker's :class:`LiveLog` collects each complete line a job prints and appends them in small
batches (every ``every_s``) to the store; the last, unterminated line goes in when the job ends,
before its final status is written. A server streaming the job's events reads the lines after
the last one it saw: since the lines of a job are committed before its final status, a server
that sees the status final and then reads the lines has them all. The lines of a job are deleted
a while after it ended (the envelope keeps its logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import sqlalchemy as sa

from analysis.runner.server.store import Store

__all__ = ["LiveLog", "delete_lines_of_jobs_ended_before", "lines_after"]

log = logging.getLogger("analysis.worker")


class LiveLog:
    """The lines one running job prints, on their way to the store.

    Parameters
    ----------
    store
        The store.
    job_id
        The job.
    max_bytes
        Bytes of lines stored at most (then one line says the rest is in the envelope's logs).
    every_s
        How often the lines printed since the last batch are written.
    """

    def __init__(self, store: Store, job_id: str, max_bytes: int | None, every_s: float = 0.1) -> None:
        self.store = store
        self.job_id = job_id
        self.every_s = every_s
        self._budget = max_bytes
        self._pending: list[str] = []
        self._partial: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def write(self, stream: str, text: str) -> None:
        """Take what the job printed on ``stream`` (``on_log`` of a ``JobSpec``)."""
        pending = self._partial.pop(stream, "") + text
        *lines, rest = pending.split("\n")
        if rest:
            self._partial[stream] = rest
        for line in lines:
            self._add(line)

    def _add(self, line: str) -> None:
        if self._budget is None:
            self._pending.append(line)
            return
        if self._budget <= 0:
            return
        self._budget -= len(line.encode()) + 1
        if self._budget > 0:
            self._pending.append(line)
        else:
            self._pending.append("[more lines: see the logs of the job's envelope]")

    async def close(self) -> None:
        """Write the last lines (an unterminated one included); return once they are stored."""
        for rest in self._partial.values():
            self._add(rest)
        self._partial.clear()
        self._stop.set()
        await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)
            batch, self._pending = self._pending, []
            if batch:
                try:
                    await asyncio.to_thread(_append, self.store, self.job_id, batch)
                except Exception:  # the job goes on; its envelope keeps every line
                    log.warning("job %s: live log lines could not be stored", self.job_id, exc_info=True)
            if self._stop.is_set():
                return


def _append(store: Store, job_id: str, lines: list[str]) -> None:
    with store.engine.begin() as db:
        db.execute(store.job_logs.insert(), [{"job_id": job_id, "line": line} for line in lines])


def lines_after(store: Store, after: dict[str, int]) -> list[tuple[int, str, str]]:
    """``(id, job_id, line)`` of the lines of each job of ``after`` past the id given, in order."""
    if not after:
        return []
    c = store.job_logs.c
    query = (
        sa.select(c.id, c.job_id, c.line)
        .where(c.job_id.in_(list(after)), c.id > min(after.values()))
        .order_by(c.id)
    )
    with store.engine.connect() as db:
        return [(row.id, row.job_id, row.line) for row in db.execute(query) if row.id > after[row.job_id]]


def delete_lines_of_jobs_ended_before(store: Store, cutoff: float) -> None:
    """Drop the live lines of jobs that ended before ``cutoff`` (their envelopes keep the logs)."""
    j, c = store.jobs.c, store.job_logs.c
    ended = sa.exists().where(j.id == c.job_id, j.finished_at < cutoff)  # driven by the few lines kept
    with store.engine.begin() as db:
        db.execute(store.job_logs.delete().where(ended))

"""The procrastinate worker of ``analysis worker``: a slot that is free never sleeps through a turn.

procrastinate's worker wakes at each ``job_inserted`` notice, fetches jobs until a fetch finds
none, then clears its wake-up event and sleeps until the next notice or its polling interval. A
turn committed while that last, empty fetch was in flight (the fetch's snapshot predates the
turn) had its notice cleared with the others: the turn then waited for the polling interval (5 s)
or for some other job's notice, while the worker had a free slot, and a busy worker whose job
ended first could take it. :class:`TurnWorker` counts the notices and, when one came in during a
round of fetches, fetches once more at once. Importing this module imports procrastinate.
"""

from __future__ import annotations

from typing import Any

from procrastinate import worker

__all__ = ["TurnWorker"]


class TurnWorker(worker.Worker):
    """A procrastinate ``Worker`` that fetches again after a notice that came in while it fetched.

    Parameters
    ----------
    *args, **kwargs
        As for ``procrastinate.worker.Worker``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._notices = 0

    async def _handle_notification(self, *, channel: str, notification: Any) -> None:
        if notification["type"] == "job_inserted":
            self._notices += 1
        await super()._handle_notification(channel=channel, notification=notification)

    async def _fetch_and_process_jobs(self) -> None:
        seen = self._notices
        try:
            await super()._fetch_and_process_jobs()  # type: ignore[no-untyped-call]
        finally:
            # procrastinate cleared the event after its last fetch, even for a notice that fetch
            # could not see yet: one more round finds that job (at most one per notice)
            if self._notices != seen:
                self._new_job_event.set()

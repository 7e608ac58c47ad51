"""Cron schedules: each run is a job with ``trigger: "schedule"``.

A schedule has a cron expression evaluated in its time zone (croniter), parameters, an overlap
policy for when its previous job is still queued or running (``skip``: no new job; ``queue``:
queue it anyway; ``cancel_previous``: cancel the previous job, then run) and a missed-run policy
for runs that fell due while the server was down (``skip``: none; ``run_once``: one job now).
A run counts as missed when it is more than ``MISSED_AFTER_S`` late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from analysis.runner.server.errors import ApiError
from analysis.runner.server.manager import FINAL, JobManager
from analysis.runner.server.store import Store
from analysis.runner.server.versions import current_version

__all__ = ["MISSED_AFTER_S", "OVERLAP", "MISSED", "Scheduler", "next_run"]

OVERLAP = ("skip", "queue", "cancel_previous")
MISSED = ("skip", "run_once")
MISSED_AFTER_S = 60.0

log = logging.getLogger("analysis.server")


def next_run(cron: str, timezone: str, after: float) -> float:
    """The first time strictly after ``after`` (epoch seconds) that ``cron`` fires in ``timezone``."""
    start = datetime.fromtimestamp(after, ZoneInfo(timezone))
    return float(croniter(cron, start).get_next(float))


class Scheduler:
    """Starts the jobs of due schedules, every ``tick_s`` seconds."""

    def __init__(self, store: Store, manager: JobManager, tick_s: float) -> None:
        self.store = store
        self.manager = manager
        self.tick_s = tick_s

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            try:
                await self.tick(time.time())
            except Exception:  # a bad row must not stop every other schedule
                log.exception("schedule tick failed")
            await asyncio.sleep(self.tick_s)

    async def tick(self, now: float) -> None:
        """Start the runs due at ``now``."""
        for schedule in self.store.list_schedules():
            if schedule["paused"] or schedule["next_run_at"] > now or not self.manager.accepting:
                continue
            missed = now - schedule["next_run_at"] > MISSED_AFTER_S
            following = next_run(schedule["cron"], schedule["timezone"], now)
            claimed = self.store.update_schedule(
                schedule["id"], only_if_next_run_at=schedule["next_run_at"], next_run_at=following
            )
            if not claimed:  # another server fired this run
                continue
            if missed and schedule["missed"] == "skip":
                continue
            await self._start(schedule)

    async def _start(self, schedule: dict[str, Any]) -> None:
        project = schedule["project_id"]
        previous = self.store.get_job(project, schedule["last_job_id"] or "")
        if previous is not None and previous["status"] not in FINAL:
            if schedule["overlap"] == "skip":
                return
            if schedule["overlap"] == "cancel_previous":
                await self.manager.cancel(previous)
        try:
            version = current_version(self.store, self.manager.root, project, schedule["analysis_id"])
            job, _ = self.manager.submit(
                {
                    "project_id": project, "analysis_id": schedule["analysis_id"],
                    "analysis_version": version["version"], "parameters": schedule["parameters"],
                    "trigger": "schedule", "schedule_id": schedule["id"], "max_retries": version["retries"],
                    "idempotency_key": None, "request_hash": None, "timeout_s": None,
                }
            )  # fmt: skip
        except ApiError as exc:
            log.warning("schedule %s did not start a job: %s", schedule["id"], exc.message)
            return
        self.store.update_schedule(schedule["id"], last_job_id=job["id"])

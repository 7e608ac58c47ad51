"""Retention of large-result artifacts: a job's Parquet artifact is kept ``artifact_ttl_s`` after it ended.

The :class:`ArtifactSweeper` runs beside the scheduler. Every ``tick_s`` it deletes the artifacts
whose job finished more than ``artifact_ttl_s`` ago: the files under
``{root}/{project}/analysis/artifacts/`` (a file whose job the store does not know expires by
its modification time) and the copies workers stored in the database. The job's record and
envelope stay; its result download answers 410 ``result_expired`` from the moment the artifact
expired (:func:`check_not_expired`), whether or not the sweep already ran. A download already
streaming keeps reading the file it opened: deleting a file does not cut its open readers off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from analysis.runner.server.errors import ApiError
from analysis.runner.server.store import Store

__all__ = ["ArtifactSweeper", "check_not_expired", "sweep_tick"]

log = logging.getLogger("analysis.server")


def sweep_tick(ttl_s: float) -> float:
    """How often artifacts are swept: a tenth of their lifetime, between 1 s and 60 s."""
    return max(1.0, min(60.0, ttl_s / 10))


def check_not_expired(job: dict[str, Any], ttl_s: float | None, now: float | None = None) -> None:
    """Raise 410 ``result_expired`` when the artifact of the finished ``job`` is past its lifetime."""
    if not ttl_s or job["finished_at"] is None:
        return
    ended = float(job["finished_at"])
    if (now or time.time()) - ended <= ttl_s:
        return
    raise ApiError(
        410, "result_expired",
        f"The result artifact of job {job['id']} expired: artifacts are kept {ttl_s:g} s after their "
        "job ends (analysis serve --artifact-ttl); the job's record stays. Run the job again for a new one.",
    )  # fmt: skip


class ArtifactSweeper:
    """Deletes expired artifacts on disk and in the store.

    Parameters
    ----------
    store
        The store (job end times; the artifacts of jobs that workers ran).
    root
        The projects root.
    ttl_s
        How long after its job ended an artifact is kept.
    """

    def __init__(self, store: Store, root: Path, ttl_s: float) -> None:
        self.store = store
        self.root = root
        self.ttl_s = ttl_s

    async def run(self) -> None:
        """Sweep every :func:`sweep_tick` seconds until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # a store hiccup must not end the sweeping
                log.exception("sweeping expired artifacts failed")
            await asyncio.sleep(sweep_tick(self.ttl_s))

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete what expired by ``now``; the ids of the jobs whose artifact went."""
        cutoff = (now or time.time()) - self.ttl_s
        gone = self.store.delete_artifacts_before(cutoff)
        files = list(self.root.glob("*/analysis/artifacts/*.parquet"))
        ended = self.store.finished_at([path.stem for path in files]) if files else {}
        for path in files:
            try:
                when = ended.get(path.stem) or path.stat().st_mtime
                if when < cutoff:
                    path.unlink()
                    gone.append(path.stem)
            except FileNotFoundError:  # another server of the store swept it first
                continue
        return gone

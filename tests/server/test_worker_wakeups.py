"""A worker with a free slot takes a turn at once, even one queued while it was fetching.

procrastinate wakes a worker at each new turn's notice and the worker fetches until a fetch finds
nothing (README, "Running on several machines"). A turn committed while that last fetch was in
flight is invisible to it, and its notice arrived during it: the worker must still take that
turn at once, not at its next poll. The real worker, PostgreSQL and procrastinate run here; the
one thing arranged is the moment of the submit (during the worker's empty fetch), which on a
cluster happens by chance (2 bursts in 30 on this machine, each waiting out the 5 s poll).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from analysis.runner.server.fairqueue import defer_turn_async
from analysis.runner.server.queue import ensure_schema, open_app
from analysis.runner.server.store import Store
from analysis.runner.server.versions import save_version
from analysis.runner.server.worker import WorkerConfig, WorkerMetrics, procrastinate_worker

pytestmark = pytest.mark.slow

POLL_S = 60.0  # a turn whose notice was lost waits this long: unmistakable


@pytest.fixture
def pg_store(store_url: str, store: Store) -> Store:
    if not store_url.startswith("postgresql"):
        pytest.skip("workers take turns from a PostgreSQL store")
    return store


def _queue(store: Store, version: str) -> str:
    job_id = uuid.uuid4().hex
    row = {
        "id": job_id, "project_id": "alpha", "analysis_id": "one", "analysis_version": version,
        "parameters": "{}", "trigger": "api", "status": "queued", "attempt": 0, "created_at": time.time(),
    }  # fmt: skip
    assert store.insert_job(row) is not None
    return job_id


def _status(store: Store, job_id: str) -> str:
    job = store.job_by_id(job_id)
    assert job is not None
    return str(job["status"])


async def _wait(predicate: Any, timeout_s: float) -> bool:
    give_up = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > give_up:
            return False
        await asyncio.sleep(0.02)
    return True


async def _submit_during_an_empty_fetch(store: Store, store_url: str, root: Path, version: str) -> str:
    """Run a one-slot worker; submit a job while its fetch that finds nothing is in flight."""
    app = open_app(store_url)
    async with app.open_async():
        await ensure_schema(app)
        config = WorkerConfig(
            db_url=store_url, root=root / "worker", concurrency=1, poll_s=POLL_S, pool_size=0
        )
        config.root.mkdir(parents=True)
        worker = procrastinate_worker(
            app, store, config, "w", WorkerMetrics(1), pool=None, install_signal_handlers=False
        )  # fmt: skip
        notices: list[str] = []
        handle = worker._handle_notification

        async def count_notices(*, channel: str, notification: Any) -> None:
            notices.append(notification["type"])
            await handle(channel=channel, notification=notification)

        worker._handle_notification = count_notices
        fetch = app.job_manager.fetch_job
        armed, submitted = asyncio.Event(), []

        async def fetch_then_submit(*args: Any, **kwargs: Any) -> Any:
            job = await fetch(*args, **kwargs)
            if job is None and armed.is_set() and not submitted:
                # the server's submit, while this fetch is in flight: stored, then its turn deferred
                seen = len(notices)
                submitted.append(_queue(store, version))
                await defer_turn_async(app, 0)
                assert await _wait(lambda: len(notices) > seen, 30), "the turn's notice never came"
            return job

        app.job_manager.fetch_job = fetch_then_submit
        running = asyncio.create_task(worker.run())
        try:
            # the worker listens once a turn's notice reaches it (a turn with no job claims nothing)
            async def listening() -> bool:
                await defer_turn_async(app, 0)
                return await _wait(lambda: bool(notices), 1)

            give_up = time.monotonic() + 60
            while not await listening():
                assert time.monotonic() < give_up, "the worker never heard a turn's notice"
            armed.set()
            await defer_turn_async(app, 0)  # wakes the worker: it takes this turn, then fetches again
            assert await _wait(lambda: bool(submitted), 30), "the worker never fetched again"
            # the job starts at once on the free slot; a lost notice waits for the 60 s poll
            await _wait(lambda: _status(store, submitted[0]) != "queued", 45)
            await _wait(lambda: _status(store, submitted[0]) not in ("queued", "running"), 60)
        finally:
            worker.stop()
            await running
    return submitted[0]


def test_a_turn_queued_while_a_free_worker_fetches_starts_at_once(
    pg_store: Store, store_url: str, tmp_path: Path
) -> None:
    version, _ = save_version(
        pg_store, tmp_path / "server", "alpha", "one", source="def run(ctx, parameters):\n    return 1\n",
        kind="py", retries=0,
    )  # fmt: skip
    job_id = asyncio.run(_submit_during_an_empty_fetch(pg_store, store_url, tmp_path, version["version"]))
    job = pg_store.job_by_id(job_id)
    assert job is not None
    assert job["started_at"] is not None, f"the job was still {job['status']} after 45 s (the poll is 60 s)"
    # the worker's one slot was free: the job starts at once, not at the next poll
    assert job["started_at"] - job["created_at"] < 30, job
    assert job["status"] == "succeeded" and job["worker"] == "w", job
